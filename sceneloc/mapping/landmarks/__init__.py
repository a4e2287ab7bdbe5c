"""Landmark maps (SLD*): landmark selection from triangulated points (select.py), heatmap targets from their
visibility (targets.py), the view buffer and head training (build.py)."""
