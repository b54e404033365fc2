"""Bytewax wrappers for the availability operators: the only engine-aware code.

Each step is a thin `@operator` around a pure unit from this package. Stateful
steps use `stateful_batch` so one Python call handles every queued item of a
key and reads the clock once per batch; their state is a small dataclass
snapshotted as is. Steps with two outputs return a frozen dataclass of
streams, like Bytewax's own `KafkaOpOut(oks, errs)`.

The availability flow moves *chunks* between its steps, not single records:
a chunk is the records of one input batch bound for one shard of the next
keyed step (`(shard, [records])`), a list of results (`[Output]`), or a
`Letters` list of dead letters. Bytewax's cost per item (routing, exchange,
a Python call per map or branch) is then paid per chunk, about 1/15th as
often at full batches; the units still see one record at a time.

Bytewax builds a key's logic from the resume state alone (it does not pass
the key), so each state records its key from the first item it sees.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
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
from operators.normalise import (
    CodeState,
    ItemRouter,
    Movement,
    Normaliser,
    code_key,
    stream_key,
)
from operators.records import DeadLetter, Output, RawRecord
from operators.reference import Channels, Locations
from operators.sequencing import Outcome, Sequencer, SequencerState

# Compiled twins of the order and project steps' common case, built by setup.py where a C
# compiler is (optional, like schemas/_avro.pyx); the Python code stays the reference.
try:
    from operators import _order, _project
except ImportError:
    _order = _project = None
try:  # the decode-and-sort step's common case (operators/_sort.pyx), built the same way
    from operators import _sort
except ImportError:
    _sort = None

__all__ = [
    "SHARDS",
    "Clock",
    "Letters",
    "Mode",
    "OrderShardState",
    "ProjectShard",
    "SortOut",
    "SplitOut",
    "chunk",
    "dead_letter_records",
    "decode_step",
    "emit",
    "emit_records",
    "order_logic",
    "order_step",
    "project_step",
    "route_items_step",
    "shard_of",
    "sort_batch",
    "sort_step",
    "split_dead",
    "wake_at",
]

#: Returns processing time in epoch seconds; injected so tests can fake time.
Clock = Callable[[], float]
Mode = Literal["live", "replay"]
RETAIN = StatefulBatchLogic.RETAIN
_tuple_new = tuple.__new__


def wake_at(deadline: float | None) -> datetime | None:
    """An epoch-seconds deadline as the datetime `notify_at` returns (None: no timer)."""
    return None if deadline is None else datetime.fromtimestamp(deadline, tz=UTC)


@dataclass(frozen=True)
class SplitOut:
    """A step's results, and the dead letters it produced."""

    oks: Stream[Any]
    errs: Stream[Any]


class Letters(list):  # type: ignore[type-arg]
    """A chunk of dead letters: its own type, so that one branch tells it from results."""


def _same(chunk: list[Any]) -> list[Any]:
    return chunk


@operator
def chunk(step_id: str, up: Stream[Any]) -> Stream[list[Any]]:
    """Each batch of `up` as one list (the shape `emit` and `dead_letter_records` take)."""
    return op.flat_map_batch("chunk", up, lambda batch: [batch] if batch else [])


@operator
def emit(step_id: str, up: Stream[list[Output]], sink: Any) -> None:
    """Write chunks of outputs; a partitioned sink gets them keyed by record key (order per key).

    A sink with `group(outputs) -> [(route key, outputs)]` (the Kafka sink) takes a chunk as
    one item per sink partition; any other sink gets the outputs one by one.
    """
    group = getattr(sink, "group", None)
    if group is not None:
        op.output("grouped", op.flat_map("group", up, group), sink)
        return
    flat = op.flat_map("flatten", up, _same)
    if isinstance(sink, FixedPartitionedSink):
        op.output("partitioned", op.key_on("route", flat, lambda o: o.key or ""), sink)
    else:
        op.output("output", flat, sink)


@operator
def emit_records(step_id: str, up: Stream[list[Output]], sinks: Sequence[tuple[str, Any]]) -> None:
    """Each output record's value, keyed by its record key, to every side sink.

    Side sinks (marketplace pushes, the Redis view) take `(key, record)` and route by
    key, so the records of one key reach one sink partition in the order computed.
    """
    if not sinks:
        return
    keyed = op.flat_map("by_key", up, lambda outs: [(o.key or "", o.value) for o in outs])
    for name, sink in sinks:
        op.output(name, keyed, sink)


