"""What the landmark head is trained to output: which landmarks each mapping view sees and where, and the heatmaps
drawn from that.

Visibility of landmark l in a mapping frame: VISIBLE when it projects into the image in front of the camera and
either the frame is in its track (SIFT saw it there) or the frame's depth agrees with its distance somewhere in the
3x3 pixels around its projection (landmarks sit on depth edges, where one rounded pixel often shows the background);
HIDDEN when it projects outside the image, behind the camera or behind a nearer surface; UNKNOWN when it projects
into a frame without depth (or onto a depth hole) whose track does not hold it: it may be occluded or just missed by
SIFT, so its heatmap gets no loss in that view."""

from __future__ import annotations

import numpy as np
import torch

from sceneloc.geometry import Camera, Rigid3
from sceneloc.nn.heads.landmark import pixel_to_cell

VISIBLE, HIDDEN, UNKNOWN = 1, 0, -1


def project(landmarks: np.ndarray, camera: Camera, cam_from_world: Rigid3) -> tuple[np.ndarray, np.ndarray]:
    """(pixels (L, 2) float64 in `camera`'s image, depth (L,) float64 metres along the optical axis)."""
    cam = landmarks @ cam_from_world.rotation.T + cam_from_world.translation
    z = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = (cam[:, :2] / z[:, None]) @ camera.K[:2, :2].T + camera.K[:2, 2]
    return uv, z


def visibility(landmarks: np.ndarray, camera: Camera, cam_from_world: Rigid3, depth: np.ndarray | None,
               in_track: np.ndarray, depth_tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """(pixels (L, 2) float64 of the landmarks in the frame's image, state (L,) int8 VISIBLE / HIDDEN / UNKNOWN:
    the module docstring). landmarks: (L, 3) world metres; depth: (H, W) metres (0 invalid) or None; in_track: (L,)
    bool, the frame observed the landmark's point; depth_tolerance: relative depth difference still visible."""
    uv, z = project(landmarks, camera, cam_from_world)
    inside = (z > 1e-6) & np.all(np.isfinite(uv), 1)
    inside &= (uv[:, 0] > -0.5) & (uv[:, 0] < camera.width - 0.5) & (uv[:, 1] > -0.5) & (uv[:, 1] < camera.height - 0.5)
    state = np.full(len(landmarks), HIDDEN, np.int8)
    if depth is None:
        state[inside] = np.where(in_track[inside], VISIBLE, UNKNOWN)
        return uv, state
    cols = np.round(uv[inside, 0]).astype(int)[:, None] + np.array([-1, 0, 1] * 3)
    rows = np.round(uv[inside, 1]).astype(int)[:, None] + np.repeat([-1, 0, 1], 3)
    seen = depth[np.clip(rows, 0, camera.height - 1), np.clip(cols, 0, camera.width - 1)]  # (n, 9)
    valid = seen > 0
    agree = (valid & (np.abs(seen - z[inside, None]) <= depth_tolerance * z[inside, None])).any(1)
    state[inside] = np.where(in_track[inside] | agree, VISIBLE, np.where(valid.any(1), HIDDEN, UNKNOWN))
    return uv, state


def view_targets(uv: np.ndarray, state: np.ndarray, homography: np.ndarray, valid: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A frame's landmark states carried into an augmented view of it (mapping/augment.py: the same camera centre,
    so the same occlusions). uv, state: visibility()'s; homography (3, 3): source pixels -> view pixels; valid (h, w)
    bool: the view's pixels that came from the source image.
    Returns (visible landmark ids (V,) int64, their cell coordinates (V, 2) float32 (column, row) in the view,
    unknown landmark ids (U,) int64): a landmark visible in the frame that lands outside the view's valid pixels
    is hidden there."""
    h, w = valid.shape
    known = state != HIDDEN
    p = np.c_[uv[known], np.ones(known.sum())] @ homography.T
    view = p[:, :2] / p[:, 2:3]
    cols, rows = np.round(view[:, 0]).astype(int), np.round(view[:, 1]).astype(int)
    inside = (cols >= 0) & (cols < w) & (rows >= 0) & (rows < h)
    inside[inside] = valid[rows[inside], cols[inside]]
    ids = np.flatnonzero(known)
    visible = inside & (state[known] == VISIBLE)
    unknown = inside & (state[known] == UNKNOWN)
    cells = pixel_to_cell(torch.from_numpy(view[visible])).numpy().astype(np.float32)
    return ids[visible], cells, ids[unknown]


def render_heatmaps(ids: torch.Tensor, cells: torch.Tensor, num_landmarks: int, shape: tuple[int, int],
                    sigma_cells: float) -> torch.Tensor:
    """(L, h, w) float32 target heatmaps of one view: for each visible landmark ids[k] (V,) at cell coordinates
    cells[k] (V, 2) (column, row), exp(-d^2 / (2 sigma^2)) of the distance d in cells from its projection; zero
    elsewhere and for the other landmarks."""
    h, w = shape
    target = torch.zeros(num_landmarks, h, w)
    if len(ids):
        gy = torch.arange(h, dtype=torch.float32)[None, :, None]
        gx = torch.arange(w, dtype=torch.float32)[None, None, :]
        d2 = (gx - cells[:, 0, None, None]) ** 2 + (gy - cells[:, 1, None, None]) ** 2
        target[ids] = torch.exp(-d2 / (2 * sigma_cells ** 2))
    return target
