"""The project step's compiled path (operators/_project.pyx) equals the Python reference.

Two `ProjectShard`s, one compiled and one not, take the same batches of random movements:
every output record, dead letter, count, drift observation and the state they end with must
be equal, live (versions from a clock) and in replay, from fresh and from resumed state.
"""

from __future__ import annotations

import copy
import pickle
from typing import Any

import pytest
from helpers import EVENT_T0, movement, sample_channels
from hypothesis import given, settings
from hypothesis import strategies as st

# Imported, not skipped when missing: a failed build must fail here (setup.sh builds it).
from operators import _project, metrics, steps
from operators.records import Output
from operators.reference import Channel, Channels
from operators.steps import ProjectShard
from schemas import codec

_WHS = ("ATL1", "DAL1", "RNO1")
_KINDS = ["RECEIPT", "RETURN", "PICK", "SHIP", "ADJUST", "CYCLE_COUNT", "HOLD", "RELEASE_HOLD",
          "TRANSFER_IN", "TRANSFER_OUT", "SO_ALLOCATION", "SO_DEALLOCATION", "GOODS_ISSUE",
          "PO_CONFIRMED", "PO_RECEIVED", "STOCK_SNAPSHOT"]


def _channels(rules: dict[str, Any]) -> Channels:
    return Channels(channels=(
        Channel(id="c", kind="topic", warehouses=_WHS, **rules),
        Channel(id="all", kind="topic", warehouses=_WHS, include_incoming=True, share_pct=50),
        Channel(id="two", kind="topic", warehouses=_WHS[:2], per_location=True, buffer_units=1),
    ))


class _Drift:
    def __init__(self) -> None:
        self.seen: list[Any] = []

    def observe(self, value: Any) -> None:
        self.seen.append(value)


def _counts() -> dict[str, float]:
    """`atpflow_records_applied_total` and `atpflow_duplicates_total` per source."""
    return {f"{name} {source}": metric.labels(source)._value.get()
            for name, metric in (("applied", metrics.RECORDS_APPLIED),
                                 ("duplicates", metrics.DUPLICATES))
            for source in ("wms", "erp")}


def _run(shard: ProjectShard, batches: list[list[list[Any]]]
         ) -> tuple[list[Any], list[Any], dict[str, float]]:
    """Every chunk of every batch, the drift observations and the counts it added."""
    drift = _Drift()
    before = _counts()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(metrics, "ATP_DRIFT", drift)
        chunks = []
        for batch in batches:
            out, _ = shard.on_batch(batch)
            chunks.append([list(c) for c in out])
    added = {k: v - before[k] for k, v in _counts().items()}
    return chunks, drift.seen, added