@operator
def dead_letter_records(step_id: str, up: Stream[list[DeadLetter]], topic: str) -> Stream[list[Output]]:
    """Chunks of dead letters as records for the dead-letter topic, counted by reason."""

    def to_outputs(letters: list[DeadLetter]) -> list[Output]:
        for reason, n in Counter(dl.reason for dl in letters).items():
            metrics.child(metrics.DEAD_LETTERS, reason).inc(n)
        return [Output(topic, dl.key, "DeadLetter", dl.as_avro()) for dl in letters]

    return op.map("to_outputs", up, to_outputs)


@operator
def split_dead(step_id: str, up: Stream[Any]) -> SplitOut:
    """Separate dead letters from everything else."""
    b = op.branch("is_ok", up, lambda x: not isinstance(x, DeadLetter))
    return SplitOut(b.trues, b.falses)


def _split_letters(step_id: str, up: Stream[Any]) -> SplitOut:
    b = op.branch(step_id, up, lambda x: x.__class__ is not Letters)
    return SplitOut(b.trues, b.falses)


def _values(step_id: str, up: Stream[tuple[str, Any]]) -> Stream[Any]:
    return op.map(step_id, up, lambda kv: kv[1])


def _count_in(raws: list[RawRecord], counted: frozenset[str] | None) -> None:
    for topic, n in Counter(raw.topic for raw in raws).items():
        if counted is None or topic in counted:
            metrics.child(metrics.RECORDS_IN, topic).inc(n)


@operator
def decode_step(
    step_id: str, up: Stream[RawRecord], schemas: dict[str, str], counted: frozenset[str] | None = None
) -> SplitOut:
    """Avro-decode every record with its topic's schema; count what came in.

    `counted` limits `atpflow_records_in_total` to some topics (a topic two dataflows read is
    counted by one of them); by default every topic counts.
    """

    def batch(raws: list[RawRecord]) -> list[Decoded | DeadLetter]:
        _count_in(raws, counted)
        return [decode(raw, schemas[raw.topic]) for raw in raws]

    return split_dead("split", op.flat_map_batch("decode", up, batch))


# -- sharding -------------------------------------------------------------------------------

#: Stateful steps keep their per-key states in this many shards. One Python call then handles
#: a whole batch of a shard instead of one call per key (Bytewax's per-key overhead dominated
#: with many keys). Changing it breaks resuming from existing recovery state.
SHARDS = 64
_SHARD_NAMES = [str(i) for i in range(SHARDS)]


def shard_of(key: str) -> str:
    """Stable across processes and runs (unlike hash())."""
    return _SHARD_NAMES[zlib.crc32(key.encode()) % SHARDS]


def _group(pairs: Iterable[tuple[str, Any]]) -> dict[str, list[Any]]:
    groups: dict[str, list[Any]] = {}
    for shard, x in pairs:
        g = groups.get(shard)
        if g is None:
            groups[shard] = [x]
        else:
            g.append(x)
    return groups


# -- decode and sort ------------------------------------------------------------------------


@dataclass(frozen=True)
class SortOut:
    """Movement records by order shard, item-master records one by one, dead letters."""

    records: Stream[tuple[str, list[Decoded]]]
    items: Stream[Decoded]
    errs: Stream[Letters]


def sort_batch(
    raws: list[RawRecord], schemas: dict[str, str], items_topic: str, compiled: bool = True
) -> list[Any]:
    """Decode a batch and sort it: `(shard, [Decoded])` per order shard, then a `Letters`
    chunk of what did not decode, then each item-master record alone.

    Records of other topics are dropped (a source may read more than this flow needs). Every
    record of a stream names the same item code, so a stream's records stay in one chunk per
    batch, in order, and reach one shard of the order step.

    `compiled` (when operators/_sort.pyx is built) decodes and sorts the common case in C
    and hands every other record to `_sort_batch_python`, the reference; tests compare both.
    """
    if compiled and _sort is not None:
        return _sort.sort_batch(raws, schemas, items_topic, _SHARD_NAMES, Letters(), _sort_batch_python)
    return _sort_batch_python(raws, schemas, items_topic)


