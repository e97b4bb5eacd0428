"""Disk helpers shared by the benchmarks that read and write gigabytes."""

from __future__ import annotations

import os

GIB = 1 << 30


def drop_caches() -> bool:
    """Flush and drop the page cache (root only), so the next read comes from disk; True if done."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False
