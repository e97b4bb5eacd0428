"""Checkpoint save and restore of a 1 GiB DataFrame plus 100 small objects, against baselines.

All in one run, on one disk (a temporary directory; `--dir` to choose):

* ``dd`` writing 1 GiB with ``conv=fdatasync`` and reading it back: the disk's bandwidth.
  Target: Cave's full save and restore reach >= 0.5 of it.
* ``cloudpickle.dump`` of the whole namespace dict and ``dill.dump_session`` (namespace in
  ``__main__``), each followed by fsync, and their loads. Target: Cave faster; ratio reported.
* A second save with nothing changed. Target: <= 2% of the full save.
* Trust, but verify: the background re-hash of one tracked buffer that follows each save (run in
  the time between saves: the benchmark waits for it before timing the next step).
* The price of write tracking (see docs/checkpoints.md): rewriting a 1 GiB array in place right
  after it was checkpointed (its pages protected), against the same rewrite untracked.

Reads are measured cold: the page cache is dropped (``/proc/sys/vm/drop_caches``, needs root)
before every restore and every ``dd`` read. When that is not permitted the table says "warm".
Each figure is the median of ``--repeat`` runs.

Run: .venv/bin/python benchmarks/bench_checkpoint.py [--gib 1] [--repeat 3] [--dir PATH]
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _disk import GIB, drop_caches  # noqa: E402
from _namespaces import big_frame_namespace  # noqa: E402
from _table import write_table  # noqa: E402

from cave.checkpoint import SessionStore  # noqa: E402


def timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def fsynced_dump(path: Path, dump: Callable[[Any], None]) -> None:
    with open(path, "wb") as f:
        dump(f)
        f.flush()
        os.fsync(f.fileno())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()

    import cloudpickle
    import dill

    # Not module globals: dill.dump_session pickles this script's globals, and the tracker holds
    # ctypes function pointers, which cannot be pickled.
    from cave.checkpoint import _blobio, _fingerprint, _write_tracking

    work = Path(tempfile.mkdtemp(prefix="cave-bench-", dir=args.dir))
    secret = os.urandom(32)
    ns = big_frame_namespace(args.gib)
    nbytes = int(ns["big"].memory_usage(index=False).sum())
    size_gib = nbytes / GIB
    cold = drop_caches()
    load_before = os.getloadavg()[0]
    runs: dict[str, list[float]] = {}

    def record(key: str, seconds: float) -> None:
        runs.setdefault(key, []).append(seconds)

    try:
        ddfile = work / "dd.bin"
        count = max(1, nbytes // (16 << 20))
        dd_write = ["dd", "if=/dev/zero", f"of={ddfile}", "bs=16M", f"count={count}"]
        dd_write.append("conv=fdatasync")
        dd_read = ["dd", f"if={ddfile}", "of=/dev/null", "bs=16M"]

        def one_round() -> None:
            # dd: write with fdatasync, then a (cold) read
            record("dd write", timed(lambda: subprocess.run(dd_write, capture_output=True)))
            drop_caches()
            record("dd read", timed(lambda: subprocess.run(dd_read, capture_output=True)))
            ddfile.unlink()

            # Cave: full save into an empty store, nothing-changed save, cold restore
            root = work / "store"
            store = SessionStore(root, secret=secret)
            info: Any = None

            def save_full(store: SessionStore = store) -> None:
                nonlocal info
                info = store.save("full", ns, {"messages": []})

            record("cave save", timed(save_full))
            assert info is not None and info.written >= nbytes
            check = store.verifier.wait()  # idle time after the save: its background re-hash
            if check is not None and check.outcome == "match":
                record("verify", check.seconds)
                record("verify bytes", check.nbytes)
            again = timed(lambda: store.save("again", ns, {"messages": []}))
            record("cave save, nothing changed", again)
            store.verifier.wait()
            drop_caches()
            restored: dict[str, Any] = {}
            record("cave restore", timed(lambda: restored.update(store.load("full").namespace)))
            assert restored["big"].shape == ns["big"].shape
            restored.clear()
            shutil.rmtree(root)
            gc.collect()

            # cloudpickle: the whole namespace dict in one stream
            cp = work / "ns.cloudpickle"
            dump_cp = lambda f: cloudpickle.dump(ns, f, protocol=5)  # noqa: E731
            record("cloudpickle.dump", timed(lambda: fsynced_dump(cp, dump_cp)))
            drop_caches()
            with open(cp, "rb") as f:
                record("cloudpickle.load", timed(lambda f=f: cloudpickle.load(f)))
            cp.unlink()
            gc.collect()

            # dill.dump_session: the namespace as globals of __main__
            main_mod = sys.modules["__main__"]
            main_mod.__dict__.update(ns)
            dl = work / "session.dill"
            dump_session = getattr(dill, "dump_session", None) or dill.dump_module
            record("dill.dump_session", timed(lambda: fsynced_dump(dl, lambda f: dump_session(f))))
            for name in ns:
                del main_mod.__dict__[name]
            drop_caches()
            load_session = getattr(dill, "load_session", None) or dill.load_module
            with open(dl, "rb") as f:
                record("dill.load_session", timed(lambda f=f: load_session(f)))
            for name in ns:
                main_mod.__dict__.pop(name, None)
            dl.unlink()
            gc.collect()
        for _ in range(args.repeat):
            one_round()

        # Write tracking's price: an in-place rewrite of 1 GiB, untracked vs just checkpointed.
        import numpy as np

        arr = np.random.default_rng(1).random(nbytes // 8)
        rewrite = lambda: np.multiply(arr, 1.0, out=arr)  # noqa: E731
        for _ in range(args.repeat):
            record("rewrite untracked", timed(rewrite))
            _fingerprint.buffer_digest(memoryview(arr).cast("B"))  # what a save does: protect, hash
            record("rewrite tracked", timed(rewrite))
            arr = arr.copy()  # fresh, untracked memory for the next untracked run
            gc.collect()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in runs.items()}

    def rate(key: str) -> float:
        return size_gib / med[key]

    warm = "" if cold else " (warm)"

    def faster(base: str, ours: str) -> str:
        return f"Cave {med[base] / med[ours]:.2f}x faster"

    full = med["cave save"]
    rows = [
        ["dd write 1 GiB (conv=fdatasync)", med["dd write"], rate("dd write"), "baseline", ""],
        ["dd read 1 GiB" + warm, med["dd read"], rate("dd read"), "baseline", ""],
        ["Cave full save", full, rate("cave save"),
         f"{rate('cave save') / rate('dd write'):.2f} of dd write", ">= 0.5"],
        ["Cave restore" + warm, med["cave restore"], rate("cave restore"),
         f"{rate('cave restore') / rate('dd read'):.2f} of dd read", ">= 0.5"],
        ["cloudpickle.dump, whole namespace, + fsync", med["cloudpickle.dump"],
         rate("cloudpickle.dump"), faster("cloudpickle.dump", "cave save"), "> 1"],
        ["cloudpickle.load" + warm, med["cloudpickle.load"], rate("cloudpickle.load"),
         faster("cloudpickle.load", "cave restore"), "> 1"],
        ["dill.dump_session + fsync", med["dill.dump_session"], rate("dill.dump_session"),
         faster("dill.dump_session", "cave save"), "> 1"],
        ["dill.load_session" + warm, med["dill.load_session"], rate("dill.load_session"),
         faster("dill.load_session", "cave restore"), "> 1"],
        ["Cave save, nothing changed", med["cave save, nothing changed"], None,
         f"{100 * med['cave save, nothing changed'] / full:.1f}% of full save", "<= 2%"],
        ["background re-hash of one tracked buffer after a save"
         f" ({med.get('verify bytes', 0) / GIB:.2f} GiB)", med.get("verify", float("nan")),
         None, f"{100 * med.get('verify', float('nan')) / full:.1f}% of full save, off the save",
         "report"],
        ["in-place rewrite of 1 GiB, untracked", med["rewrite untracked"], None, "baseline", ""],
        ["same rewrite just after a checkpoint (pages protected)", med["rewrite tracked"], None,
         f"{med['rewrite tracked'] / med['rewrite untracked']:.2f}x the untracked rewrite",
         "report"],
    ]  # fmt: skip
    notes = (
        f"Namespace: one {size_gib:.2f} GiB float64 DataFrame (16 columns) + 100 small objects. "
        f"Median of {args.repeat} runs. Page cache dropped before every read: "
        f"{'yes' if cold else 'no (not permitted), reads are warm'}. Kernel write tracking: "
        f"{'on' if _write_tracking.tracker() else 'unavailable'}. Cave's save includes a digest "
        f"of every byte (blob format {_blobio.write_version()}: "
        f"{_blobio.HASHES[_blobio.write_version()]}), HMAC signing and fsync of blobs and "
        "manifest; its restore verifies all of that before unpickling. 2 cores shared with "
        "other work: load average "
        f"{load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end."
    )
    write_table("checkpoint", ["case", "seconds", "GiB/s", "ratio", "target"], rows, notes)


if __name__ == "__main__":
    main()
