"""Peak memory of the running process, measured the same way by the trainer and the benchmark."""

from __future__ import annotations

import resource
import sys


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB. On Linux: VmHWM of /proc/self/status, which starts
    afresh when a process starts (exec); ru_maxrss would not do for a child process, as it carries over the peak
    of the parent it was forked from. Elsewhere: ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024  # bytes on macOS, KiB on Linux
