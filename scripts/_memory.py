"""Resident-memory readings for the benchmark scripts (Linux ``/proc``; ``getrusage`` where ``clear_refs`` is refused).

``reset_peak()`` resets the process's high-water mark (``/proc/self/clear_refs`` = 5) so that ``peak_bytes()`` reads
the peak since then (``VmHWM``); where the reset is not allowed, ``peak_bytes`` falls back to the whole process's
``ru_maxrss``.
"""
from __future__ import annotations

import os
import resource


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_bytes(reset_ok: bool) -> int:
    if reset_ok:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
