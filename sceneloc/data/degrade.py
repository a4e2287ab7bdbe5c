"""Query-image degradations for robustness benchmarks: different lighting, motion blur, sensor noise and JPEG
compression, as pure functions on RGB uint8 images, and `degrade`, which applies one of them with the settings of
a DegradationConfig and a per-image seed.

Every function takes an (H, W, 3) uint8 RGB image and returns a new (H, W, 3) uint8 RGB image; the input is never
modified. The same arguments (seed included) always give the same output.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

DEGRADATIONS = ("illumination", "blur", "noise", "jpeg")
"""The degradation names `degrade` accepts."""

REFERENCE_WIDTH = 640
"""Image width at which DegradationConfig.blur_length is given; blur scales with the width."""


@dataclass(frozen=True)
class DegradationConfig:
    """Severities of the query degradations. The defaults are moderate: a person still recognises the scene, but
    the appearance differs clearly from the mapping images."""

    seed: int = 0
    """Base of every image's seed (each image's own seed also mixes in its name and the degradation)."""
    illumination_dark: tuple[float, float] = (0.5, 1.25)
    """(gain, gamma) of a darkened image: out = gain * in ** gamma on intensities in [0, 1]."""
    illumination_bright: tuple[float, float] = (1.6, 0.8)
    """(gain, gamma) of a brightened image; the seed makes each image dark or bright with equal chance."""
    illumination_gradient: float = 0.4
    """Strength of the smooth lighting gradient: the gain is multiplied by 1 - g .. 1 + g across the image, along
    a direction drawn from the seed."""
    blur_length: float = 9.0
    """Motion blur: length in pixels of the straight camera path during the exposure, for a 640 px wide image
    (scaled in proportion to the width); its direction is drawn from the seed."""
    noise_sigma: float = 8.0
    """Sensor noise: standard deviation in grey levels at mid-grey (128)."""
    noise_shot_share: float = 0.5
    """Part of the noise variance at mid-grey that is shot noise (Poisson, grows with the intensity); the rest is
    signal-independent Gaussian read noise."""
    jpeg_quality: int = 20
    """JPEG quality (OpenCV's 0-100 scale) of the compressed copy."""

    def __post_init__(self):
        for name in ("illumination_dark", "illumination_bright"):
            gain, gamma = getattr(self, name)
            if gain <= 0 or gamma <= 0:
                raise ValueError(f"{name} = {(gain, gamma)}: gain and gamma must be > 0")
        if not 0 <= self.illumination_gradient < 1:
            raise ValueError(f"illumination_gradient must be in [0, 1), got {self.illumination_gradient}")
        if self.blur_length < 1:
            raise ValueError(f"blur_length must be >= 1 pixel, got {self.blur_length}")
        if self.noise_sigma < 0 or not 0 <= self.noise_shot_share <= 1:
            raise ValueError(f"noise_sigma must be >= 0 and noise_shot_share in [0, 1], got {self.noise_sigma}, "
                             f"{self.noise_shot_share}")
        if not 0 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in [0, 100], got {self.jpeg_quality}")


def _check_rgb(rgb: np.ndarray) -> None:
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}")


