"""Each engine step through bytewax.testing, on one worker and on two (like Bytewax's own conftest)."""

from __future__ import annotations

from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

from operators.availability import SkuState
from operators.decode import decode
from operators.normalise import Movement, code_key, stream_key
from operators.records import RawRecord
from operators.steps import (
    Letters,
    decode_step,
    order_step,
    project_step,
    route_items_step,
    shard_of,
    sort_step,
)
from schemas import codec, from_json
from tests.flowtest import FIXTURES, last_per_key, load_records, run_flow, sample_config

T0 = 1_767_225_600_000
CONFIG = sample_config()


def _run(flow: Dataflow, workers: int) -> None:
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)


def _wms(txn: str, seq: int, qty: int = 1, item: str = "ITM-1", kind: str = "RECEIPT") -> RawRecord:
    value = {"txn_id": txn, "facility": "DC-ATL", "item": item, "txn_type": kind, "qty": qty,
             "uom": "EA", "seq": seq, "event_time": T0 + seq, "order_ref": None}
    data = codec("WmsInventoryTransaction").encode(from_json("WmsInventoryTransaction", value))
    return RawRecord("wms.inventory.transactions", 0, seq, f"DC-ATL|{item}", data)


@pytest.fixture(params=[1, 2], ids=["1-worker", "2-workers"])
def workers(request: pytest.FixtureRequest) -> int:
    return request.param


def test_decode_step_splits_good_and_bad(workers: int) -> None:
    flow = Dataflow("t")
    raws = [_wms("A", 1), RawRecord("wms.inventory.transactions", 0, 9, "k", b"\x01")]
    out = decode_step("decode", op.input("in", flow, TestingSource(raws)),
                      {"wms.inventory.transactions": "WmsInventoryTransaction"})
    oks: list = []
    errs: list = []
    op.output("oks", out.oks, TestingSink(oks))
    op.output("errs", out.errs, TestingSink(errs))
    _run(flow, workers)
    assert [d.rec.txn_id for d in oks] == ["A"]
    assert [(e.reason, e.offset, e.value) for e in errs] == [("UNDECODABLE", 9, b"\x01")]


def _erp(doc: str, seq: int, material: str = "MAT-SKU-1") -> RawRecord:
    value = {"doc_id": doc, "doc_type": "SO_ALLOCATION", "plant": "1000", "material": material,
             "quantity": "1", "unit": "EA", "change_seq": seq, "posted_at": T0 + seq, "sales_order": None}
    data = codec("ErpInventoryDocument").encode(from_json("ErpInventoryDocument", value))
    return RawRecord("erp.inventory.documents", 0, seq, f"1000|{material}", data)


def _item(sku: str = "SKU-1", wms_item: str = "ITM-1") -> RawRecord:
    value = {"sku": sku, "wms_item": wms_item, "erp_material": f"MAT-{sku}", "base_uom": "EA",
             "uom_factors": {"EA": 1, "CS": 12}, "active": True, "updated_at": T0}
    data = codec("ItemMaster").encode(from_json("ItemMaster", value))
    return RawRecord("ref.items", 0, 0, sku, data)


def _ordered_flow(raws: list[RawRecord]) -> tuple[Dataflow, list, list]:
    flow = Dataflow("t")
    schemas = {"wms.inventory.transactions": "WmsInventoryTransaction", "ref.items": "ItemMaster"}
    sorted_ = sort_step("sort", op.input("in", flow, TestingSource(raws)), schemas, "ref.items")
    updates = route_items_step("items", sorted_.items)
    out = order_step(
        "order", sorted_.records, updates, gap_timeout=30, max_buffered=1000, max_clock_skew=3600,
        locations=CONFIG.locations, unknown_item_timeout=300, mode="replay", clock=lambda: T0 / 1000,
    )
    oks: list = []
    errs: list = []
    op.output("oks", out.oks, TestingSink(oks))
    op.output("errs", op.merge("all_errs", out.errs, sorted_.errs), TestingSink(errs))
    return flow, oks, errs


def test_sort_step_chunks_records_by_shard_and_splits_items_and_bad(workers: int) -> None:
    flow = Dataflow("t")
    raws = [_wms("A", 1), _wms("B", 1, item="ITM-2"), _item(), _wms("C", 2), _erp("D", 1),
            RawRecord("wms.inventory.transactions", 0, 9, "k", b"\x01"),
            RawRecord("other.topic", 0, 1, "k", b"\x00")]
    schemas = {"wms.inventory.transactions": "WmsInventoryTransaction", "ref.items": "ItemMaster",
               "erp.inventory.documents": "ErpInventoryDocument"}
    out = sort_step("sort", op.input("in", flow, TestingSource(raws)), schemas, "ref.items")
    chunks: list = []
    items: list = []
    errs: list = []
    op.output("chunks", out.records, TestingSink(chunks))
    op.output("items", out.items, TestingSink(items))
    op.output("errs", out.errs, TestingSink(errs))
    _run(flow, workers)
    by_code: dict = {}
    for shard, records in chunks:
        for d in records:
            assert shard == shard_of(d.code)
            by_code.setdefault(d.code, []).append(d.rec.record_id)
    assert by_code == {"wms|ITM-1": ["A", "C"], "wms|ITM-2": ["B"], "erp|MAT-SKU-1": ["D"]}  # in order within a code
    assert {d.stream for _, records in chunks for d in records} == {
        "wms|DC-ATL|ITM-1", "wms|DC-ATL|ITM-2", "erp|1000|MAT-SKU-1"}
    for _, records in chunks:  # the sort step's inlined keys are the sequencing and normalising keys
        assert all((d.stream, d.code) == (stream_key(d.rec), code_key(d.rec)) for d in records)
    assert [d.rec.sku for d in items] == ["SKU-1"]
    assert all(type(e) is Letters for e in errs)
    assert [(e.reason, e.offset) for chunk in errs for e in chunk] == [("UNDECODABLE", 9)]