def _sort_batch_python(raws: list[RawRecord], schemas: dict[str, str], items_topic: str) -> list[Any]:
    keyed: list[tuple[str, Decoded]] = []
    dead = Letters()
    items: list[Any] = []
    for raw in raws:
        schema = schemas.get(raw.topic)
        if schema is None:
            continue
        d = decode(raw, schema)
        if d.__class__ is not Decoded:
            dead.append(d)
        elif raw.topic == items_topic:
            items.append(d)
        else:
            rec = d.rec  # type: ignore[union-attr]
            d.stream, d.code = stream_key(rec), code_key(rec)  # type: ignore[union-attr]
            keyed.append((shard_of(d.code), d))  # type: ignore[arg-type, union-attr]
    out: list[Any] = list(_group(keyed).items())
    if dead:
        out.append(dead)
    return out + items


@operator
def sort_step(step_id: str, up: Stream[RawRecord], schemas: dict[str, str], items_topic: str) -> SortOut:
    """`sort_batch` on each batch, counting what came in."""

    mine = frozenset(schemas)

    def sort(raws: list[RawRecord]) -> list[Any]:
        _count_in(raws, mine)
        return sort_batch(raws, schemas, items_topic)

    sorted_ = op.flat_map_batch("sort", up, sort)
    keyed = op.branch("is_keyed", sorted_, lambda x: x.__class__ is tuple)
    rest = op.branch("is_item", keyed.falses, lambda x: x.__class__ is Decoded)
    return SortOut(keyed.trues, rest.trues, rest.falses)


# -- item master ----------------------------------------------------------------------------


class _RouterLogic(StatefulBatchLogic[ItemMaster, Any, ItemMaster]):
    def __init__(self, last: ItemMaster | None) -> None:
        self.router = ItemRouter(last)

    @override
    def on_batch(self, values: list[ItemMaster]) -> tuple[Iterable[Any], bool]:
        out = []
        for item in values:
            out += self.router.on_item(item)
        metrics.child(metrics.RECORDS_APPLIED, "items").inc(len(values))
        return out, RETAIN

    @override
    def snapshot(self) -> ItemMaster:
        assert self.router.last is not None
        return self.router.last


@operator
def route_items_step(step_id: str, up: Stream[Decoded]) -> Stream[tuple[str, list[Any]]]:
    """Item-master records (keyed by sku) to `(code, update)` chunks for the order step's shards."""
    keyed = op.key_on("key_sku", op.map("rec", up, lambda d: d.rec), lambda im: im.sku)
    updates = _values("values", op.stateful_batch("route", keyed, _RouterLogic))
    return op.map("shard", updates, lambda u: (shard_of(u[0]), [u]))


# -- sequence + normalise -------------------------------------------------------------------


@dataclass(slots=True)
class OrderShardState:
    """One shard of the order step: its streams' sequencing and its item codes' look-ups."""

    #: stream key -> dedup and reorder state
    streams: dict[str, SequencerState] = field(default_factory=dict)
    #: item code -> item-master entry and parked streams
    codes: dict[str, CodeState] = field(default_factory=dict)


