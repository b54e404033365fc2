"""Bytewax wrappers for the availability operators: the only engine-aware code.

Each step is a thin `@operator` around a pure unit from this package. Stateful
steps use `stateful_batch` so one Python call handles every queued item of a
key and reads the clock once per batch; their state is a small dataclass
snapshotted as is. Steps with two outputs return a frozen dataclass of
streams, like Bytewax's own `KafkaOpOut(oks, errs)`.

Bytewax builds a key's logic from the resume state alone (it does not pass
the key), so each state records its key from the first item it sees.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import FixedPartitionedSink
from typing_extensions import override

from operators import metrics
from operators.availability import Projector, SkuState
from operators.decode import Decoded, decode
from operators.models import ItemMaster
from operators.normalise import CodeState, ItemRouter, Movement, Normaliser, Unmap, code_key
from operators.records import DeadLetter, Output, RawRecord
from operators.reference import Channels, Locations
from operators.sequencing import Outcome, Sequencer, SequencerState

__all__ = [
    "Clock",
    "DecodeOut",
    "Mode",
    "SplitOut",
    "decode_step",
    "emit",
    "normalise_step",
    "project_step",
    "route_items_step",
    "sequence_step",
    "split_dead",
]

#: Returns processing time in epoch seconds; injected so tests can fake time.
Clock = Callable[[], float]
Mode = Literal["live", "replay"]
RETAIN = StatefulBatchLogic.RETAIN


def _wake(deadline: float | None) -> datetime | None:
    return None if deadline is None else datetime.fromtimestamp(deadline, tz=timezone.utc)


@dataclass(frozen=True)
class SplitOut:
    """A step's results, and the dead letters it produced."""

    oks: Stream[Any]
    errs: Stream[DeadLetter]


DecodeOut = SplitOut


@operator
def emit(step_id: str, up: Stream[Output], sink: Any) -> None:
    """Write outputs; a partitioned sink gets them keyed by record key (order per key)."""
    if isinstance(sink, FixedPartitionedSink):
        op.output("partitioned", op.key_on("route", up, lambda o: o.key or ""), sink)
    else:
        op.output("output", up, sink)


@operator
def split_dead(step_id: str, up: Stream[Any]) -> SplitOut:
    """Separate dead letters from everything else."""
    b = op.branch("is_ok", up, lambda x: not isinstance(x, DeadLetter))
    return SplitOut(b.trues, b.falses)


def _values(step_id: str, up: Stream[tuple[str, Any]]) -> Stream[Any]:
    return op.map(step_id, up, lambda kv: kv[1])


@operator
def decode_step(step_id: str, up: Stream[RawRecord], schemas: dict[str, str]) -> SplitOut:
    """Avro-decode every record with its topic's schema; count what came in."""

    def batch(raws: list[RawRecord]) -> list[Decoded | DeadLetter]:
        counts = Counter(raw.topic for raw in raws)
        for topic, n in counts.items():
            metrics.RECORDS_IN.labels(topic).inc(n)
        return [decode(raw, schemas[raw.topic]) for raw in raws]

    return split_dead("split", op.flat_map_batch("decode", up, batch))


# -- sequencing -----------------------------------------------------------------------------


class _SequenceLogic(StatefulBatchLogic[Decoded, Any, SequencerState]):
    def __init__(self, seq: Sequencer, mode: Mode, clock: Clock) -> None:
        self.seq = seq
        self.mode = mode
        self.clock = clock
        self._buffered = seq.buffered
        self._gap_open = seq.state.gap_deadline is not None

    def _emit(self, out: Outcome) -> tuple[list[Any], bool]:
        source = self.seq.state.stream.split("|", 1)[0]
        if out.duplicates:
            metrics.DUPLICATES.labels(source).inc(out.duplicates)
        if out.gaps:
            metrics.GAP_SKIPS.labels(source).inc(out.gaps)
        buffered = self.seq.buffered
        if buffered != self._buffered:
            metrics.REORDER_BUFFERED.inc(buffered - self._buffered)
            self._buffered = buffered
        gap_open = self.seq.state.gap_deadline is not None
        if gap_open != self._gap_open:
            metrics.OPEN_GAPS.inc(1 if gap_open else -1)
            self._gap_open = gap_open
        return [*out.ordered, *out.dead], RETAIN

    @override
    def on_batch(self, values: list[Decoded]) -> tuple[Iterable[Any], bool]:
        out = Outcome()
        now = self.clock()
        for d in values:
            self.seq.on_record(d, now, out)
        return self._emit(out)

    @override
    def on_notify(self) -> tuple[Iterable[Any], bool]:
        out = Outcome()
        self.seq.on_time(self.clock(), out)
        return self._emit(out)

    @override
    def on_eof(self) -> tuple[Iterable[Any], bool]:
        out = Outcome()
        if self.mode == "replay":  # live state stays put for the next run to resume
            self.seq.skip(out)
        return self._emit(out)

    @override
    def notify_at(self) -> datetime | None:
        return _wake(self.seq.state.gap_deadline) if self.mode == "live" else None

    @override
    def snapshot(self) -> SequencerState:
        return self.seq.state


@operator
def sequence_step(
    step_id: str,
    up: Stream[Decoded],
    *,
    stream_key: Callable[[Any], str],
    gap_timeout: float,
    max_buffered: int,
    max_clock_skew: float,
    mode: Mode,
    clock: Clock,
) -> SplitOut:
    """Dedup and reorder per source stream; `oks` are records in sequence order."""
    keyed = op.key_on("key_stream", up, lambda d: stream_key(d.rec))

    def build(resume: SequencerState | None) -> _SequenceLogic:
        seq = Sequencer(
            resume or SequencerState(),
            gap_timeout=gap_timeout,
            max_buffered=max_buffered,
            max_clock_skew=max_clock_skew,
            stream_key=stream_key,
        )
        return _SequenceLogic(seq, mode, clock)

    return split_dead("split", _values("values", op.stateful_batch("sequence", keyed, build)))


