"""Dense reconstruction: posed frames -> a coloured mesh by TSDF fusion (fusion.py)."""
