"""`atpflow replay`: the real dataflows on recorded fixtures, with no broker.

Only the source and sink differ from live mode: the source reads fixture
lines (Avro-encoding each `value` so decode runs exactly as on Kafka), the
sink writes `DIR/<topic>.jsonl`, one `{"key": ..., "value": {...}}` a line,
for every output topic (empty or not). One worker, so output order is the
order of computation and a replay is byte-for-byte repeatable.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson
from bytewax.inputs import DynamicSource, StatelessSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import run_main

from dataflows.config import Config
from dataflows.fixtures import read_fixtures
from dataflows.gc_tuning import tune_gc
from operators import metrics
from operators.records import Output, RawRecord
from schemas import to_json

__all__ = ["FixtureSource", "JsonlSink", "ReplaySummary", "output_topics", "replay"]

BATCH = 2048


class _FixturePartition(StatelessSourcePartition[RawRecord]):
    def __init__(self, records: Iterator[RawRecord], progress: Callable[[int], None] | None) -> None:
        self.records = records
        self.progress = progress
        self.count = 0

    def next_batch(self) -> list[RawRecord]:
        batch = []
        for raw in self.records:
            batch.append(raw)
            if len(batch) == BATCH:
                break
        if not batch:
            raise StopIteration
        self.count += len(batch)
        if self.progress:
            self.progress(self.count)
        return batch


class FixtureSource(DynamicSource[RawRecord]):
    """Fixture lines as RawRecords, read lazily by worker 0."""

    def __init__(self, paths: list[Path], topic_schemas: dict[str, str],
                 progress: Callable[[int], None] | None = None) -> None:
        self.paths = paths
        self.topic_schemas = topic_schemas
        self.progress = progress

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _FixturePartition:
        records = read_fixtures(self.paths, self.topic_schemas) if worker_index == 0 else iter(())
        return _FixturePartition(records, self.progress)


class _JsonlPartition(StatelessSinkPartition[Any]):
    def __init__(self, files: dict[str, IO[bytes]], counts: Counter[str]) -> None:
        self.files = files
        self.counts = counts

    def write_batch(self, items: list[Output]) -> None:
        counts: Counter[str] = Counter()
        for item in items:
            fh = self.files.get(item.topic)
            if fh is None:
                msg = f"output topic {item.topic!r} is not one of {sorted(self.files)}"
                raise ValueError(msg)
            fh.write(orjson.dumps({"key": item.key, "value": to_json(item.schema, item.value)}))
            fh.write(b"\n")
            counts[item.topic] += 1
        self.counts.update(counts)
        for topic, n in counts.items():
            metrics.child(metrics.RECORDS_OUT, topic).inc(n)

    def close(self) -> None:
        for fh in self.files.values():
            fh.flush()


class JsonlSink(DynamicSink[Any]):
    """Writes every output topic to `DIR/<topic>.jsonl` (single worker)."""

    def __init__(self, out_dir: Path, topics: Iterable[str]) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.files = {t: open(out_dir / f"{t}.jsonl", "wb") for t in topics}  # noqa: SIM115
        self.counts: Counter[str] = Counter()

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _JsonlPartition:
        return _JsonlPartition(self.files, self.counts)

    def close(self) -> None:
        for fh in self.files.values():
            fh.close()


def output_topics(config: Config) -> list[str]:
    t = config.topics
    return [*(t.availability(c.id) for c in config.channels.channels), t.dead_letter, t.milestones]


def _totals() -> dict[str, Counter[str]]:
    """Current values of the accounting counters, by label."""
    out: dict[str, Counter[str]] = {}
    for name, counter in (
        ("in", metrics.RECORDS_IN), ("applied", metrics.RECORDS_APPLIED),
        ("duplicates", metrics.DUPLICATES), ("dead", metrics.DEAD_LETTERS),
    ):
        c: Counter[str] = Counter()
        for metric in counter.collect():
            for s in metric.samples:
                if s.name.endswith("_total"):
                    c[next(iter(s.labels.values()))] += int(s.value)
        out[name] = c
    return out


@dataclass
class ReplaySummary:
    """What a replay did; applied + duplicates + dead letters (but gaps) = records in."""

    records_in: Counter[str]
    applied: int
    duplicates: int
    dead_letters: Counter[str]
    records_out: Counter[str]
    seconds: float

    @property
    def total_in(self) -> int:
        return sum(self.records_in.values())

    @property
    def accounted(self) -> int:
        input_letters = sum(n for r, n in self.dead_letters.items() if r != "SEQUENCE_GAP")
        return self.applied + self.duplicates + input_letters

    def render(self) -> str:
        rate = self.total_in / self.seconds if self.seconds else 0.0
        lines = [
            f"records in     {self.total_in:>10,}  ("
            + ", ".join(f"{t}: {n:,}" for t, n in sorted(self.records_in.items())) + ")",
            f"applied        {self.applied:>10,}",
            f"duplicates     {self.duplicates:>10,}",
            f"dead letters   {sum(self.dead_letters.values()):>10,}  "
            + ", ".join(f"{r}: {n:,}" for r, n in sorted(self.dead_letters.items())),
            f"records out    {sum(self.records_out.values()):>10,}  "
            + ", ".join(f"{t}: {n:,}" for t, n in sorted(self.records_out.items())),
            f"accounted for  {self.accounted:>10,} of {self.total_in:,} records in"
            + ("" if self.accounted == self.total_in else "  <-- MISMATCH"),
            f"throughput     {rate:>10,.0f} records/s over {self.seconds:.2f}s",
        ]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "records_in": dict(self.records_in), "applied": self.applied,
            "duplicates": self.duplicates, "dead_letters": dict(self.dead_letters),
            "records_out": dict(self.records_out), "seconds": round(self.seconds, 3),
            "accounted": self.accounted,
        }


FlowBuilder = Callable[..., Any]


def replay(
    config: Config,
    fixtures: list[Path],
    out_dir: Path,
    *,
    flows: dict[str, FlowBuilder],
    progress: bool = False,
) -> ReplaySummary:
    """Run each named flow over the fixtures; outputs of all flows share `out_dir`."""
    sink = JsonlSink(out_dir, output_topics(config))
    before = _totals()
    started = time.monotonic()
    schemas = config.topics.input_schemas
    tune_gc()
    try:
        for name, build in flows.items():
            report = _progress_printer(name) if progress else None
            source = FixtureSource(fixtures, schemas, report)
            run_main(build(config, source, sink, mode="replay"))
    finally:
        sink.close()
    after = _totals()
    delta = {k: after[k] - before[k] for k in after}
    return ReplaySummary(
        records_in=delta["in"],
        applied=sum(delta["applied"].values()),
        duplicates=sum(delta["duplicates"].values()),
        dead_letters=delta["dead"],
        records_out=sink.counts,
        seconds=time.monotonic() - started,
    )


def _progress_printer(name: str) -> Callable[[int], None]:
    start = time.monotonic()
    last = [start]

    def report(count: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 2.0:
            last[0] = now
            rate = count / (now - start)
            print(f"  {name}: read {count:,} records ({rate:,.0f}/s)", file=sys.stderr, flush=True)

    return report
