"""Memory of processes: this one's peak (the trainer and the benchmark) and another's resident set now (the
service's load test watches its server)."""

from __future__ import annotations

import resource
import sys


def _status_mb(pid: int | str, field: str) -> float | None:
    """A memory field of /proc/<pid>/status ("VmHWM", "VmRSS") in MB; None off Linux or for a gone process."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mb(pid: int) -> float | None:
    """Resident memory of process `pid` now, in MB (VmRSS); None where /proc is not there or the process is gone."""
    return _status_mb(pid, "VmRSS")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB. On Linux: VmHWM of /proc/self/status, which starts
    afresh when a process starts (exec); ru_maxrss would not do for a child process, as it carries over the peak
    of the parent it was forked from. Elsewhere: ru_maxrss."""
    peak = _status_mb("self", "VmHWM")
    if peak is not None:
        return peak
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024  # bytes on macOS, KiB on Linux