def test_order_step_reorders_dedups_normalises_and_skips_at_eof(workers: int) -> None:
    raws = [_item(), _wms("C", 3, kind="RECEIPT", qty=2), _wms("A", 1), _wms("A", 1), _wms("E", 5),
            _wms("B", 2)]
    flow, oks, errs = _ordered_flow(raws)
    _run(flow, workers)
    movements = [m for shard, chunk in oks for m in chunk]
    assert all(shard == shard_of(m.sku) for shard, chunk in oks for m in chunk)
    assert [(m.sku, m.warehouse, m.seq, m.qty) for m in movements] == [
        ("SKU-1", "ATL1", 1, 1), ("SKU-1", "ATL1", 2, 1), ("SKU-1", "ATL1", 3, 2),
        ("SKU-1", "ATL1", 5, 1)]
    assert [(e.reason, e.gap) for chunk in errs for e in chunk] == [
        ("SEQUENCE_GAP", {"stream": "wms|DC-ATL|ITM-1", "missing_from": 4, "missing_to": 4})
    ]


def test_order_step_parks_a_stream_until_its_item_arrives_and_dead_letters_it_at_eof(
        workers: int) -> None:
    flow, oks, errs = _ordered_flow([_wms("A", 1, item="ITM-9"), _wms("B", 1), _item(), _wms("C", 2)])
    _run(flow, workers)
    assert [m.source_id for _, chunk in oks for m in chunk] == ["B", "C"]  # B waited for its item
    assert [(e.reason, e.source_id) for chunk in errs for e in chunk] == [("UNKNOWN_ITEM", "A")]


def test_project_step_emits_changes_with_versions(workers: int) -> None:
    flow = Dataflow("t")
    raw = _wms("A", 1)
    moves = [Movement("SKU-1", "DAL1", "wms", f"T{i}", i, "RECEIPT", 5, T0 + i, raw) for i in (1, 2)]
    moves.append(Movement("SKU-1", "DAL1", "wms", "T3", 3, "PICK", 5, T0 + 3, raw))
    chunks = [(shard_of(m.sku), [m]) for m in moves]
    out = project_step("project", op.input("in", flow, TestingSource(chunks)), channels=CONFIG.channels,
                       topic_of=CONFIG.topics.availability, version_clock=None)
    oks: list = []
    op.output("oks", out.oks, TestingSink(oks))
    _run(flow, workers)
    shopify = [(o.key, o.value["available"], o.value["previous"], o.value["version"])
               for chunk in oks for o in chunk if o.topic == "availability.shopify-us"]
    assert shopify == [("SKU-1|DAL1", 3, None, 1), ("SKU-1|DAL1", 8, 3, 2)]  # PICK changes nothing


def test_resumed_state_emits_first_result_even_if_unchanged() -> None:
    from operators.availability import Projector

    state = SkuState()
    raw = _wms("A", 1)
    first = Projector(state, CONFIG.channels, None)
    first.on_movement(Movement("SKU-1", "DAL1", "wms", "T1", 1, "RECEIPT", 5, T0, raw))
    resumed = Projector(state, CONFIG.channels, None, resumed=True)
    again = resumed.on_movement(Movement("SKU-1", "DAL1", "wms", "T2", 2, "PICK", 1, T0, raw))
    assert {(r["channel"], r["available"], r["version"]) for r in again.records} == {
        ("shopify-us", 3, 2), ("amazon-us", 0, 2), ("b2b-portal", 5, 2)}
    later = resumed.on_movement(Movement("SKU-1", "DAL1", "wms", "T3", 3, "PICK", 1, T0, raw))
    assert later.records == []


@pytest.mark.parametrize("fixture", ["movements", "dead_letters", "ordering", "channels"])
def test_two_workers_give_the_same_final_outputs_as_one(fixture: str) -> None:
    records = load_records(CONFIG, FIXTURES / "availability" / f"{fixture}.jsonl")
    one = run_flow(records, CONFIG, workers=1)
    two = run_flow(records, CONFIG, workers=2)
    assert last_per_key(two) == last_per_key(one)
    def letters(outs: list) -> list:
        return sorted((o.value["reason"], o.key, o.value["source_id"] or "") for o in outs
                      if o.topic == "atpflow.dead-letter")

    assert letters(two) == letters(one)


