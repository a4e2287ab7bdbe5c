"""Signed-distance shapes with local geometry codes (LGCL, thesis chapter 2): the template graph and its
convolutions (graph), the models and their files (model), the training samples (shape), fitting (fit), marching
cubes (extract), the metrics and renders (evaluate), the benchmark (bench) and the `sceneloc sdf` commands (cli)."""
