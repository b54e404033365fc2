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

import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
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
    "dead_letter_records",
    "decode_step",
    "emit",
    "emit_records",
    "normalise_step",
    "project_step",
    "route_items_step",
    "sequence_step",
    "split_dead",
    "wake_at",
]

#: Returns processing time in epoch seconds; injected so tests can fake time.
Clock = Callable[[], float]
Mode = Literal["live", "replay"]
RETAIN = StatefulBatchLogic.RETAIN


def wake_at(deadline: float | None) -> datetime | None:
    """An epoch-seconds deadline as the datetime `notify_at` returns (None: no timer)."""
    return None if deadline is None else datetime.fromtimestamp(deadline, tz=UTC)


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
def emit_records(step_id: str, up: Stream[Output], sinks: Sequence[tuple[str, Any]]) -> None:
    """Each output record's value, keyed by its record key, to every side sink.

    Side sinks (marketplace pushes, the Redis view) take `(key, record)` and route by
    key, so the records of one key reach one sink partition in the order computed.
    """
    if not sinks:
        return
    keyed = op.map("by_key", up, lambda o: (o.key or "", o.value))
    for name, sink in sinks:
        op.output(name, keyed, sink)


@operator
def dead_letter_records(step_id: str, up: Stream[DeadLetter], topic: str) -> Stream[Output]:
    """Dead letters as records for the dead-letter topic, counted by reason."""

    def to_output(dl: DeadLetter) -> Output:
        metrics.DEAD_LETTERS.labels(dl.reason).inc()
        return Output(topic, dl.key, "DeadLetter", dl.as_avro())

    return op.map("to_output", up, to_output)


@operator
def split_dead(step_id: str, up: Stream[Any]) -> SplitOut:
    """Separate dead letters from everything else."""
    b = op.branch("is_ok", up, lambda x: not isinstance(x, DeadLetter))
    return SplitOut(b.trues, b.falses)


def _values(step_id: str, up: Stream[tuple[str, Any]]) -> Stream[Any]:
    return op.map(step_id, up, lambda kv: kv[1])


@operator
def decode_step(
    step_id: str, up: Stream[RawRecord], schemas: dict[str, str], counted: frozenset[str] | None = None
) -> SplitOut:
    """Avro-decode every record with its topic's schema; count what came in.

    `counted` limits `atpflow_records_in_total` to some topics (a topic two dataflows read is
    counted by one of them); by default every topic counts.
    """

    def batch(raws: list[RawRecord]) -> list[Decoded | DeadLetter]:
        counts = Counter(raw.topic for raw in raws)
        for topic, n in counts.items():
            if counted is None or topic in counted:
                metrics.RECORDS_IN.labels(topic).inc(n)
        return [decode(raw, schemas[raw.topic]) for raw in raws]

    return split_dead("split", op.flat_map_batch("decode", up, batch))


# -- sharding -------------------------------------------------------------------------------

#: Stateful steps keep their per-key states in this many shards. One Python call then handles
#: a whole batch of a shard instead of one call per key (Bytewax's per-key overhead dominated
#: with many keys). Changing it breaks resuming from existing recovery state.
SHARDS = 64


def shard_of(key: str) -> str:
    """Stable across processes and runs (unlike hash())."""
    return str(zlib.crc32(key.encode()) % SHARDS)


class _Shard(StatefulBatchLogic[Any, Any, dict[str, Any]]):
    """Per-key states of one shard, with the earliest timer among them.

    Each shard holds one instance of its unit (Sequencer, Normaliser, Projector) and
    points it at a key's state before each call, rather than one instance per key:
    with a million keys the instances alone would cost ~300 MB.

    Subclasses say when a key next needs waking (`deadline`); `deadlines` only holds
    keys with a pending timer, so the next wake-up stays cheap however many keys the
    shard holds. Bytewax may wake a shard early or late: `on_notify` re-checks each
    key's own deadline.
    """

    def __init__(self, states: dict[str, Any] | None, mode: Mode, clock: Clock) -> None:
        self.states: dict[str, Any] = states if states is not None else {}
        self.mode = mode
        self.clock = clock
        self.deadlines: dict[str, float] = {}
        if mode == "live":
            if self.states:
                self.on_resume(clock())
            for key in self.states:
                self._track(key)

    def deadline(self, key: str) -> float | None:
        return None

    def on_resume(self, now: float) -> None:
        """Restored from a snapshot: restart open waits, which ran on the dead process's clock.

        The records after the snapshot are read again after a restart; a wait that expired
        while the process was down would otherwise skip them or dead-letter too early.
        """

    def _track(self, key: str) -> None:
        if self.mode != "live":
            return
        when = self.deadline(key)
        if when is None:
            self.deadlines.pop(key, None)
        else:
            self.deadlines[key] = when

    @override
    def notify_at(self) -> datetime | None:
        return wake_at(min(self.deadlines.values())) if self.deadlines else None

    @override
    def snapshot(self) -> dict[str, Any]:
        return self.states


# -- sequencing -----------------------------------------------------------------------------