def test_resumed_live_shards_restart_waits_that_ran_on_the_dead_process_clock() -> None:
    from operators.normalise import CodeState, Normaliser
    from operators.sequencing import Sequencer, SequencerState
    from operators.steps import OrderShardState, _OrderShard

    now = 2_000_000_000.0
    gap = SequencerState(stream="wms|DC-ATL|ITM-1", next_seq=1, gap_deadline=now - 100)
    parked = CodeState(parked={"s": []}, parked_since={"s": now - 1000})
    seq = Sequencer(SequencerState(), gap_timeout=30, max_buffered=10, max_clock_skew=60,
                    stream_key=lambda rec: "")
    state = OrderShardState({"wms|DC-ATL|ITM-1": gap}, {"wms|ITM-1": parked})
    shard = _OrderShard(state, seq, Normaliser(CodeState(), CONFIG.locations, 300), "live", lambda: now)
    assert gap.gap_deadline == now + 30
    assert parked.parked_since == {"s": now}
    wake = shard.notify_at()
    assert wake is not None and wake.timestamp() == now + 30  # the gap's, before the park's (+300)


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
def test_order_shard_live_timers_skip_gaps_and_expire_parked_streams(compiled: bool) -> None:
    """The live wake-ups on a fake clock: a gap skips after gap_timeout and releases what waited;
    a stream parked behind an unknown item is dead-lettered after unknown_item_timeout; the
    gauges come back to where they started. On the compiled order path and the Python one."""
    from operators import metrics
    from operators.normalise import CodeState, Normaliser
    from operators.sequencing import Sequencer, SequencerState
    from operators.steps import _OrderShard

    def gauge(g: Any) -> float:
        return g._value.get()

    now = [T0 / 1000]
    seq = Sequencer(SequencerState(), gap_timeout=30, max_buffered=100, max_clock_skew=3600,
                    stream_key=stream_key)
    shard = _OrderShard(None, seq, Normaliser(CodeState(), CONFIG.locations, 300), "live",
                        lambda: now[0])
    shard.compiled = compiled
    start = gauge(metrics.REORDER_BUFFERED), gauge(metrics.OPEN_GAPS), gauge(metrics.PARKED_RECORDS)
    schemas = {"wms.inventory.transactions": "WmsInventoryTransaction", "ref.items": "ItemMaster"}

    def chunk_of(*raws: RawRecord) -> list:
        out = []
        for raw in raws:
            d = decode(raw, schemas[raw.topic])
            d.stream, d.code = stream_key(d.rec), code_key(d.rec)
            out.append(d)
        return out

    item = decode(_item(), "ItemMaster").rec
    shard.on_batch([[("wms|ITM-1", item)]])
    out, _ = shard.on_batch([chunk_of(_wms("A", 1), _wms("C", 3), _wms("X", 1, item="ITM-9"))])
    assert [m.source_id for x in out if type(x) is not Letters for m in x[1]] == ["A"]
    assert not [x for x in out if type(x) is Letters]
    assert gauge(metrics.REORDER_BUFFERED) - start[0] == 1  # C waits for 2
    assert gauge(metrics.OPEN_GAPS) - start[1] == 1
    assert gauge(metrics.PARKED_RECORDS) - start[2] == 1  # X waits for ITM-9
    wake = shard.notify_at()
    assert wake is not None and wake.timestamp() == now[0] + 30  # the gap, before the park (+300)

    now[0] += 30
    out, _ = shard.on_notify()
    moved = [m.source_id for x in out if type(x) is not Letters for m in x[1]]
    letters = [(dl.reason, dl.gap) for x in out if type(x) is Letters for dl in x]
    assert moved == ["C"]
    assert letters == [("SEQUENCE_GAP", {"stream": "wms|DC-ATL|ITM-1", "missing_from": 2,
                                         "missing_to": 2})]
    assert shard.notify_at() is not None and shard.notify_at().timestamp() == T0 / 1000 + 300

    now[0] = T0 / 1000 + 300
    out, _ = shard.on_notify()
    assert [(dl.reason, dl.source_id) for x in out if type(x) is Letters for dl in x] == [
        ("UNKNOWN_ITEM", "X")]
    assert shard.notify_at() is None
    assert (gauge(metrics.REORDER_BUFFERED), gauge(metrics.OPEN_GAPS),
            gauge(metrics.PARKED_RECORDS)) == start


def test_metric_children_are_looked_up_once_and_count_in_the_registry() -> None:
    from prometheus_client import REGISTRY

    from operators import metrics

    child = metrics.child(metrics.RECORDS_IN, "t-child")
    assert child is metrics.child(metrics.RECORDS_IN, "t-child")
    assert child is metrics.RECORDS_IN.labels("t-child")
    before = REGISTRY.get_sample_value("atpflow_records_in_total", {"topic": "t-child"})
    child.inc(3)
    assert REGISTRY.get_sample_value("atpflow_records_in_total", {"topic": "t-child"}) == before + 3
