"""Each engine step through bytewax.testing, on one worker and on two (like Bytewax's own conftest)."""

from __future__ import annotations

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

from operators.availability import SkuState
from operators.decode import decode
from operators.normalise import Movement, stream_key
from operators.records import RawRecord
from operators.steps import decode_step, project_step, sequence_step
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


def test_sequence_step_reorders_dedups_and_skips_at_eof(workers: int) -> None:
    flow = Dataflow("t")
    raws = [_wms("C", 3), _wms("A", 1), _wms("A", 1), _wms("E", 5), _wms("B", 2)]
    decoded = [decode(r, "WmsInventoryTransaction") for r in raws]
    out = sequence_step(
        "seq", op.input("in", flow, TestingSource(decoded)), stream_key=stream_key,
        gap_timeout=30, max_buffered=1000, max_clock_skew=3600, mode="replay", clock=lambda: T0 / 1000,
    )
    oks: list = []
    errs: list = []
    op.output("oks", out.oks, TestingSink(oks))
    op.output("errs", out.errs, TestingSink(errs))
    _run(flow, workers)
    assert [d.rec.seq for d in oks] == [1, 2, 3, 5]
    assert [(e.reason, e.gap) for e in errs] == [
        ("SEQUENCE_GAP", {"stream": "wms|DC-ATL|ITM-1", "missing_from": 4, "missing_to": 4})
    ]


def test_project_step_emits_changes_with_versions(workers: int) -> None:
    flow = Dataflow("t")
    raw = _wms("A", 1)
    moves = [Movement("SKU-1", "DAL1", "wms", f"T{i}", i, "RECEIPT", 5, T0 + i, raw) for i in (1, 2)]
    moves.append(Movement("SKU-1", "DAL1", "wms", "T3", 3, "PICK", 5, T0 + 3, raw))
    out = project_step("project", op.input("in", flow, TestingSource(moves)), channels=CONFIG.channels,
                       topic_of=CONFIG.topics.availability, version_clock=None)
    oks: list = []
    op.output("oks", out.oks, TestingSink(oks))
    _run(flow, workers)
    shopify = [(o.key, o.value["available"], o.value["previous"], o.value["version"])
               for o in oks if o.topic == "availability.shopify-us"]
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
    from operators.normalise import CodeState
    from operators.sequencing import Sequencer, SequencerState
    from operators.steps import _NormaliseShard, _SequenceShard

    now = 2_000_000_000.0
    gap = SequencerState(stream="wms|DC-ATL|ITM-1", next_seq=1, gap_deadline=now - 100)
    make = lambda st: Sequencer(st, gap_timeout=30, max_buffered=10, max_clock_skew=60,  # noqa: E731
                                stream_key=stream_key)
    shard = _SequenceShard({"wms|DC-ATL|ITM-1": gap}, make, 30, "live", lambda: now)
    assert gap.gap_deadline == now + 30
    assert shard.notify_at() is not None and shard.notify_at().timestamp() == now + 30

    parked = CodeState(parked={"s": []}, parked_since={"s": now - 1000})
    _NormaliseShard({"wms|ITM-1": parked}, CONFIG.locations, 300, "live", lambda: now)
    assert parked.parked_since == {"s": now}
