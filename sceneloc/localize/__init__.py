"""The localize stage: one loop for every map kind (loop.py), the multi-scene predictor (multi_scene.py) and the
result record (estimate.py). Import the submodules; this package imports nothing, so that the torch-free
estimate.py stays cheap to load."""
