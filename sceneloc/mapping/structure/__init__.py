"""Structure-based maps (SceneSqueezer): local features triangulated with the known poses, co-visible frame clusters,
point selection by a QP, quantised descriptors."""
