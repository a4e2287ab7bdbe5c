"""Writers of results to disk: poses files (and per-image JSON details)."""

from sceneloc.export.poses import (PoseEstimate, atomic_output, read_poses, write_pose_details_json, write_poses,
                                   write_text_atomic)

__all__ = ["PoseEstimate", "atomic_output", "read_poses", "write_pose_details_json", "write_poses",
           "write_text_atomic"]
