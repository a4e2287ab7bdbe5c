"""The query degradations (sceneloc.data.degrade) measured on a real photo and on flat test images: each changes the
image by the configured amount, deterministically per seed."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data

from sceneloc.data.degrade import (DEGRADATIONS, DegradationConfig, change_illumination, degrade, jpeg_compress,
                                   motion_blur, motion_blur_kernel, sensor_noise)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """(512, 512, 3) uint8: a real photo shipped with scikit-image."""
    return skimage.data.astronaut()


def _gradient_energy(rgb: np.ndarray, dx: int, dy: int) -> float:
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return float(np.mean(cv2.Sobel(grey, cv2.CV_32F, dx, dy) ** 2))


def test_motion_blur_smears_along_its_direction_only(photo):
    horizontal = motion_blur(photo, 9, 0.0)
    # Horizontal streaks remove most horizontal gradient energy (measured 0.25) and far less vertical (0.60).
    assert _gradient_energy(horizontal, 1, 0) < 0.35 * _gradient_energy(photo, 1, 0)
    assert _gradient_energy(horizontal, 0, 1) > 0.5 * _gradient_energy(photo, 0, 1)
    vertical = motion_blur(photo, 9, 90.0)
    assert _gradient_energy(vertical, 0, 1) < 0.35 * _gradient_energy(photo, 0, 1)
    assert _gradient_energy(vertical, 1, 0) > 0.5 * _gradient_energy(photo, 1, 0)
    assert abs(horizontal.mean() - photo.mean()) < 0.5  # a normalised kernel keeps the brightness


@pytest.mark.parametrize("length, angle", [(9, 0.0), (4.5, 0.0), (10, 90.0), (9, 37.0), (1, 20.0)])
def test_motion_blur_kernel_is_a_normalised_line_of_that_length(length, angle):
    kernel = motion_blur_kernel(length, angle)
    assert kernel.shape[0] == kernel.shape[1] and kernel.shape[0] % 2 == 1
    assert kernel.sum() == pytest.approx(1.0, abs=1e-5)
    rows, cols = np.nonzero(kernel > 1e-3)
    centre = (kernel.shape[0] - 1) / 2
    along = (cols - centre) * np.cos(np.radians(angle)) - (rows - centre) * np.sin(np.radians(angle))
    # Support spans the length along the line (within a pixel of anti-aliasing).
    assert abs((along.max() - along.min() + 1) - length) <= 1.5
    if angle == 0.0:
        assert set(rows) == {centre}


def test_jpeg_q20_is_close_but_lossy_and_deterministic(photo):
    compressed = jpeg_compress(photo, 20)
    assert compressed.shape == photo.shape and compressed.dtype == np.uint8
    psnr = cv2.PSNR(compressed, photo)
    assert 26.0 < psnr < 33.0  # measured 29.3 dB
    assert cv2.PSNR(jpeg_compress(photo, 90), photo) > psnr + 4  # quality matters (measured 36.7 dB)
    np.testing.assert_array_equal(jpeg_compress(photo, 20), compressed)


@pytest.mark.parametrize("intensity", [32, 128, 200])
def test_noise_std_follows_the_read_plus_shot_model(intensity):
    flat = np.full((200, 200, 3), intensity, np.uint8)
    noisy = sensor_noise(flat, 8.0, 0.5, seed=0)
    expected = 8.0 * np.sqrt(0.5 + 0.5 * intensity / 128)  # 8 grey levels at mid-grey, shot part grows
    assert noisy.astype(np.float64).std() == pytest.approx(expected, rel=0.05)
    assert noisy.astype(np.float64).mean() == pytest.approx(intensity, abs=0.2)


def test_noise_at_mid_grey_is_the_requested_sigma_and_deterministic(photo):
    flat = np.full((200, 200, 3), 128, np.uint8)
    for share in (0.0, 0.5, 1.0):
        assert sensor_noise(flat, 8.0, share, seed=1).std() == pytest.approx(8.0, rel=0.2)
    first = sensor_noise(photo, 8.0, 0.5, seed=3)
    np.testing.assert_array_equal(sensor_noise(photo, 8.0, 0.5, seed=3), first)
    assert np.abs(sensor_noise(photo, 8.0, 0.5, seed=4).astype(int) - first).mean() > 3
    np.testing.assert_array_equal(sensor_noise(photo, 0.0, 0.5, seed=3), photo)


def test_illumination_gain_gamma_and_gradient():
    flat = np.full((120, 160, 3), 100, np.uint8)
    np.testing.assert_array_equal(change_illumination(flat, 0.5, 2.0, 0.0, seed=0),
                                  round(255 * 0.5 * (100 / 255) ** 2))
    lit = change_illumination(flat, 1.0, 1.0, 0.4, seed=0).astype(np.float64)
    # The gradient spans gain * (1 -+ 0.4) corner to corner and averages to the gain.
    assert (lit.min(), lit.max()) == (60.0, 140.0)
    assert lit.mean() == pytest.approx(100.0, abs=0.5)
    other = change_illumination(flat, 1.0, 1.0, 0.4, seed=1)
    assert np.abs(other - lit).max() > 20  # another seed, another direction
    np.testing.assert_array_equal(change_illumination(flat, 1.0, 1.0, 0.4, seed=0), lit)


def test_illumination_changes_mean_brightness_by_the_gain(photo):
    darker = change_illumination(photo, 0.5, 1.0, 0.0, seed=0)
    assert darker.mean() / photo.mean() == pytest.approx(0.5, abs=0.01)
    with_gradient = change_illumination(photo, 0.5, 1.0, 0.4, seed=0)
    assert with_gradient.mean() / photo.mean() == pytest.approx(0.5, abs=0.05)


def test_degrade_default_severities_change_the_photo_deterministically(photo):
    config = DegradationConfig()
    for kind in DEGRADATIONS:
        out = degrade(photo, kind, config, seed=7)
        assert out.shape == photo.shape and out.dtype == np.uint8
        np.testing.assert_array_equal(degrade(photo, kind, config, seed=7), out)
        assert np.abs(out.astype(int) - photo).mean() > 3, kind
    # Seeds pick dark or bright lighting: each darkens to ~gain 0.5 or brightens (gain 1.6, clipped).
    ratios = {round(degrade(photo, "illumination", config, seed=s).mean() / photo.mean(), 1) for s in range(8)}
    assert min(ratios) <= 0.6 and max(ratios) >= 1.2
    assert not np.array_equal(degrade(photo, "blur", config, 1), degrade(photo, "blur", config, 2))


@pytest.mark.parametrize("width, streak", [(640, 16.0), (160, 4.0)])
def test_blur_length_is_given_at_640_px_and_scales_with_the_width(width, streak):
    """A point light becomes a streak 16 px long at 640 px width and 4 px at 160 px (blur_length = 16)."""
    dot = np.zeros((width * 3 // 4, width, 3), np.uint8)
    dot[width * 3 // 8, width // 2] = 255
    for seed in range(3):
        streaked = degrade(dot, "blur", DegradationConfig(blur_length=16.0), seed)[..., 0].astype(np.float64)
        pixels = np.argwhere(streaked > 0)
        weights = streaked[streaked > 0]
        # A uniform streak of length L has variance (L^2 - 1) / 12 along its direction.
        spread = np.linalg.eigvalsh(np.cov(pixels.T, aweights=weights)).max()
        assert np.sqrt(12 * spread + 1) == pytest.approx(streak, abs=1.0)


def test_bad_settings_are_rejected(photo):
    with pytest.raises(ValueError, match="jpeg_quality"):
        DegradationConfig(jpeg_quality=101)
    with pytest.raises(ValueError, match="illumination_dark"):
        DegradationConfig(illumination_dark=(0.0, 1.0))
    with pytest.raises(ValueError, match="unknown degradation 'fog'"):
        degrade(photo, "fog", DegradationConfig(), 0)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        jpeg_compress(photo.astype(np.float32), 20)
