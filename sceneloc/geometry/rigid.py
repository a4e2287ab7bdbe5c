"""Rigid3: a rotation + translation acting on points, named by its frames (e.g. `cam_from_world`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

ORTHONORMAL_TOL = 1e-3


@dataclass(frozen=True)
class Rigid3:
    """x_b = rotation @ x_a + translation for a transform `b_from_a`. rotation: (3, 3), translation: (3,)."""

    rotation: np.ndarray
    translation: np.ndarray

    @staticmethod
    def identity() -> "Rigid3":
        return Rigid3(np.eye(3), np.zeros(3))

    @staticmethod
    def from_matrix(matrix: np.ndarray) -> "Rigid3":
        """From a (4, 4) or (3, 4) matrix. Raises ValueError on NaN/inf or a non-orthonormal rotation."""
        m = np.asarray(matrix, dtype=np.float64)
        if m.shape not in ((4, 4), (3, 4)):
            raise ValueError(f"expected a 4x4 or 3x4 matrix, got shape {m.shape}")
        if not np.all(np.isfinite(m)):
            raise ValueError("matrix contains NaN or inf")
        if m.shape == (4, 4) and not np.allclose(m[3], [0, 0, 0, 1], atol=1e-6):
            raise ValueError(f"last row is {m[3].tolist()}, not [0, 0, 0, 1]")
        r = m[:3, :3]
        err = np.abs(r @ r.T - np.eye(3)).max()
        if err > ORTHONORMAL_TOL or np.linalg.det(r) < 0:
            raise ValueError(f"rotation is not orthonormal (|R R^T - I| = {err:.2g}, det = {np.linalg.det(r):.3f})")
        # Re-orthonormalise so that small float noise from text files does not accumulate.
        u, _, vt = np.linalg.svd(r)
        return Rigid3(u @ vt, m[:3, 3].copy())

    @staticmethod
    def from_qvec_tvec(qvec_wxyz: np.ndarray, tvec: np.ndarray) -> "Rigid3":
        q = np.asarray(qvec_wxyz, dtype=np.float64)
        if not np.all(np.isfinite(q)) or not np.all(np.isfinite(tvec)):
            raise ValueError("quaternion or translation contains NaN or inf")
        norm = np.linalg.norm(q)
        if abs(norm - 1.0) > 1e-2:
            raise ValueError(f"quaternion norm is {norm:.4f}, not 1")
        return Rigid3(Rotation.from_quat(q[[1, 2, 3, 0]]).as_matrix(), np.asarray(tvec, dtype=np.float64))

    @property
    def qvec_wxyz(self) -> np.ndarray:
        """(4,) unit quaternion (w, x, y, z), w >= 0 (COLMAP order)."""
        q = Rotation.from_matrix(self.rotation).as_quat()[[3, 0, 1, 2]]
        return q if q[0] >= 0 else -q

    def matrix(self) -> np.ndarray:
        """(4, 4) homogeneous matrix."""
        m = np.eye(4)
        m[:3, :3] = self.rotation
        m[:3, 3] = self.translation
        return m

    def inverse(self) -> "Rigid3":
        rt = self.rotation.T
        return Rigid3(rt, -rt @ self.translation)

    def __mul__(self, other: "Rigid3") -> "Rigid3":
        """Composition: (c_from_b * b_from_a) = c_from_a."""
        return Rigid3(self.rotation @ other.rotation, self.rotation @ other.translation + self.translation)

    def apply(self, points: np.ndarray) -> np.ndarray:
        """points: (N, 3) -> (N, 3)."""
        return points @ self.rotation.T + self.translation

    @property
    def center(self) -> np.ndarray:
        """For a `cam_from_world` transform: the camera centre in world coordinates, (3,)."""
        return -self.rotation.T @ self.translation
