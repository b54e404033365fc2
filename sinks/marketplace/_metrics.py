"""Late, failure-tolerant access to the prometheus metrics of `operators.metrics`.

The metric objects are owned by `operators.metrics` (one registry for the whole process). The
sinks look them up on first use, so importing a sink never registers anything, and a process
where that module is missing (a unit test, a tool) still runs, with metrics as no-ops.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

__all__ = ["metric"]

_log = logging.getLogger("atpflow.marketplace")
_module: Any = None
_loaded = False


class _NoopMetric:
    """Stands in for a Counter, Gauge or Histogram (and their labelled children)."""

    def labels(self, *_args: object, **_kwargs: object) -> _NoopMetric:
        return self

    def inc(self, *_args: object, **_kwargs: object) -> None:
        return None

    def dec(self, *_args: object, **_kwargs: object) -> None:
        return None

    def set(self, *_args: object, **_kwargs: object) -> None:
        return None

    def observe(self, *_args: object, **_kwargs: object) -> None:
        return None


_NOOP = _NoopMetric()


def metric(name: str) -> Any:
    """The metric ``operators.metrics.<name>``, or a no-op stand-in when it does not exist."""
    global _module, _loaded
    if not _loaded:
        try:
            _module = importlib.import_module("operators.metrics")
        except ImportError:
            _log.debug("operators.metrics not importable; marketplace metrics are no-ops")
            _module = None
        _loaded = True
    found = getattr(_module, name, None) if _module is not None else None
    return found if found is not None else _NOOP
