"""Wall time and peak memory of a piece of work, counting child processes (Ray workers).

Peak memory is sampled every 0.2 s as the sum of the resident set sizes of this process and all
its descendants (read from /proc), so it includes Flower's simulation workers.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(c) for c in handle.read().split()]
    except OSError:
        return []


def tree_rss_bytes(pid: int | None = None) -> int:
    """RSS of ``pid`` (default: this process) and all its descendants."""
    pid = pid or os.getpid()
    total, stack, page = 0, [pid], os.sysconf("SC_PAGE_SIZE")
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/statm") as handle:
                total += int(handle.read().split()[1]) * page
        except OSError:
            continue
        stack.extend(_children(p))
    return total


@dataclass
class Measurement:
    seconds: float = 0.0
    peak_rss_gib: float = 0.0


@contextmanager
def measure() -> Iterator[Measurement]:
    """``with measure() as m: ...``; afterwards ``m.seconds`` and ``m.peak_rss_gib``."""
    result = Measurement()
    stop = threading.Event()
    peak = [tree_rss_bytes()]

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], tree_rss_bytes())
            stop.wait(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    try:
        yield result
    finally:
        result.seconds = time.perf_counter() - start
        stop.set()
        thread.join()
        result.peak_rss_gib = max(peak[0], tree_rss_bytes()) / 2**30