class _OrderShard(StatefulBatchLogic[list[Any], Any, OrderShardState]):
    """Dedup and reorder per stream, then normalise per item code, in one call per chunk.

    Fused because they need no re-keying: every record of a stream names the same item
    code, so a shard of item codes holds whole streams. Each record the sequencer releases
    goes straight to the normaliser. `gaps` and `parks` only hold streams and codes with a
    pending timer, so the next wake-up stays cheap however many the shard holds; Bytewax may
    wake the shard early or late, so `on_notify` re-checks each deadline.
    """

    def __init__(self, state: OrderShardState | None, seq: Sequencer, norm: Normaliser,
                 mode: Mode, clock: Clock) -> None:
        self.state = state if state is not None else OrderShardState()
        self.seq, self.norm = seq, norm
        self.mode, self.clock = mode, clock
        #: apply the common case compiled (operators/_order.pyx) when built; tests compare both
        self.compiled = _order is not None
        self.gaps: dict[str, float] = {}
        self.parks: dict[str, float] = {}
        if mode == "live" and state is not None:
            self._on_resume(clock())
            for stream, st in self.state.streams.items():
                if st.gap_deadline is not None:
                    self.gaps[stream] = st.gap_deadline
            for code in self.state.codes:
                self._track_code(code)

    def _on_resume(self, now: float) -> None:
        """Restored from a snapshot: restart open waits, which ran on the dead process's clock.

        The records after the snapshot are read again after a restart; a wait that expired
        while the process was down would otherwise skip them or dead-letter too early.
        """
        gaps = buffered = parked = 0
        for st in self.state.streams.values():
            if st.gap_deadline is not None:
                st.gap_deadline = max(st.gap_deadline, now + self.seq.gap_timeout)
                gaps += 1
            buffered += len(st.buffer or ())
        for cs in self.state.codes.values():
            parked += sum(len(records) for records in cs.parked.values())
            for stream, since in cs.parked_since.items():
                cs.parked_since[stream] = max(since, now)
        # The gauges count what this process holds: restored buffers included.
        metrics.REORDER_BUFFERED.inc(buffered)
        metrics.OPEN_GAPS.inc(gaps)
        metrics.PARKED_RECORDS.inc(parked)

    def _track_code(self, code: str) -> None:
        if self.mode != "live":
            return
        self.norm.state = self.state.codes[code]
        when = self.norm.next_deadline()
        if when is None:
            self.parks.pop(code, None)
        else:
            self.parks[code] = when

    def _code(self, code: str) -> Normaliser:
        codes = self.state.codes
        cs = codes.get(code)
        if cs is None:
            cs = codes[code] = CodeState()
        self.norm.state = cs
        return self.norm

    def _normalise(self, ordered: list[Decoded], now: float, results: list[Any]) -> int:
        """The normaliser's results for released records; returns the change in parked records."""
        parked = 0
        for d in ordered:
            norm = self._code(d.code)
            st = norm.state
            if st.item is not None and not st.parked:
                # The common case: a record parks only behind an unknown item or parked
                # records, so nothing is parked after it either, and there is no wait to track.
                results += norm.on_record(d, d.stream, now)
                continue
            before = norm.parked_count
            results += norm.on_record(d, d.stream, now)
            parked += norm.parked_count - before
            self._track_code(d.code)
        ordered.clear()
        return parked

    @override
    def on_batch(self, values: list[list[Any]]) -> tuple[Iterable[Any], bool]:
        # Per record, with the sequencer's bookkeeping inlined: this loop runs once per input record.
        now = self.clock()
        out = Outcome()
        results: list[Any] = []
        buffered = gaps_open = parked = 0
        dup_sources: Counter[str] = Counter()
        seq, streams, gaps, live = self.seq, self.state.streams, self.gaps, self.mode == "live"
        # The compiled twin applies the records of the common case itself (the fused branch of
        # the sequencer, then a Movement) and hands the others back, in order, to this loop.
        fast = _order.Batch(streams, self.state.codes, gaps if live else None, self.norm.locations,
                            now * 1000 + seq.max_clock_skew * 1000, results) if self.compiled else None
        for chunk_ in values:
            for d in chunk_ if fast is None else fast.rest(chunk_):
                if d.__class__ is not Decoded:  # an item-master update for a code
                    code, update = d
                    norm = self._code(code)
                    before = norm.parked_count
                    results += norm.on_item(update)
                    parked += norm.parked_count - before
                    self._track_code(code)
                    continue
                key = d.stream
                state = streams.get(key)
                if state is None:
                    state = streams[key] = SequencerState()
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
                        if gaps:
                            gaps.pop(key, None)
                    else:
                        gaps[key] = gap
                if out.ordered:
                    parked += self._normalise(out.ordered, now, results)
        for source, n in dup_sources.items():
            metrics.child(metrics.DUPLICATES, source).inc(n)
        return self._finish(out, results, buffered, gaps_open, parked), RETAIN

    def _finish(self, out: Outcome, results: list[Any], buffered: int, gaps_open: int,
                parked: int) -> list[Any]:
        """Results as movement chunks per shard of their sku, and one chunk of dead letters."""
        if buffered:
            metrics.REORDER_BUFFERED.inc(buffered)
        if gaps_open:
            metrics.OPEN_GAPS.inc(gaps_open)
        if parked:
            metrics.PARKED_RECORDS.inc(parked)
        dead = Letters(out.dead)
        for dl in out.dead:
            if dl.gap is not None:
                metrics.GAP_SKIPS.labels(dl.gap["stream"].split("|", 1)[0]).inc()
        chunks: list[Any]
        if self.compiled:  # the same split, without a Python call per result
            chunks = _order.group(results, _SHARD_NAMES, shard_of, dead)
        else:
            dead += (r for r in results if r.__class__ is not Movement)
            chunks = list(_group((shard_of(r.sku), r) for r in results if r.__class__ is Movement).items())
        if dead:
            chunks.append(dead)
        return chunks

    def _settle(self, streams: list[str], codes: Callable[[], list[str]], now: float | None
                ) -> list[Any]:
        """Skip the gaps of `streams` (due at `now`; None: all, at end of replay), normalise
        what they release, then expire the parked records of `codes()`."""
        out = Outcome()
        results: list[Any] = []
        buffered = gaps_open = parked = 0
        for stream in streams:
            st = self.seq.state = self.state.streams[stream]
            before_buf, before_gap = self.seq.buffered, st.gap_deadline is not None
            if now is None:
                self.seq.skip(out)
            else:
                self.seq.on_time(now, out)
            buffered += self.seq.buffered - before_buf
            gaps_open += (st.gap_deadline is not None) - before_gap
            if self.mode == "live":
                if st.gap_deadline is None:
                    self.gaps.pop(stream, None)
                else:
                    self.gaps[stream] = st.gap_deadline
            if out.ordered:
                parked += self._normalise(out.ordered, self.clock() if now is None else now, results)
        for code in codes():
            norm = self._code(code)
            before = norm.parked_count
            results += norm.expire(now)
            parked += norm.parked_count - before
            self._track_code(code)
        return self._finish(out, results, buffered, gaps_open, parked)

    @override
    def on_notify(self) -> tuple[Iterable[Any], bool]:
        now = self.clock()
        due = [s for s, t in self.gaps.items() if t <= now]
        return self._settle(due, lambda: [c for c, t in self.parks.items() if t <= now], now), RETAIN

    @override
    def on_eof(self) -> tuple[Iterable[Any], bool]:
        if self.mode != "replay":  # live state stays put for the next run to resume
            return [], RETAIN
        streams = [s for s, st in self.state.streams.items() if st.buffer]
        return self._settle(streams, lambda: [c for c, cs in self.state.codes.items() if cs.parked],
                            None), RETAIN

    @override
    def notify_at(self) -> datetime | None:
        if not self.gaps and not self.parks:
            return None
        return wake_at(min(min(self.gaps.values(), default=float("inf")),
                           min(self.parks.values(), default=float("inf"))))

    @override
    def snapshot(self) -> OrderShardState:
        return self.state


