"""How many CPUs this process may use: its CPU affinity and its cgroup's CPU quota, whichever is smaller.

A container limited to 2 CPUs on a 64-core host sees 64 in ``os.cpu_count()``; sizing worker
processes or onnxruntime's thread pools by that oversubscribes the quota and the kernel then
throttles every thread. The cgroup v2 file is ``cpu.max`` ("<quota> <period>" or "max <period>");
cgroup v1 has ``cpu.cfs_quota_us`` (-1 = none) and ``cpu.cfs_period_us``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota in CPUs (e.g. 1.5), or None when there is none."""
    v2 = _read(root / "cpu.max")
    if v2 is not None:
        quota, _, period = v2.partition(" ")
        if quota != "max" and period:
            try:
                return int(quota) / int(period)
            except (ValueError, ZeroDivisionError):
                return None
        return None
    quota_v1 = _read(root / "cpu" / "cpu.cfs_quota_us") or _read(root / "cpu.cfs_quota_us")
    period_v1 = _read(root / "cpu" / "cpu.cfs_period_us") or _read(root / "cpu.cfs_period_us")
    if quota_v1 is None or period_v1 is None:
        return None
    try:
        quota_us, period_us = int(quota_v1), int(period_v1)
    except ValueError:
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def available_cpus(
    affinity: Callable[[], int] = _affinity, limit: Callable[[], float | None] = cgroup_cpu_limit
) -> int:
    """Whole CPUs this process may use: affinity, capped by the cgroup quota rounded up; at least 1."""
    cpus = affinity()
    quota = limit()
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def resolve_workers(setting: str, cpus: Callable[[], int] = available_cpus) -> int:
    """``--workers``: a positive integer, or "auto" for the CPUs available."""
    return cpus() if setting == "auto" else int(setting)


def intra_op_threads(instances: int, workers: int, cpus: Callable[[], int] = available_cpus) -> int:
    """onnxruntime intra-op threads per instance when the config names none: the CPUs shared out
    among every instance of every worker, at least 1."""
    return max(1, cpus() // max(1, workers * instances))
