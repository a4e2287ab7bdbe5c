"""Surface textures for synthetic rooms: real photos that ship inside scikit-image, cut into per-face collages.

Each planar face gets its own texture covering the whole face at a fixed physical resolution (texels per metre),
made of tiles of about one metre, each tile a random crop of a random photo with its own colour jitter, so no two
places in a room look alike. For weakly textured rooms a texture can be blended towards its mean colour
(lower_contrast) and a few full-contrast photo patches painted on (photo_patch)."""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np
import skimage.data

PHOTO_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "brick", "grass", "gravel",
               "camera", "text", "coins", "page")
"""scikit-image samples stored inside its wheel (no download). Left out: images that need the network (eagle,
lily, ...), mostly-black or low-contrast ones (hubble_deep_field, retina, moon), smooth ones (clock, cell) and
synthetic flat ones (colorwheel, logo)."""

MIN_CROP_GRADIENT = 4.0
"""Tiles whose mean absolute difference between neighbouring texels (grey levels) is below this are drawn again:
blank sky or paper makes places ambiguous. (Typical photo crops: 5 to 35.)"""
MAX_CROP_TRIES = 8


@lru_cache(maxsize=1)
def load_photos() -> tuple[np.ndarray, ...]:
    """The photos of PHOTO_NAMES: (h, w, 3) uint8 RGB or (h, w) uint8 greyscale."""
    return tuple(np.ascontiguousarray(getattr(skimage.data, name)()) for name in PHOTO_NAMES)


def _gradient(image: np.ndarray) -> float:
    """Mean absolute difference between neighbouring texels of a (h, w) or (h, w, 3) uint8 image, grey levels."""
    grey = image.astype(np.float32) if image.ndim == 2 else image.astype(np.float32).mean(2)
    return float(np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean())


def _tile(photo: np.ndarray, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A random crop of `photo` (random 90-degree turn and scale; never mirrored, so text stays readable) resized
    to (height, width, 3) uint8, with its colours jittered: greyscale photos become a random two-tone, colour
    ones get per-channel gains."""
    photo = np.rot90(photo, int(rng.integers(4)))
    ph, pw = photo.shape[:2]
    aspect = width / height
    for _ in range(MAX_CROP_TRIES):
        # Largest crop of the tile's aspect ratio that fits, shrunk by a random factor.
        ch = min(ph, pw / aspect) * rng.uniform(0.45, 1.0)
        cw = ch * aspect
        y0 = int(rng.uniform(0, ph - ch))
        x0 = int(rng.uniform(0, pw - cw))
        crop = np.ascontiguousarray(photo[y0:y0 + max(int(ch), 2), x0:x0 + max(int(cw), 2)])
        interp = cv2.INTER_AREA if crop.shape[1] > width else cv2.INTER_LINEAR
        crop = cv2.resize(crop, (width, height), interpolation=interp)
        if _gradient(crop) >= MIN_CROP_GRADIENT:
            break
    crop = crop.astype(np.float32) / 255.0
    if crop.ndim == 2:
        dark = rng.uniform(0.0, 0.35, 3).astype(np.float32)
        light = rng.uniform(0.6, 1.0, 3).astype(np.float32)
        rgb = dark + crop[..., None] * (light - dark)
    else:
        rgb = crop * rng.uniform(0.7, 1.3, 3).astype(np.float32) * np.float32(rng.uniform(0.8, 1.15))
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def face_texture(width_m: float, height_m: float, texels_per_metre: float, tile_size_range: tuple[float, float],
                 rng: np.random.Generator) -> np.ndarray:
    """Texture for a width_m x height_m face: (ceil(height_m * tpm), ceil(width_m * tpm), 3) uint8 RGB, a grid of
    tiles whose side is drawn from tile_size_range (metres) and rounded so that the tiles fill the face."""
    photos = load_photos()
    w_px = max(int(np.ceil(width_m * texels_per_metre)), 2)
    h_px = max(int(np.ceil(height_m * texels_per_metre)), 2)
    nx = max(int(round(width_m / rng.uniform(*tile_size_range))), 1)
    ny = max(int(round(height_m / rng.uniform(*tile_size_range))), 1)
    xs = np.linspace(0, w_px, nx + 1).round().astype(int)
    ys = np.linspace(0, h_px, ny + 1).round().astype(int)
    texture = np.empty((h_px, w_px, 3), np.uint8)
    for j in range(ny):
        for i in range(nx):
            photo = photos[int(rng.integers(len(photos)))]
            texture[ys[j]:ys[j + 1], xs[i]:xs[i + 1]] = _tile(photo, xs[i + 1] - xs[i], ys[j + 1] - ys[j], rng)
    return texture


def photo_patch(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A (height, width, 3) uint8 RGB crop of a random photo at full contrast (a poster, a rug)."""
    photos = load_photos()
    return _tile(photos[int(rng.integers(len(photos)))], width, height, rng)


def lower_contrast(texture: np.ndarray, contrast: float) -> np.ndarray:
    """texture (h, w, 3) uint8 blended towards its own mean colour: mean + contrast * (texel - mean), same shape
    and dtype; contrast 1 returns it unchanged, 0 a flat colour."""
    if contrast == 1.0:
        return texture
    mean = texture.reshape(-1, 3).mean(0)
    return np.clip(mean + contrast * (texture - mean) + 0.5, 0, 255).astype(np.uint8)