def order_logic(
    resume: OrderShardState | None,
    *,
    gap_timeout: float,
    max_buffered: int,
    max_clock_skew: float,
    locations: Locations,
    unknown_item_timeout: float,
    mode: Mode,
    clock: Clock,
) -> StatefulBatchLogic[Any, Any, Any]:
    """One shard of the order step (also called without the engine by the units benchmark)."""
    seq = Sequencer(SequencerState(), gap_timeout=gap_timeout, max_buffered=max_buffered,
                    max_clock_skew=max_clock_skew, stream_key=stream_key)
    return _OrderShard(resume, seq, Normaliser(CodeState(), locations, unknown_item_timeout),
                       mode, clock)


@operator
def order_step(
    step_id: str,
    records: Stream[tuple[str, list[Decoded]]],
    item_updates: Stream[tuple[str, list[Any]]],
    *,
    gap_timeout: float,
    max_buffered: int,
    max_clock_skew: float,
    locations: Locations,
    unknown_item_timeout: float,
    mode: Mode,
    clock: Clock,
) -> SplitOut:
    """Dedup and reorder per source stream, then locations, item master, units per item code.

    `oks` are `(shard, [Movement])` chunks for the project step; `errs` are `Letters`.
    """

    def build(resume: OrderShardState | None) -> StatefulBatchLogic[Any, Any, Any]:
        return order_logic(resume, gap_timeout=gap_timeout, max_buffered=max_buffered,
                           max_clock_skew=max_clock_skew, locations=locations,
                           unknown_item_timeout=unknown_item_timeout, mode=mode, clock=clock)

    merged = op.merge("merge", records, item_updates)
    return _split_letters("split", _values("values", op.stateful_batch("order", merged, build)))


# -- ATP + channel projection ---------------------------------------------------------------


