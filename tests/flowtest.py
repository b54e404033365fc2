"""Running dataflows in tests: Bytewax's testing source and sink, one or two workers."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

from dataflows.availability import build_availability_flow
from dataflows.config import Config, load_config
from dataflows.fixtures import read_fixtures
from operators.records import Output, RawRecord

__all__ = ["FIXTURES", "last_per_key", "load_records", "run_flow", "sample_config"]

FIXTURES = Path(__file__).parent / "fixtures"


def sample_config(**overrides: Any) -> Config:
    return load_config(None, environ={}, overrides=overrides)


def load_records(config: Config, *paths: Path) -> list[RawRecord]:
    return list(read_fixtures(list(paths), config.topics.input_schemas))


def run_flow(
    records: Iterable[RawRecord],
    config: Config,
    *,
    workers: int = 1,
    build: Any = build_availability_flow,
    **kwargs: Any,
) -> list[Output]:
    """Run a flow over `records`; returns what reached the sink, in order."""
    out: list[Output] = []
    kwargs.setdefault("mode", "replay")
    flow = build(config, TestingSource(list(records)), TestingSink(out), **kwargs)
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return out


def last_per_key(outputs: Iterable[Output], topic_prefix: str = "availability.") -> dict[tuple[str, str | None], int]:
    """(topic, key) -> available of the highest version, as every consumer applies them."""
    best: dict[tuple[str, str | None], tuple[int, int]] = {}
    for o in outputs:
        if not o.topic.startswith(topic_prefix):
            continue
        k = (o.topic, o.key)
        v = o.value["version"]
        if k not in best or v > best[k][0]:
            best[k] = (v, o.value["available"])
    return {k: avail for k, (_, avail) in best.items()}