def change_illumination(rgb: np.ndarray, gain: float, gamma: float, gradient: float, seed: int) -> np.ndarray:
    """Different lighting: out = 255 * gain * (1 + gradient * ramp) * (in / 255) ** gamma, clipped, where ramp
    goes linearly from -1 to 1 across the image along a direction drawn from `seed` (the mean gain stays `gain`)."""
    _check_rgb(rgb)
    height, width = rgb.shape[:2]
    angle = np.random.default_rng(seed).uniform(0.0, 2.0 * np.pi)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    along = (x - (width - 1) / 2) * np.cos(angle) + (y - (height - 1) / 2) * np.sin(angle)
    ramp = along / max(np.abs(along).max(), 1e-6)
    lut = (np.arange(256, dtype=np.float32) / 255.0) ** gamma
    out = lut[rgb] * (gain * (1.0 + gradient * ramp))[..., None]
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def motion_blur_kernel(length: float, angle_deg: float) -> np.ndarray:
    """(k, k) float32 kernel summing to 1: a line of `length` pixels through the centre at `angle_deg` (0 =
    horizontal, counter-clockwise in the image), anti-aliased; k is the smallest odd size holding it."""
    if length < 1:
        raise ValueError(f"blur length must be >= 1 pixel, got {length}")
    size = int(np.ceil(length)) | 1
    half = (length - 1) / 2
    kernel = np.zeros((size, size), np.float32)
    centre = (size - 1) / 2
    # Horizontal line with fractional ends, then rotated about the kernel centre.
    columns = np.arange(size) - centre
    kernel[size // 2] = np.clip(half + 1 - np.abs(columns), 0, 1)
    rotation = cv2.getRotationMatrix2D((centre, centre), angle_deg, 1.0)
    kernel = cv2.warpAffine(kernel, rotation, (size, size), flags=cv2.INTER_LINEAR)
    return kernel / kernel.sum()


def motion_blur(rgb: np.ndarray, length: float, angle_deg: float) -> np.ndarray:
    """Linear motion blur: the image convolved (cv2.filter2D, reflected borders) with motion_blur_kernel."""
    _check_rgb(rgb)
    return cv2.filter2D(rgb, -1, motion_blur_kernel(length, angle_deg), borderType=cv2.BORDER_REFLECT_101)


def sensor_noise(rgb: np.ndarray, sigma: float, shot_share: float, seed: int) -> np.ndarray:
    """Per-pixel, per-channel noise whose variance at intensity I is sigma**2 * ((1 - shot_share) + shot_share *
    I / 128): Poisson shot noise (photon counts I / g with g chosen so) plus Gaussian read noise; rounded, clipped."""
    _check_rgb(rgb)
    rng = np.random.default_rng(seed)
    signal = rgb.astype(np.float64)
    shot_variance_at_mid = shot_share * sigma**2
    if shot_variance_at_mid > 0:
        grey_per_photon = shot_variance_at_mid / 128.0
        signal = rng.poisson(signal / grey_per_photon) * grey_per_photon
    read_sigma = np.sqrt((1.0 - shot_share) * sigma**2)
    noisy = signal + rng.normal(0.0, read_sigma, rgb.shape) if read_sigma > 0 else signal
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def jpeg_compress(rgb: np.ndarray, quality: int) -> np.ndarray:
    """The image after a round trip through JPEG at `quality` (cv2.imencode, default 4:2:0 chroma subsampling)."""
    _check_rgb(rgb)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"OpenCV could not encode a {rgb.shape} image as JPEG")
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def degrade(rgb: np.ndarray, kind: str, config: DegradationConfig, seed: int) -> np.ndarray:
    """Apply the degradation `kind` (one of DEGRADATIONS) with config's severity; `seed` draws the image's random
    choices (dark or bright lighting and the gradient direction, blur direction, noise)."""
    rng = np.random.default_rng(seed)
    if kind == "illumination":
        gain, gamma = config.illumination_dark if rng.random() < 0.5 else config.illumination_bright
        return change_illumination(rgb, gain, gamma, config.illumination_gradient, int(rng.integers(2**31)))
    if kind == "blur":
        length = max(1.0, config.blur_length * rgb.shape[1] / REFERENCE_WIDTH)
        return motion_blur(rgb, length, rng.uniform(0.0, 180.0))
    if kind == "noise":
        return sensor_noise(rgb, config.noise_sigma, config.noise_shot_share, int(rng.integers(2**31)))
    if kind == "jpeg":
        return jpeg_compress(rgb, config.jpeg_quality)
    raise ValueError(f"unknown degradation {kind!r}; available: {', '.join(DEGRADATIONS)}")
