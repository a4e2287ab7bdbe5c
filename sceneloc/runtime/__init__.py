"""What every command shares: input errors (errors.py), atomic writes and output checks (atomic.py), device and
precision (device.py), progress bars (progress.py), peak memory (memory.py) and `--set key=value` overrides
(config_overrides.py)."""
