"""The encode stage: image preparation for the encoder and the encoding itself, shared by mapping and localization.

prepare_image is the one resize of mapping and query images (mapping/augment.py adds the random augmentation on
top); cell_centres places the encoder's stride-8 cells in the image; encode_query / encode_batch turn query images
into per-cell features; vlad_descriptor aggregates an image's cell features into one vector for scene retrieval."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from sceneloc.runtime.device import autocast
from sceneloc.geometry import Camera
from sceneloc.nn.encoders import load_encoder
from sceneloc.nn.encoders.base import STRIDE

VLAD_POWER = 0.5
"""Exponent of vlad_descriptor's signed power-law normalisation (burstiness: repeated texture counts less)."""


def working_size(camera: Camera, image_height: int) -> tuple[int, int]:
    """(width, height) of a frame resized to `image_height` with its aspect ratio kept."""
    scale = image_height / camera.height
    return max(8, round(camera.width * scale)), image_height


def prepare_image(rgb: np.ndarray, camera: Camera, image_height: int) -> tuple[np.ndarray, Camera]:
    """Resize to the working height. rgb: (H, W, 3) uint8 -> (h, w, 3) uint8 and its camera. Area averaging when
    shrinking (no aliasing), bilinear when enlarging (area resampling is blocky there). Mapping and localization
    both resize through here, so an unaugmented mapping view and a query see the same pixels."""
    w, h = working_size(camera, image_height)
    if (w, h) == (camera.width, camera.height):
        return rgb, camera
    interpolation = cv2.INTER_AREA if h < camera.height else cv2.INTER_LINEAR
    return cv2.resize(rgb, (w, h), interpolation=interpolation), camera.scaled(w, h)


def cell_centres(height: int, width: int) -> np.ndarray:
    """Pixel centres of the stride-8 feature cells of an image: (ceil(h/8) * ceil(w/8), 2) float32, row-major."""
    rows, cols = -(-height // STRIDE), -(-width // STRIDE)
    v, u = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    centres = np.stack([u * STRIDE + (STRIDE - 1) / 2, v * STRIDE + (STRIDE - 1) / 2], -1)
    return centres.reshape(-1, 2).astype(np.float32)


@dataclass
class EncodedImage:
    """One query image after the encoder, in the working image (resized to the map's image height)."""

    features: torch.Tensor | np.ndarray
    """(N, C): for scene-coordinate maps a torch tensor on the encoding device, of the cells whose centre lies
    inside the image (bfloat16/float16 under autocast); for structure maps the local descriptors (numpy)."""
    pixels: np.ndarray
    """(N, 2) float64: cell-centre pixels, or the local features' keypoints."""
    camera: Camera
    """The working image's camera."""


def _inside_cells(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(cell-centre pixels of every cell (M, 2) float32, mask (M,) of those whose centre lies inside the image)."""
    pixels = cell_centres(height, width)
    return pixels, (pixels[:, 0] < width) & (pixels[:, 1] < height)


@torch.no_grad()
def feature_maps(encoder: torch.nn.Module, images: list[np.ndarray], device: torch.device,
                 precision: str = "auto") -> torch.Tensor:
    """Working images of one size, (h, w, 3) uint8 each -> the encoder's (B, C, ceil(h/8), ceil(w/8)) feature maps
    of the stacked batch, one forward pass under autocast(device, precision)."""
    batch = torch.from_numpy(np.ascontiguousarray(np.stack(images))).permute(0, 3, 1, 2).to(device)
    with autocast(device, precision):
        return encoder.to(device)(batch)


@torch.no_grad()
def encode_batch(encoder_name: str, images: list[np.ndarray], cameras: list[Camera], device: torch.device,
                 precision: str = "auto") -> list[EncodedImage]:
    """Working images (already prepared: prepare_image), all of one size, (h, w, 3) uint8 with their cameras ->
    one EncodedImage each, from one forward pass of the encoder over the stacked batch."""
    if not images:
        return []
    h, w = images[0].shape[:2]
    if any(image.shape[:2] != (h, w) for image in images):
        raise ValueError("encode_batch needs images of one size")
    fmaps = feature_maps(load_encoder(encoder_name), images, device, precision)
    pixels, inside = _inside_cells(h, w)
    keep = None if inside.all() else torch.from_numpy(inside).to(device)
    out = []
    for fmap, camera in zip(fmaps, cameras):
        features = fmap.reshape(fmap.shape[0], -1).T
        out.append(EncodedImage(features if keep is None else features[keep],
                                pixels[inside].astype(np.float64), camera))
    return out


@torch.no_grad()
def encode_query(encoder_name: str, image_height: int, rgb: np.ndarray, camera: Camera,
                 device: torch.device, precision: str = "auto") -> tuple[torch.Tensor, np.ndarray, Camera]:
    """rgb: (H, W, 3) uint8 of `camera` -> (features (N, C) on device, cell-centre pixels (N, 2) float64 in the
    working image (resized to image_height), working camera), keeping the cells whose centre lies inside the
    image. Runs under autocast(device, precision): the features may be bfloat16/float16."""
    image, work_cam = prepare_image(rgb, camera, image_height)
    encoded = encode_batch(encoder_name, [image], [work_cam], device, precision)[0]
    return encoded.features, encoded.pixels, encoded.camera


def vlad_descriptor(features: torch.Tensor, vocabulary: torch.Tensor, power: float = VLAD_POWER) -> torch.Tensor:
    """An image's global descriptor for scene retrieval: VLAD of its cell features (N, C) over `vocabulary` (K, C)
    (k-means centres of mapping features): each cell's residual to its nearest centre, summed per centre, each
    centre's sum L2-normalised (intra-normalisation), signed power-law, then the whole (K * C,) float32 vector
    L2-normalised. Any subset of an image's cells (the training buffer's samples) estimates the same vector."""
    x = features.float()
    vocabulary = vocabulary.to(x.device, torch.float32)
    nearest = (x @ vocabulary.T - 0.5 * (vocabulary * vocabulary).sum(1)).argmax(1)
    residuals = torch.zeros_like(vocabulary).index_add_(0, nearest, x - vocabulary[nearest])
    v = torch.nn.functional.normalize(residuals, dim=1).flatten()
    return torch.nn.functional.normalize(v.sign() * v.abs().pow(power), dim=0)
