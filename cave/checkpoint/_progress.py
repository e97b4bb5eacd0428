"""Progress reporting for long saves and restores: a tqdm bar (notebook flavour in JupyterLab)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ._protocol import ProgressCallback


class Progress:
    """Counts bytes; forwards them to a callback or a ``tqdm.auto`` bar, or to nothing."""

    def __init__(self, how: bool | ProgressCallback, total: int, desc: str) -> None:
        self.total = total
        self.done = 0
        self._bar: Any = None
        self._callback: Callable[[int, int], None] | None = None
        self._lock = threading.Lock()
        if callable(how):
            self._callback = how
        elif how and total:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, leave=False
            )

    def __call__(self, n: int) -> None:
        # Called from the hashing pool's threads: serialise, so counts and callbacks stay ordered.
        with self._lock:
            self.done += n
            if self._bar is not None:
                self._bar.update(n)
            if self._callback is not None:
                self._callback(self.done, self.total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