class _SequenceShard(_Shard):
    def __init__(self, states: dict[str, SequencerState] | None,
                 make: Callable[[SequencerState], Sequencer], gap_timeout: float,
                 mode: Mode, clock: Clock) -> None:
        self.seq = make(SequencerState())
        self.gap_timeout = gap_timeout
        super().__init__(states, mode, clock)

    @override
    def on_resume(self, now: float) -> None:
        gaps = 0
        for st in self.states.values():
            if st.gap_deadline is not None:
                st.gap_deadline = max(st.gap_deadline, now + self.gap_timeout)
                gaps += 1
        # The gauges count what this process holds: restored buffers included.
        metrics.REORDER_BUFFERED.inc(sum(len(st.buffer or ()) for st in self.states.values()))
        metrics.OPEN_GAPS.inc(gaps)

    def _seq(self, key: str) -> Sequencer:
        state = self.states.get(key)
        if state is None:
            state = self.states[key] = SequencerState()
        self.seq.state = state
        return self.seq

    @override
    def deadline(self, key: str) -> float | None:
        return self.states[key].gap_deadline

    @override
    def on_batch(self, values: list[Decoded]) -> tuple[Iterable[Any], bool]:
        # Per record, with `_seq` and `_track` inlined: this loop runs once per input record.
        now = self.clock()
        out = Outcome()
        buffered = gaps_open = 0
        dup_sources: Counter[str] = Counter()
        seq, states, deadlines, live = self.seq, self.states, self.deadlines, self.mode == "live"
        for d in values:
            key = d.stream
            state = states.get(key)
            if state is None:
                state = states[key] = SequencerState()
            seq.state = state
            buf, had_gap = state.buffer, state.gap_deadline is not None
            before_buf = len(buf) if buf else 0
            dups = out.duplicates
            seq.on_record(d, now, out)
            if out.duplicates != dups:
                dup_sources[d.rec.source] += out.duplicates - dups
            buf, gap = state.buffer, state.gap_deadline
            if buf or before_buf:
                buffered += (len(buf) if buf else 0) - before_buf
            gaps_open += (gap is not None) - had_gap
            if live:
                if gap is None:
                    if deadlines:
                        deadlines.pop(key, None)
                else:
                    deadlines[key] = gap
        for source, n in dup_sources.items():
            metrics.DUPLICATES.labels(source).inc(n)
        return self._finish(out, buffered, gaps_open), RETAIN

    def _finish(self, out: Outcome, buffered: int, gaps_open: int) -> list[Any]:
        if buffered:
            metrics.REORDER_BUFFERED.inc(buffered)
        if gaps_open:
            metrics.OPEN_GAPS.inc(gaps_open)
        for dl in out.dead:
            if dl.gap is not None:
                metrics.GAP_SKIPS.labels(dl.gap["stream"].split("|", 1)[0]).inc()
        return [*out.ordered, *out.dead]

    def _skip(self, keys: list[str], now: float | None) -> list[Any]:
        out = Outcome()
        buffered = gaps_open = 0
        for key in keys:
            seq = self._seq(key)
            before_buf, before_gap = seq.buffered, seq.state.gap_deadline is not None
            if now is None:
                seq.skip(out)
            else:
                seq.on_time(now, out)
            buffered += seq.buffered - before_buf
            gaps_open += (seq.state.gap_deadline is not None) - before_gap
            self._track(key)
        return self._finish(out, buffered, gaps_open)

    @override
    def on_notify(self) -> tuple[Iterable[Any], bool]:
        now = self.clock()
        due = [k for k, t in self.deadlines.items() if t <= now]
        return self._skip(due, now), RETAIN

    @override
    def on_eof(self) -> tuple[Iterable[Any], bool]:
        if self.mode != "replay":  # live state stays put for the next run to resume
            return [], RETAIN
        return self._skip([k for k, st in self.states.items() if st.buffer], None), RETAIN


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

    def key(d: Decoded) -> str:
        d.stream = stream_key(d.rec)
        return shard_of(d.stream)

    keyed = op.key_on("key_stream", up, key)

    def make(state: SequencerState) -> Sequencer:
        return Sequencer(state, gap_timeout=gap_timeout, max_buffered=max_buffered,
                         max_clock_skew=max_clock_skew, stream_key=stream_key)

    def build(resume: dict[str, SequencerState] | None) -> _SequenceShard:
        return _SequenceShard(resume, make, gap_timeout, mode, clock)

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


