"""Pose solvers: RANSAC-PnP from 2D-3D correspondences (poselib or OpenCV backend)."""

from sceneloc.solve.ransac_pnp import PnPResult, SolverConfig, solve_pnp

__all__ = ["PnPResult", "SolverConfig", "solve_pnp"]