# -- item master + normalise ----------------------------------------------------------------


class _RouterLogic(StatefulBatchLogic[ItemMaster, Any, ItemMaster]):
    def __init__(self, last: ItemMaster | None) -> None:
        self.router = ItemRouter(last)

    @override
    def on_batch(self, values: list[ItemMaster]) -> tuple[Iterable[Any], bool]:
        out = []
        for item in values:
            out += self.router.on_item(item)
        metrics.RECORDS_APPLIED.labels("items").inc(len(values))
        return out, RETAIN

    @override
    def snapshot(self) -> ItemMaster:
        assert self.router.last is not None
        return self.router.last


@operator
def route_items_step(step_id: str, up: Stream[Decoded]) -> Stream[tuple[str, ItemMaster | Unmap]]:
    """Item-master records (keyed by sku) to updates keyed by WMS item / ERP material code."""
    keyed = op.key_on("key_sku", op.map("rec", up, lambda d: d.rec), lambda im: im.sku)
    return _values("values", op.stateful_batch("route", keyed, _RouterLogic))


class _NormaliseLogic(StatefulBatchLogic[Any, Any, CodeState]):
    def __init__(self, state: CodeState, locations: Locations, timeout: float, mode: Mode, clock: Clock) -> None:
        self.norm = Normaliser(state, locations, timeout)
        self.mode = mode
        self.clock = clock
        self._parked = self.norm.parked_count

    def _emit(self, out: list[Any]) -> tuple[list[Any], bool]:
        parked = self.norm.parked_count
        if parked != self._parked:
            metrics.PARKED_RECORDS.inc(parked - self._parked)
            self._parked = parked
        return out, RETAIN

    @override
    def on_batch(self, values: list[Any]) -> tuple[Iterable[Any], bool]:
        now = self.clock()
        out: list[Any] = []
        for v in values:
            if isinstance(v, Decoded):
                out += self.norm.on_record(v, v.stream, now)
            else:
                out += self.norm.on_item(v)
        return self._emit(out)

    @override
    def on_notify(self) -> tuple[Iterable[Any], bool]:
        return self._emit(self.norm.expire(self.clock()))

    @override
    def on_eof(self) -> tuple[Iterable[Any], bool]:
        return self._emit(self.norm.expire(None) if self.mode == "replay" else [])

    @override
    def notify_at(self) -> datetime | None:
        return _wake(self.norm.next_deadline()) if self.mode == "live" else None

    @override
    def snapshot(self) -> CodeState:
        return self.norm.state


@operator
def normalise_step(
    step_id: str,
    ordered: Stream[Decoded],
    item_updates: Stream[tuple[str, ItemMaster | Unmap]],
    *,
    stream_key: Callable[[Any], str],
    locations: Locations,
    unknown_item_timeout: float,
    mode: Mode,
    clock: Clock,
) -> SplitOut:
    """Locations, item master, units: ordered records to movements (or park them)."""
    def tag(d: Decoded) -> tuple[str, Decoded]:
        d.stream = stream_key(d.rec)
        return code_key(d.rec), d

    records = op.map("tag", ordered, tag)
    merged = op.merge("merge", records, item_updates)

    def build(resume: CodeState | None) -> _NormaliseLogic:
        return _NormaliseLogic(resume or CodeState(), locations, unknown_item_timeout, mode, clock)

    return split_dead("split", _values("values", op.stateful_batch("normalise", merged, build)))


# -- ATP + channel projection ---------------------------------------------------------------


class _ProjectLogic(StatefulBatchLogic[Movement, Any, SkuState]):
    def __init__(
        self, state: SkuState, channels: Channels, topic_of: Callable[[str], str],
        version_clock: Callable[[], int] | None, resumed: bool,
    ) -> None:
        self.projector = Projector(state, channels, version_clock, resumed=resumed)
        self.topic_of = topic_of

    @override
    def on_batch(self, values: list[Movement]) -> tuple[Iterable[Any], bool]:
        out: list[Any] = []
        applied: Counter[str] = Counter()
        for m in values:
            result = self.projector.on_movement(m)
            if result.duplicate:
                metrics.DUPLICATES.labels(m.source).inc()
                continue
            if result.late is not None:
                out.append(result.late)
                continue
            applied[m.source] += 1
            for r in result.records:
                key = r["sku"] if r["location"] is None else f"{r['sku']}|{r['location']}"
                out.append(Output(self.topic_of(r["channel"]), key, "AvailabilityRecord", r,
                                  m.raw.timestamp, m.event_time))
            cell = self.projector.state.cells[m.warehouse]
            if m.kind == "STOCK_SNAPSHOT" and cell.drift is not None:
                metrics.ATP_DRIFT.observe(cell.drift)
        for source, n in applied.items():
            metrics.RECORDS_APPLIED.labels(source).inc(n)
        return out, RETAIN

    @override
    def snapshot(self) -> SkuState:
        return self.projector.state


@operator
def project_step(
    step_id: str,
    movements: Stream[Movement],
    *,
    channels: Channels,
    topic_of: Callable[[str], str],
    version_clock: Callable[[], int] | None,
) -> SplitOut:
    """Per sku: apply movements to ATP cells, emit changed channel availability."""
    keyed = op.key_on("key_sku", movements, lambda m: m.sku)

    def build(resume: SkuState | None) -> _ProjectLogic:
        return _ProjectLogic(resume or SkuState(), channels, topic_of, version_clock, resume is not None)

    return split_dead("split", _values("values", op.stateful_batch("project", keyed, build)))
