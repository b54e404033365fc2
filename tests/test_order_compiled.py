"""The compiled order step (operators/_order.pyx) does exactly what the Python code does.

`_OrderShard` applies the common case compiled when the module is built (`compiled`) and
hands every other record to the Python code. Here a compiled shard and a pure one take the
same random arrivals (in order mostly, with repeats, conflicts, invalid records, bad event
times, gaps, unknown locations and items, item updates, replayed records, Decimal
quantities and unit factors): their outputs, states and metrics must not differ.
"""

from __future__ import annotations

import hashlib
import pickle
import zlib
from typing import Any

import pytest
from helpers import (
    ERP_TOPIC,
    EVENT_T0,
    ITEMS_TOPIC,
    NOW,
    WMS_TOPIC,
    avro_bytes,
    erp_doc_value,
    item_master_value,
    sample_locations,
    wms_txn_value,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from operators import metrics, steps
from operators.decode import Decoded, decode
from operators.normalise import CodeState, ItemRouter, Normaliser, code_key, stream_key
from operators.records import REPLAYED_HEADER, RawRecord
from operators.sequencing import Sequencer, SequencerState, id_hash
from operators.steps import _SHARD_NAMES, Letters, _OrderShard, shard_of

# Imported, not skipped when missing: a failed build must fail here (setup.sh builds it).
from operators import _order  # isort: skip

LOCATIONS = sample_locations()
SCHEMAS = {WMS_TOPIC: "WmsInventoryTransaction", ERP_TOPIC: "ErpInventoryDocument",
           ITEMS_TOPIC: "ItemMaster"}
GAP_TIMEOUT, UNKNOWN_ITEM_TIMEOUT = 30.0, 100.0

#: (facility, item) of the WMS streams: known and unknown locations, known and unknown items
WMS_STREAMS = [("DC-ATL", "ITM-1"), ("DC-DAL", "ITM-1"), ("DC-ATL", "ITM-9"), ("DC-XXX", "ITM-1")]
#: (plant, material) of the ERP streams
ERP_STREAMS = [("1000", "0001"), ("2000", "0009"), ("9999", "0001")]
#: item-master versions: SKU-1 (ITM-1 / 0001) and SKU-9 (ITM-9 / 0009), some retired or moved
ITEMS = [
    {},
    {"uom_factors": {"EA": 1}},
    {"active": False},
    {"sku": "SKU-9", "wms_item": "ITM-9", "erp_material": "0009"},
    {"sku": "SKU-9", "wms_item": "ITM-9", "erp_material": "0009", "uom_factors": {"EA": 1, "CS": 6}},
    {"wms_item": "ITM-9"},  # SKU-1 moves off ITM-1: an Unmap for wms|ITM-1
]
#: mostly the plain record (the compiled path), so that streams stay in its common case for long
VARIANTS = ["same"] * 30 + [
    "old-id", "other-qty", "bad-time", "future", "invalid", "replayed", "header", "negative",
    "adjust", "huge", "case", "pallet", "bad-unit", "half",
]


def _value(source: str, stream: int, seq: int, variant: str) -> tuple[str, dict[str, Any]]:
    """The record number `seq` of a stream: the same (seq, variant) gives the same record."""
    t = EVENT_T0 + seq * 1000
    if source == "wms":
        facility, item = WMS_STREAMS[stream]
        value = wms_txn_value(txn_id=f"W{stream}-{seq}", facility=facility, item=item, seq=max(seq, 0),
                              event_time=t, qty=1 + seq % 3)
        qty, unit, kind = "qty", "uom", "txn_type"
    else:
        plant, material = ERP_STREAMS[stream]
        value = erp_doc_value(doc_id=f"E{stream}-{seq}", plant=plant, material=material,
                              change_seq=max(seq, 0), posted_at=t, quantity=f"{1 + seq % 3}.000")
        qty, unit, kind = "quantity", "unit", "doc_type"
    time_field = "event_time" if source == "wms" else "posted_at"
    changes: dict[str, Any] = {
        "same": {},
        "old-id": {("txn_id" if source == "wms" else "doc_id"): f"{source[0].upper()}{stream}-{seq - 2}"},
        "other-qty": {qty: 7 if source == "wms" else "7.000"},
        "bad-time": {time_field: 1},
        "future": {time_field: EVENT_T0 + 10**10},
        "invalid": {unit: ""},
        "replayed": {},
        "header": {},
        "negative": {qty: -2 if source == "wms" else "-2.000"},
        "adjust": ({qty: -3, kind: "ADJUST"} if source == "wms" else {kind: "STOCK_SNAPSHOT"}),
        "huge": {qty: 10**9 if source == "wms" else "1000000000.000"},
        "case": {unit: "CS", qty: 10**8 if source == "wms" else "100000000.000"},
        "pallet": {unit: "PL"},
        "bad-unit": {unit: "BOX"},
        "half": {qty: 5 if source == "wms" else "0.500"},
    }[variant]
    value.update(changes)
    return source, value


def _raw(source: str, value: dict[str, Any], offset: int, variant: str) -> RawRecord:
    topic = WMS_TOPIC if source == "wms" else ERP_TOPIC
    schema = SCHEMAS[topic]
    headers = {"replayed": ((REPLAYED_HEADER, b"x"),), "header": (("trace", b"1"),)}.get(variant, ())
    return RawRecord(topic, 0, offset, None, avro_bytes(schema, value), None, headers)


def _decoded(raw: RawRecord) -> Decoded:
    """As `sort_batch` makes it (each shard gets its own: the sequencer writes to it)."""
    d = decode(raw, SCHEMAS[raw.topic])
    assert isinstance(d, Decoded)
    d.stream, d.code = stream_key(d.rec), code_key(d.rec)
    return d


def _shard(mode: str, clock: list[float], compiled: bool, max_buffered: int) -> _OrderShard:
    seq = Sequencer(SequencerState(), gap_timeout=GAP_TIMEOUT, max_buffered=max_buffered,
                    max_clock_skew=3600, stream_key=stream_key)
    shard = _OrderShard(None, seq, Normaliser(CodeState(), LOCATIONS, UNKNOWN_ITEM_TIMEOUT), mode,  # type: ignore[arg-type]
                        lambda: clock[0])
    assert shard.compiled  # built, so on by default
    shard.compiled = compiled
    return shard


def _metrics() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    values = {}
    for metric in (metrics.REORDER_BUFFERED, metrics.OPEN_GAPS, metrics.PARKED_RECORDS,
                   metrics.DUPLICATES, metrics.GAP_SKIPS):
        for family in metric.collect():
            for s in family.samples:
                values[s.name, tuple(sorted(s.labels.items()))] = s.value
    return values


def _delta(before: dict[Any, float], after: dict[Any, float]) -> dict[Any, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}


#: the next number mostly; sometimes a repeat, a gap, or a late one
STEPS = [1] * 20 + [0, 2, 5, -1, -3]
#: streams 0 are known locations with a known item (from the first item-master version)
arrival = st.one_of(
    st.tuples(st.just("wms"), st.sampled_from([0, 0, 0, *range(len(WMS_STREAMS))]),
              st.sampled_from(STEPS), st.sampled_from(VARIANTS)),
    st.tuples(st.just("erp"), st.sampled_from([0, 0, 0, *range(len(ERP_STREAMS))]),
              st.sampled_from(STEPS), st.sampled_from(VARIANTS)),
    st.tuples(st.just("item"), st.integers(0, len(ITEMS) - 1), st.just(0), st.just("")),
    st.tuples(st.just("tick"), st.integers(0, 60), st.just(0), st.just("")),
    st.tuples(st.just("batch"), st.just(0), st.just(0), st.just("")),
)


@pytest.mark.parametrize("mode", ["live", "replay"])
@settings(max_examples=300, deadline=None)
@given(arrivals=st.lists(arrival, min_size=20, max_size=150), max_buffered=st.integers(2, 20),
       first_item=st.booleans())
def test_compiled_order_shard_equals_the_python_one(
    mode: str, arrivals: list[tuple[str, int, int, str]], max_buffered: int, first_item: bool
) -> None:
    clock = [NOW]
    compiled, pure = (_shard(mode, clock, flag, max_buffered) for flag in (True, False))
    routers: dict[str, ItemRouter] = {}
    cursors: dict[tuple[str, int], int] = {}
    pending: list[RawRecord | tuple[str, Any]] = []  # the batch being built, in arrival order
    offset = 0

    def flush() -> None:
        # One chunk per run of records and per item update, as the flow's merge delivers them.
        chunks_a: list[list[Any]] = []
        chunks_b: list[list[Any]] = []
        for x in pending:
            if isinstance(x, RawRecord):
                if not chunks_a or not isinstance(chunks_a[-1][0], Decoded):
                    chunks_a.append([])
                    chunks_b.append([])
                chunks_a[-1].append(_decoded(x))
                chunks_b[-1].append(_decoded(x))
            else:
                chunks_a.append([x])
                chunks_b.append([x])
        pending.clear()
        if chunks_a:
            m0 = _metrics()
            a = compiled.on_batch(chunks_a)
            m1 = _metrics()
            b = pure.on_batch(chunks_b)
            assert [(type(x), x) for x in a[0]] == [(type(x), x) for x in b[0]]
            assert _delta(m0, m1) == _delta(m1, _metrics())

    def settle(call: str) -> None:
        m0 = _metrics()
        a = getattr(compiled, call)()
        m1 = _metrics()
        b = getattr(pure, call)()
        assert [(type(x), x) for x in a[0]] == [(type(x), x) for x in b[0]]
        assert _delta(m0, m1) == _delta(m1, _metrics())

    if first_item:
        arrivals = [("item", 0, 0, ""), *arrivals]
    for what, n, delta, variant in arrivals:
        if what in ("wms", "erp"):
            cursor = cursors[what, n] = max(0, cursors.get((what, n), 0) + delta)
            source, value = _value(what, n, cursor, variant)
            offset += 1
            pending.append(_raw(source, value, offset, variant))
        elif what == "item":
            raw = RawRecord(ITEMS_TOPIC, 0, 0, None,
                            avro_bytes("ItemMaster", item_master_value(**ITEMS[n])), None)
            item = decode(raw, "ItemMaster").rec  # type: ignore[union-attr]
            pending.extend(routers.setdefault(item.sku, ItemRouter(None)).on_item(item))
        elif what == "tick":
            flush()
            clock[0] += n
            if mode == "live":
                settle("on_notify")
        else:
            flush()
    flush()
    clock[0] += max(GAP_TIMEOUT, UNKNOWN_ITEM_TIMEOUT)
    settle("on_notify" if mode == "live" else "on_eof")

    assert compiled.state == pure.state
    assert pickle.dumps(compiled.state) == pickle.dumps(pure.state)
    assert (compiled.gaps, compiled.parks) == (pure.gaps, pure.parks)
    assert compiled.notify_at() == pure.notify_at()


def test_the_common_case_is_applied_compiled() -> None:
    """In-order records of a known item and location never reach the Python loop."""
    clock = [NOW]
    shard = _shard("live", clock, True, 10)
    item = decode(RawRecord(ITEMS_TOPIC, 0, 0, None, avro_bytes("ItemMaster", item_master_value()),
                            None), "ItemMaster").rec  # type: ignore[union-attr]
    shard.on_batch([[("wms|ITM-1", item)], [("erp|0001", item)]])
    chunk = [_decoded(_raw(*_value(source, 0, seq, "same"), seq, "same"))
             for seq in range(1, 40) for source in ("wms", "erp")]
    results: list[Any] = []
    fast = _order.Batch(shard.state.streams, shard.state.codes, shard.gaps, LOCATIONS,
                        NOW * 1000 + 3600 * 1000, results)
    assert list(fast.rest(chunk)) == []
    assert [(m.source, m.seq, m.qty) for m in results] == [
        (source, seq, (1 + seq % 3) * factor) for seq in range(1, 40) for source, factor in
        (("wms", 1), ("erp", 1))]
    # and exactly as the sequencer leaves a stream: identity, memory slot, next number
    d = chunk[-1]
    assert d.identity == id_hash("E0-39") + d.digest[:5]
    state = shard.state.streams[d.stream]
    assert (state.next_seq, state.stream, state.topic) == (40, "erp|1000|0001", ERP_TOPIC)
    assert state.memory.slot(39) == d.identity


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=300))
def test_compiled_hashes_equal_hashlib_and_zlib(text: str) -> None:
    try:
        data = text.encode()
    except UnicodeEncodeError:  # lone surrogates: both raise
        with pytest.raises(UnicodeEncodeError):
            _order.id_hash(text)
        return
    assert _order.id_hash(text) == hashlib.blake2b(data, digest_size=5).digest() == id_hash(text)
    assert _order.shard(text, _SHARD_NAMES) == _SHARD_NAMES[zlib.crc32(data) % len(_SHARD_NAMES)]
    assert _order.shard(text, _SHARD_NAMES) == shard_of(text)


def test_without_the_compiled_module_the_shard_runs_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(steps, "_order", None)
    shard = _OrderShard(None, Sequencer(SequencerState(), gap_timeout=30, max_buffered=10,
                                        max_clock_skew=3600, stream_key=stream_key),
                        Normaliser(CodeState(), LOCATIONS, 300), "live", lambda: NOW)
    assert not shard.compiled
    out, _ = shard.on_batch([[_decoded(_raw(*_value("wms", 3, 1, "same"), 1, "same"))]])
    assert [(type(x), [dl.reason for dl in x]) for x in out] == [(Letters, ["UNKNOWN_LOCATION"])]