class _NormaliseShard(_Shard):
    def __init__(self, states: dict[str, CodeState] | None, locations: Locations, timeout: float,
                 mode: Mode, clock: Clock) -> None:
        self.norm = Normaliser(CodeState(), locations, timeout)
        super().__init__(states, mode, clock)

    def _norm(self, key: str) -> Normaliser:
        state = self.states.get(key)
        if state is None:
            state = self.states[key] = CodeState()
        self.norm.state = state
        return self.norm

    @override
    def deadline(self, key: str) -> float | None:
        return self._norm(key).next_deadline()

    @override
    def on_resume(self, now: float) -> None:
        parked = 0
        for st in self.states.values():
            parked += sum(len(records) for records in st.parked.values())
            for stream, since in st.parked_since.items():
                st.parked_since[stream] = max(since, now)
        metrics.PARKED_RECORDS.inc(parked)

    @override
    def on_batch(self, values: list[tuple[str, Any]]) -> tuple[Iterable[Any], bool]:
        now = self.clock()
        out: list[Any] = []
        parked = 0
        for key, v in values:
            norm = self._norm(key)
            st = norm.state
            if isinstance(v, Decoded) and st.item is not None and not st.parked:
                # The common case: a record parks only behind an unknown item or parked records,
                # so nothing is parked after it either, and there is no wait to track.
                out += norm.on_record(v, v.stream, now)
                continue
            before = norm.parked_count
            if isinstance(v, Decoded):
                out += norm.on_record(v, v.stream, now)
            else:
                out += norm.on_item(v)
            parked += norm.parked_count - before
            self._track(key)
        if parked:
            metrics.PARKED_RECORDS.inc(parked)
        return out, RETAIN

    def _expire(self, keys: list[str], now: float | None) -> list[Any]:
        out: list[Any] = []
        parked = 0
        for key in keys:
            norm = self._norm(key)
            before = norm.parked_count
            out += norm.expire(now)
            parked += norm.parked_count - before
            self._track(key)
        if parked:
            metrics.PARKED_RECORDS.inc(parked)
        return out

    @override
    def on_notify(self) -> tuple[Iterable[Any], bool]:
        now = self.clock()
        return self._expire([k for k, t in self.deadlines.items() if t <= now], now), RETAIN

    @override
    def on_eof(self) -> tuple[Iterable[Any], bool]:
        if self.mode != "replay":
            return [], RETAIN
        return self._expire([k for k, st in self.states.items() if st.parked], None), RETAIN


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
    def tag(d: Decoded) -> tuple[str, tuple[str, Decoded]]:
        code = code_key(d.rec)
        return shard_of(code), (code, d)

    records = op.map("tag", ordered, tag)
    updates = op.map("shard_updates", item_updates, lambda kv: (shard_of(kv[0]), kv))
    merged = op.merge("merge", records, updates)

    def build(resume: dict[str, CodeState] | None) -> _NormaliseShard:
        return _NormaliseShard(resume, locations, unknown_item_timeout, mode, clock)

    return split_dead("split", _values("values", op.stateful_batch("normalise", merged, build)))


# -- ATP + channel projection ---------------------------------------------------------------


class _ProjectShard(_Shard):
    def __init__(
        self, states: dict[str, SkuState] | None, channels: Channels, topic_of: Callable[[str], str],
        version_clock: Callable[[], int] | None,
    ) -> None:
        #: skus restored from a snapshot not yet seen: their first results are emitted even if
        #: unchanged; `forced` holds the channel keys still owed, per sku
        self.resumed = set(states or ())
        self.forced: dict[str, set[Any]] = {}
        self.topics = {c.id: topic_of(c.id) for c in channels.channels}
        self.projector = Projector(SkuState(), channels, version_clock)
        super().__init__(states, "replay", time.time)  # no timers here

    def _projector(self, sku: str) -> Projector:
        p = self.projector
        state = self.states.get(sku)
        if state is None:
            state = self.states[sku] = SkuState()
        if sku in self.resumed:
            self.resumed.discard(sku)
            self.forced[sku] = set(state.emitted)
        p.state = state
        p.force = self.forced.get(sku)
        return p

    @override
    def on_batch(self, values: list[Movement]) -> tuple[Iterable[Any], bool]:
        out: list[Any] = []
        applied: Counter[str] = Counter()
        duplicates: Counter[str] = Counter()
        for m in values:
            projector = self._projector(m.sku)
            result = projector.on_movement(m)
            if projector.force is not None and not projector.force:
                del self.forced[m.sku]
            if result.duplicate:
                duplicates[m.source] += 1
                continue
            if result.late is not None:
                out.append(result.late)
                continue
            applied[m.source] += 1
            if result.records:
                sku, topics, ts = m.sku, self.topics, m.raw.timestamp
                for r in result.records:
                    loc = r["location"]
                    out.append(Output(topics[r["channel"]], sku if loc is None else f"{sku}|{loc}",
                                      "AvailabilityRecord", r, ts, m.event_time, m.source))
            if m.kind == "STOCK_SNAPSHOT":
                drift = projector.state.cells[m.warehouse].drift
                if drift is not None:
                    metrics.ATP_DRIFT.observe(drift)
        for source, n in applied.items():
            metrics.RECORDS_APPLIED.labels(source).inc(n)
        for source, n in duplicates.items():
            metrics.DUPLICATES.labels(source).inc(n)
        return out, RETAIN


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
    keyed = op.key_on("key_sku", movements, lambda m: shard_of(m.sku))

    def build(resume: dict[str, SkuState] | None) -> _ProjectShard:
        return _ProjectShard(resume, channels, topic_of, version_clock)

    return split_dead("split", _values("values", op.stateful_batch("project", keyed, build)))
