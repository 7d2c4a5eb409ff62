"""Thread pools shared by the lake and the ingest.

Each pool is created on first use, sized from the cores this process may run on, and created
again in a forked child (which inherits the pool object but none of its threads).
"""

from __future__ import annotations

import concurrent.futures as cf
import os

_POOLS: dict[str, tuple[int, cf.ThreadPoolExecutor]] = {}


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity where the OS has one, else all of them."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def pool(name: str, threads: int) -> cf.ThreadPoolExecutor:
    """This process's pool ``name``, made with ``threads`` threads on first use."""
    entry = _POOLS.get(name)
    if entry is None or entry[0] != os.getpid():
        entry = _POOLS[name] = (os.getpid(), cf.ThreadPoolExecutor(threads, thread_name_prefix=name))
    return entry[1]