_moves = st.lists(st.tuples(
    st.sampled_from(_KINDS), st.integers(-50, 150), st.sampled_from(_WHS),
    st.sampled_from(["SKU-1", "SKU-2"]), st.integers(1, 30),  # seq: late ones are superseded
    st.booleans(),  # replayed
    st.integers(0, 20),  # event time offset, out of order
), min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(
    rules=st.fixed_dictionaries({
        "share_pct": st.sampled_from([0, 1, 33.3, 50, 80, 99.9, 100]),
        "buffer_units": st.integers(0, 20),
        "max_qty": st.sampled_from([0, 7, 200, 10**20]),  # limits are unbounded in the config
        "min_qty": st.integers(0, 30),
        "include_incoming": st.booleans(),
        "per_location": st.booleans(),
    }),
    before=_moves, after=_moves, live=st.booleans(), resume=st.booleans(),
    replayed_ids=st.sampled_from([None, "same", "other"]),
    cut=st.integers(1, 5), encoded=st.booleans(),
)
def test_compiled_project_equals_python(
    rules: dict[str, Any], before: list[Any], after: list[Any], live: bool, resume: bool,
    replayed_ids: str | None, cut: int, encoded: bool,
) -> None:
    channels = _channels(rules)
    clock = iter(range(10**12, 10**13, 3)).__next__ if live else None

    def batches(moves: list[Any]) -> list[list[list[Any]]]:
        ms = []
        for kind, qty, wh, sku, seq, replayed, dt in moves:
            source_id = "R-1" if replayed_ids == "same" else None
            ms.append(movement(kind, qty, seq=seq, warehouse=wh, sku=sku,
                               event_time=EVENT_T0 + dt * 1000, source_id=source_id,
                               replayed=replayed))
        # several chunks per batch and several batches, as the engine gives them
        return [[ms[i:i + cut] for i in range(j, min(j + 2 * cut, len(ms)), cut)]
                for j in range(0, len(ms), 2 * cut)]

    def shard(compiled: bool, states: Any = None) -> ProjectShard:
        s = ProjectShard(states, channels, lambda c: f"avail.{c}",
                         None if clock is None else (lambda: 1_700_000_000_000), encoded=encoded)
        s.compiled = compiled
        return s

    results = []
    for compiled in (True, False):
        first = shard(compiled)
        got = [_run(first, batches(before))]
        states = first.states
        if resume:  # a restart: the state as recovery restores it
            states = pickle.loads(pickle.dumps(states))  # noqa: S301 - our own
            second = shard(compiled, states)
        else:
            second = first
        got.append(_run(second, batches(after)))
        results.append((got, copy.deepcopy(second.states), second.forced, second.resumed))
    if encoded:
        # Every record the compiled path wrote as bytes is the codec's encoding of the
        # reference's dict (the rest went through the reference: replayed movements, resumed
        # skus). A channel whose limits do not fit a long keeps dicts.
        assert not any(type(o.value) is bytes and o.value[:2] == b"\x02c"  # channel "c"
                       for o in _outputs(results[0][0])) or rules["max_qty"] < 2**63
        results[1] = (_encode_like(results[0][0], results[1][0]), *results[1][1:])
    assert results[0] == results[1]


def _outputs(got: list[Any]) -> list[Output]:
    return [x for chunks, _, _ in got for batch in chunks for chunk in batch for x in chunk
            if type(x) is Output]


def _encode_like(compiled: list[Any], pure: list[Any]) -> list[Any]:
    """`pure` with each record's dict encoded where `compiled` holds bytes at that place."""
    encode = codec("AvailabilityRecord").encode

    def like(c: Any, p: Any) -> Any:
        if type(c) is Output and type(c.value) is bytes and type(p) is Output:
            return p._replace(value=encode(p.value))
        return p

    return [([[[like(c, p) for c, p in zip(cc, pc, strict=False)]
                for cc, pc in zip(cb, pb, strict=False)]
               for cb, pb in zip(cchunks, pchunks, strict=False)], drift, counts)
            for (cchunks, _, _), (pchunks, drift, counts) in zip(compiled, pure, strict=False)]


def test_records_are_handed_over_encoded_when_only_kafka_reads_them() -> None:
    """With `encoded`, a known cell's records come as the bytes the codec makes of the dict."""
    channels = sample_channels()
    shards = [ProjectShard(None, channels, lambda c: c, None, encoded=encoded)
              for encoded in (True, False)]
    got = []
    for shard in shards:
        outs = []
        for batch in ([[movement("RECEIPT", 5)]],
                      [[movement("RECEIPT", 3, seq=2), movement("HOLD", 1, seq=3)]]):
            out, _ = shard.on_batch(batch)
            outs += [o for chunk in out for o in chunk]
        got.append(outs)
    encoded, plain = got
    assert encoded and [type(o.value) for o in encoded] == [bytes] * len(encoded)
    encode = codec("AvailabilityRecord").encode
    assert [o._replace(value=encode(o.value)) for o in plain] == encoded


def test_the_compiled_path_is_taken_and_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shard uses the compiled module when built; `compiled = False` runs the reference."""
    calls = []
    real = _project.project

    def spy(*args: Any) -> None:
        calls.append(len(args[1]))
        real(*args)

    monkeypatch.setattr(steps._project, "project", spy)
    shard = ProjectShard(None, sample_channels(), lambda c: c, None)
    shard.on_batch([[movement("RECEIPT", 5)], [movement("RECEIPT", 1, seq=2)]])
    assert calls == [1, 1]
    shard.compiled = False
    shard.on_batch([[movement("RECEIPT", 5, seq=3)]])
    assert calls == [1, 1]
