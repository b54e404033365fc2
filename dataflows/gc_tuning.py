"""Garbage-collector settings for processes that run a dataflow.

The flows keep millions of long-lived objects (per-stream and per-key state) and
allocate a few short-lived ones per record. With CPython's default thresholds the
collector keeps re-walking that state: profiled, full collections took 22 % of
replay and 35 % of a live run. Our state holds no reference cycles, so it is frozen
out of collections once built, and the oldest generation is collected rarely.

The youngest generation is collected every 1,000,000 allocations instead of 700: records
in flight between steps (an activation holds thousands, each a few tracked objects) were
walked again at each of the frequent small collections, ~10 % of a live run's CPU
(measured with `gc.callbacks`: 4.0-4.6 s of ~40 s for 200k records, 0.6 s with 100,000).
From 100,000 to 1,000,000 the live job gained another ~9 % (interleaved A/B, 300,000
movements, 3 rounds: 44,197 -> 48,329 records/s medians). Only cyclic garbage (exceptions
and their tracebacks, mostly) waits for a collection; everything else is freed when its
last reference goes, as before.
"""

from __future__ import annotations

import gc
import os

__all__ = ["tune_gc"]

#: (gen0, gen1, gen2) thresholds; ATPFLOW_GC_THRESHOLDS="700,10,10" restores CPython's.
DEFAULT_THRESHOLDS = (1_000_000, 10, 100_000)


def tune_gc() -> tuple[int, ...]:
    """Freeze what exists now (modules, config, the graph) and set the thresholds."""
    raw = os.environ.get("ATPFLOW_GC_THRESHOLDS", "")
    try:
        thresholds = tuple(int(x) for x in raw.split(",")) if raw else DEFAULT_THRESHOLDS
        if len(thresholds) != 3 or min(thresholds) < 1:
            raise ValueError
    except ValueError:
        msg = f"ATPFLOW_GC_THRESHOLDS must be three positive integers like 1000000,10,100000, not {raw!r}"
        raise SystemExit(msg) from None
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)
    return thresholds
