"""Writers of results to disk: poses files (and per-image JSON details)."""

from sceneloc.export.poses import PoseEstimate, read_poses, write_pose_details_json, write_poses

__all__ = ["PoseEstimate", "read_poses", "write_pose_details_json", "write_poses"]