class ProjectShard(StatefulBatchLogic[list[Movement], Any, dict[str, SkuState]]):
    """One shard of the project step (also driven without the engine by the units benchmark)."""

    def __init__(
        self, states: dict[str, SkuState] | None, channels: Channels, topic_of: Callable[[str], str],
        version_clock: Callable[[], int] | None, *, encoded: bool = False,
    ) -> None:
        """`encoded`: the records only go to Kafka, so the compiled path may hand them over as
        Avro bytes instead of dicts (the sink sends those as they are)."""
        self.states: dict[str, SkuState] = states if states is not None else {}
        #: skus restored from a snapshot not yet seen: their first results are emitted even if
        #: unchanged; `forced` holds the channel keys still owed, per sku
        self.resumed = set(self.states)
        self.forced: dict[str, set[Any]] = {}
        self.topics = {c.id: topic_of(c.id) for c in channels.channels}
        self.projector = Projector(SkuState(), channels, version_clock)
        #: take the compiled path (operators/_project.pyx) when built; tests compare both
        self.compiled = _project is not None
        #: per channel key, the constant parts of its encoded records (compiled path only)
        self.plans = _project.plans(self.projector.targets) if encoded and _project else None

    def _projector(self, sku: str) -> Projector:
        p = self.projector
        state = self.states.get(sku)
        if state is None:
            state = self.states[sku] = SkuState()
        if self.resumed and sku in self.resumed:
            self.resumed.discard(sku)
            self.forced[sku] = set(state.emitted)
        p.state = state
        p.force = self.forced.get(sku)
        return p

    @override
    def on_batch(self, values: list[list[Movement]]) -> tuple[Iterable[Any], bool]:
        out: list[Output] = []
        late = Letters()
        applied: Counter[str] = Counter()
        duplicates: Counter[str] = Counter()
        clock = self.projector.version_clock
        now_ms = None if clock is None else clock()  # versions: one clock reading per batch
        fast = _project.project if self.compiled else None
        for movements in values:
            if fast is not None:
                # The same as the loop below; movements it does not take come back to `one`.
                fast(self, movements, now_ms, out, late, applied, duplicates)
                continue
            for m in movements:
                self.one(m, now_ms, out, late, applied, duplicates)
        for source, n in applied.items():
            metrics.child(metrics.RECORDS_APPLIED, source).inc(n)
        for source, n in duplicates.items():
            metrics.child(metrics.DUPLICATES, source).inc(n)
        chunks: list[Any] = []
        if out:
            chunks.append(out)
        if late:
            chunks.append(late)
        return chunks, RETAIN

    def one(self, m: Movement, now_ms: int | None, out: list[Output], late: Letters,
            applied: Counter[str], duplicates: Counter[str]) -> None:
        """One movement: its outputs to `out`, a late one to `late`, counted by source."""
        projector = self._projector(m.sku)
        result = projector.on_movement(m, now_ms)
        if projector.force is not None and not projector.force:
            del self.forced[m.sku]
        if result.duplicate:
            duplicates[m.source] += 1
            return
        if result.late is not None:
            late.append(result.late)
            return
        applied[m.source] += 1
        if result.records:
            sku, topics, ts = m.sku, self.topics, m.raw.timestamp
            for r in result.records:
                loc = r["location"]
                # tuple.__new__: an Output without its NamedTuple's Python-level __new__
                out.append(_tuple_new(Output, (
                    topics[r["channel"]], sku if loc is None else f"{sku}|{loc}",
                    "AvailabilityRecord", r, ts, m.event_time, m.source)))
        if m.kind == "STOCK_SNAPSHOT":
            drift = projector.state.cells[m.warehouse].drift
            if drift is not None:
                metrics.ATP_DRIFT.observe(drift)

    @override
    def snapshot(self) -> dict[str, SkuState]:
        return self.states


@operator
def project_step(
    step_id: str,
    movements: Stream[tuple[str, list[Movement]]],
    *,
    channels: Channels,
    topic_of: Callable[[str], str],
    version_clock: Callable[[], int] | None,
    encoded: bool = False,
) -> SplitOut:
    """Per sku: apply movements to ATP cells, emit changed channel availability.

    Takes `(shard of sku, [Movement])` chunks; `oks` are `[Output]` chunks, `errs` `Letters`.
    `encoded`: outputs go to the Kafka sink only, so their values may be Avro bytes.
    """

    def build(resume: dict[str, SkuState] | None) -> ProjectShard:
        return ProjectShard(resume, channels, topic_of, version_clock, encoded=encoded)

    return _split_letters("split", _values("values", op.stateful_batch("project", movements, build)))
