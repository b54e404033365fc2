"""availability: the ATP fold per (sku, warehouse) and its projection onto channels."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest
from helpers import EVENT_T0, movement, sample_channels
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.availability import (
    Cell,
    Projector,
    SkuState,
    apply_movement,
    channel_available,
)
from operators.records import Reason
from operators.reference import Channel, Channels

CELL_FIELDS = ("on_hand", "on_hold", "reserved", "incoming", "erp_book")


def _sums(cell: Cell) -> tuple[Any, ...]:
    return tuple(getattr(cell, f) for f in CELL_FIELDS)


def _cell(**values: int) -> Cell:
    return Cell(**values)


# -- the contract's table of effects -----------------------------------------------------------

START = {"on_hand": 100, "on_hold": 10, "reserved": 20, "incoming": 30}

ATP_TABLE = [
    # kind, qty, (on_hand, on_hold, reserved, incoming, erp_book)
    ("RECEIPT", 5, (105, 10, 20, 30, None)),
    ("RETURN", 5, (105, 10, 20, 30, None)),
    ("TRANSFER_IN", 5, (105, 10, 20, 30, None)),
    ("SHIP", 5, (95, 10, 20, 30, None)),
    ("TRANSFER_OUT", 5, (95, 10, 20, 30, None)),
    ("ADJUST", 5, (105, 10, 20, 30, None)),
    ("ADJUST", -5, (95, 10, 20, 30, None)),
    ("CYCLE_COUNT", 42, (42, 10, 20, 30, None)),
    ("HOLD", 5, (100, 15, 20, 30, None)),
    ("RELEASE_HOLD", 5, (100, 5, 20, 30, None)),
    ("PICK", 5, (100, 10, 20, 30, None)),
    ("SO_ALLOCATION", 5, (100, 10, 25, 30, None)),
    ("SO_DEALLOCATION", 5, (100, 10, 15, 30, None)),
    ("GOODS_ISSUE", 5, (100, 10, 15, 30, None)),
    ("PO_CONFIRMED", 5, (100, 10, 20, 35, None)),
    ("PO_RECEIVED", 5, (100, 10, 20, 25, None)),
    ("STOCK_SNAPSHOT", 97, (100, 10, 20, 30, 97)),
]


@pytest.mark.parametrize(("kind", "qty", "expected"), ATP_TABLE,
                         ids=[f"{k}{q:+d}" for k, q, _ in ATP_TABLE])
def test_every_row_of_the_atp_table(kind: str, qty: int, expected: tuple[Any, ...]) -> None:
    cell = _cell(**START)

    late = apply_movement(cell, movement(kind, qty, seq=7, event_time=EVENT_T0 + 9))

    assert late is None
    assert _sums(cell) == expected
    assert cell.atp == max(0, expected[0] - expected[1] - expected[2])
    assert cell.as_of == EVENT_T0 + 9


def test_cycle_count_is_absolute_and_counts_held_stock_too() -> None:
    cell = _cell(on_hand=100, on_hold=30, reserved=5)

    apply_movement(cell, movement("CYCLE_COUNT", 40, seq=3))

    assert (cell.on_hand, cell.on_hold, cell.atp) == (40, 30, 5)
    assert cell.count_seq == 3


@pytest.mark.parametrize(
    ("on_hand", "on_hold", "reserved", "atp"),
    [(10, 0, 0, 10), (10, 4, 3, 3), (10, 6, 6, 0), (-5, 0, 0, 0), (0, -3, 0, 3), (5, 0, -2, 7)],
)
def test_atp_is_clamped_at_zero_but_sums_are_not(on_hand: int, on_hold: int, reserved: int,
                                                 atp: int) -> None:
    assert _cell(on_hand=on_hand, on_hold=on_hold, reserved=reserved).atp == atp


def test_internal_sums_stay_unclamped() -> None:
    cell = Cell()

    for m in (movement("SHIP", 5, seq=1), movement("RELEASE_HOLD", 2, seq=2),
              movement("GOODS_ISSUE", 3, seq=1), movement("PO_RECEIVED", 4, seq=2)):
        apply_movement(cell, m)

    assert _sums(cell) == (-5, -2, -3, -4, None)
    assert cell.atp == 0


DELTAS = [
    movement("RECEIPT", 10, seq=1, event_time=EVENT_T0 + 1),
    movement("SHIP", 25, seq=2, event_time=EVENT_T0 + 2),
    movement("HOLD", 4, seq=3, event_time=EVENT_T0 + 3),
    movement("ADJUST", -3, seq=4, event_time=EVENT_T0 + 4),
    movement("SO_ALLOCATION", 6, seq=1, event_time=EVENT_T0 + 5),
    movement("PO_CONFIRMED", 8, seq=2, event_time=EVENT_T0 + 6),
    movement("RELEASE_HOLD", 1, seq=5, event_time=EVENT_T0 + 7),
]


def test_delta_movements_commute() -> None:
    results = set()
    for order in itertools.permutations(DELTAS):
        cell = Cell()
        for m in order:
            assert apply_movement(cell, m) is None
        results.add((_sums(cell), cell.atp, cell.as_of))

    assert results == {((-18, 3, 6, 8, None), 0, EVENT_T0 + 7)}


def test_delta_movements_commute_with_a_positive_atp() -> None:
    ms = [movement("RECEIPT", 50, seq=1), movement("SHIP", 60, seq=2),
          movement("RETURN", 30, seq=3), movement("SO_ALLOCATION", 7, seq=1),
          movement("HOLD", 2, seq=4)]
    results = set()
    for order in itertools.permutations(ms):
        cell = Cell()
        for m in order:
            apply_movement(cell, m)
        results.add((_sums(cell), cell.atp))

    assert results == {((20, 2, 7, 0, None), 11)}


# -- late records ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["RECEIPT", "RETURN", "TRANSFER_IN", "SHIP", "TRANSFER_OUT",
                                  "ADJUST", "CYCLE_COUNT"])
def test_late_on_hand_record_below_an_applied_count_is_superseded(kind: str) -> None:
    cell = Cell()
    apply_movement(cell, movement("CYCLE_COUNT", 40, seq=5, event_time=EVENT_T0 + 5))

    late = apply_movement(cell, movement(kind, 3, seq=4, event_time=EVENT_T0 + 9))

    assert late == f"{kind} #4 is older than the CYCLE_COUNT #5 already applied"
    assert (cell.on_hand, cell.count_seq) == (40, 5)
    assert cell.as_of == EVENT_T0 + 5


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("HOLD", (40, 3)), ("RELEASE_HOLD", (40, -3)), ("PICK", (40, 0))],
)
def test_late_hold_release_and_pick_below_a_count_still_apply(
    kind: str, expected: tuple[int, int]
) -> None:
    cell = Cell()
    apply_movement(cell, movement("CYCLE_COUNT", 40, seq=5))

    late = apply_movement(cell, movement(kind, 3, seq=4))

    assert late is None
    assert (cell.on_hand, cell.on_hold) == expected


def test_late_on_hand_record_above_the_count_applies() -> None:
    cell = Cell()
    apply_movement(cell, movement("CYCLE_COUNT", 40, seq=5))

    assert apply_movement(cell, movement("RECEIPT", 3, seq=6)) is None
    assert cell.on_hand == 43


@pytest.mark.parametrize("kind", ["SO_ALLOCATION", "SO_DEALLOCATION", "GOODS_ISSUE",
                                  "PO_CONFIRMED", "PO_RECEIVED"])
def test_late_erp_records_other_than_snapshots_always_apply(kind: str) -> None:
    cell = Cell()
    apply_movement(cell, movement("STOCK_SNAPSHOT", 50, seq=9))
    apply_movement(cell, movement("CYCLE_COUNT", 40, seq=9))

    assert apply_movement(cell, movement(kind, 3, seq=2)) is None
    assert (cell.reserved, cell.incoming) != (0, 0)


def test_stock_snapshot_sets_erp_book_and_drift() -> None:
    cell = Cell()
    apply_movement(cell, movement("RECEIPT", 30, seq=1))

    assert cell.drift is None
    apply_movement(cell, movement("STOCK_SNAPSHOT", 34, seq=1))

    assert (cell.erp_book, cell.drift, cell.snapshot_seq) == (34, 4, 1)
    assert cell.atp == 30  # erp_book is not part of ATP


def test_older_stock_snapshot_is_superseded() -> None:
    cell = Cell()
    apply_movement(cell, movement("STOCK_SNAPSHOT", 34, seq=5, event_time=EVENT_T0 + 5))

    late = apply_movement(cell, movement("STOCK_SNAPSHOT", 99, seq=3, event_time=EVENT_T0 + 9))
    newer = apply_movement(cell, movement("STOCK_SNAPSHOT", 12, seq=6, event_time=EVENT_T0 + 6))

    assert late == "STOCK_SNAPSHOT #3 is older than #5 already applied"
    assert newer is None
    assert (cell.erp_book, cell.snapshot_seq, cell.as_of) == (12, 6, EVENT_T0 + 6)


def test_late_skipped_cycle_count_is_superseded() -> None:
    cell = Cell()
    apply_movement(cell, movement("RECEIPT", 10, seq=2))  # number 1 was skipped
    apply_movement(cell, movement("SHIP", 4, seq=3))

    late = apply_movement(cell, movement("CYCLE_COUNT", 100, seq=1))

    assert late is not None
    assert cell.on_hand == 6


# -- channel rules ------------------------------------------------------------------------------


def _channel(**rules: Any) -> Channel:
    return Channel(id="c", kind="topic", warehouses=("ATL1",), **rules)


@pytest.mark.parametrize(
    ("rules", "base", "expected"),
    [
        pytest.param({}, 17, (17, 17), id="defaults-pass-through"),
        pytest.param({}, 0, (0, 0), id="zero"),
        pytest.param({"share_pct": 80}, 17, (13, 13), id="share-floors"),
        pytest.param({"share_pct": 33.3}, 10, (3, 3), id="share-33.3"),
        pytest.param({"share_pct": 33.3}, 1000, (333, 333), id="share-exact-decimal"),
        pytest.param({"share_pct": 0}, 500, (0, 0), id="share-zero"),
        pytest.param({"buffer_units": 5}, 17, (17, 12), id="buffer"),
        pytest.param({"buffer_units": 5}, 4, (4, 0), id="buffer-floors-at-zero"),
        pytest.param({"buffer_units": 5}, 5, (5, 0), id="buffer-equal"),
        pytest.param({"max_qty": 10}, 17, (17, 10), id="cap"),
        pytest.param({"max_qty": 0}, 17, (17, 0), id="cap-zero"),
        pytest.param({"min_qty": 3}, 2, (2, 0), id="below-min-is-zero"),
        pytest.param({"min_qty": 3}, 3, (3, 3), id="at-min-stays"),
        pytest.param({"share_pct": 80, "buffer_units": 5, "max_qty": 1000, "min_qty": 3},
                     10, (8, 3), id="amazon-like-at-min"),
        pytest.param({"share_pct": 80, "buffer_units": 5, "max_qty": 1000, "min_qty": 3},
                     9, (7, 0), id="amazon-like-below-min"),
        pytest.param({"share_pct": 80, "buffer_units": 5, "max_qty": 1000, "min_qty": 3},
                     2000, (1600, 1000), id="amazon-like-capped"),
        pytest.param({"max_qty": 5, "min_qty": 8}, 100, (100, 0), id="cap-below-min"),
    ],
)
def test_channel_available_formula(rules: dict[str, Any], base: int,
                                   expected: tuple[int, int]) -> None:
    assert channel_available(_channel(**rules), base) == expected


# channels.yaml: shopify-us (ATL1, DAL1; per location; buffer 2; cap 500),
# amazon-us (ATL1, DAL1, RNO1; 80 %; buffer 5; cap 1000; min 3),
# b2b-portal (ATL1, DAL1, RNO1; cap 100000; include_incoming).
SAMPLE_RULES = [
    ("shopify-us", 0, 0), ("shopify-us", 2, 0), ("shopify-us", 3, 1), ("shopify-us", 100, 98),
    ("shopify-us", 502, 500), ("shopify-us", 10_000, 500),
    ("amazon-us", 0, 0), ("amazon-us", 9, 0), ("amazon-us", 10, 3), ("amazon-us", 11, 3),
    ("amazon-us", 12, 4), ("amazon-us", 100, 75), ("amazon-us", 1257, 1000),
    ("b2b-portal", 0, 0), ("b2b-portal", 7, 7), ("b2b-portal", 100_001, 100_000),
]


@pytest.mark.parametrize(("channel", "base", "available"), SAMPLE_RULES)
def test_channel_available_for_each_rule_of_the_sample_channels(
    channel: str, base: int, available: int
) -> None:
    assert channel_available(sample_channels().by_id[channel], base)[1] == available


# -- Projector ----------------------------------------------------------------------------------


def _projector(state: SkuState | None = None, clock: Any = None, *, resumed: bool = False,
               channels: Channels | None = None) -> Projector:
    return Projector(state or SkuState(), channels or sample_channels(), clock, resumed=resumed)


def _emitted(records: list[dict[str, Any]]) -> list[tuple[str, str | None, int, int | None, int]]:
    return [(r["channel"], r["location"], r["available"], r["previous"], r["version"])
            for r in records]


def test_first_movement_emits_every_key_once_even_at_zero() -> None:
    p = _projector()

    out = p.on_movement(movement("PICK", 5, seq=1, warehouse="ATL1", source_id="W1"))

    assert out.late is None and out.duplicate is False
    assert _emitted(out.records) == [
        ("shopify-us", "ATL1", 0, None, 1),
        ("amazon-us", None, 0, None, 1),
        ("b2b-portal", None, 0, None, 1),
    ]
    assert p.state.sku == "SKU-1"
    assert set(p.state.cells) == {"ATL1"}


def test_first_record_carries_the_contract_fields_and_its_working() -> None:
    p = _projector()

    out = p.on_movement(movement("RECEIPT", 12, seq=1, warehouse="DAL1", source_id="W9",
                                 event_time=EVENT_T0 + 3))

    shopify = out.records[0]
    assert shopify == {
        "channel": "shopify-us", "sku": "SKU-1", "location": "DAL1", "available": 10,
        "previous": None, "version": 1, "as_of": EVENT_T0 + 3, "source": "wms",
        "source_id": "W9",
        "warehouses": [{"warehouse": "DAL1", "on_hand": 12, "on_hold": 0, "reserved": 0,
                        "incoming": 0, "atp": 12, "erp_book": None, "drift": None}],
        "base": 12, "share_pct": 100.0, "after_share": 12, "buffer_units": 2, "max_qty": 500,
        "min_qty": 0, "include_incoming": False,
    }


def test_only_changes_are_emitted_with_previous_and_version() -> None:
    p = _projector()
    p.on_movement(movement("RECEIPT", 20, seq=1))  # shopify 18, amazon 11, b2b 20

    unchanged = p.on_movement(movement("PICK", 1, seq=2))
    held = p.on_movement(movement("HOLD", 1, seq=3))  # shopify 17, amazon 10, b2b 19

    assert unchanged.records == []
    assert _emitted(held.records) == [
        ("shopify-us", "ATL1", 17, 18, 2),
        ("amazon-us", None, 10, 11, 2),
        ("b2b-portal", None, 19, 20, 2),
    ]


def test_a_change_seen_by_one_channel_only_emits_that_channel() -> None:
    p = _projector()
    p.on_movement(movement("RECEIPT", 20, seq=1))

    out = p.on_movement(movement("PO_CONFIRMED", 50, seq=1))

    assert _emitted(out.records) == [("b2b-portal", None, 70, 20, 2)]


def test_include_incoming_adds_only_positive_incoming() -> None:
    p = _projector()
    p.on_movement(movement("RECEIPT", 20, seq=1))

    below_zero = p.on_movement(movement("PO_RECEIVED", 5, seq=1))  # incoming -5 adds 0
    back = p.on_movement(movement("PO_CONFIRMED", 7, seq=2))  # incoming 2

    assert below_zero.records == []
    assert _emitted(back.records) == [("b2b-portal", None, 22, 20, 2)]


def test_per_location_keys_and_summed_keys() -> None:
    p = _projector()
    p.on_movement(movement("RECEIPT", 10, seq=1, warehouse="ATL1"))

    dal = p.on_movement(movement("RECEIPT", 30, seq=1, warehouse="DAL1"))
    rno = p.on_movement(movement("RECEIPT", 5, seq=1, warehouse="RNO1"))

    assert _emitted(dal.records) == [
        ("shopify-us", "DAL1", 28, None, 1),  # a new key: its own warehouse only
        ("amazon-us", None, 27, 3, 2),  # floor(40 * 0.8) - 5
        ("b2b-portal", None, 40, 10, 2),
    ]
    assert _emitted(rno.records) == [("amazon-us", None, 31, 27, 3),
                                     ("b2b-portal", None, 45, 40, 3)]
    assert set(p.state.emitted) == {("shopify-us", "ATL1"), ("shopify-us", "DAL1"),
                                    ("amazon-us", None), ("b2b-portal", None)}


def test_warehouse_in_no_channel_emits_nothing() -> None:
    p = _projector()

    out = p.on_movement(movement("RECEIPT", 10, seq=1, warehouse="XYZ1"))

    assert out.records == []
    assert p.state.cells["XYZ1"].on_hand == 10


def test_stock_snapshot_creates_the_cell_and_emits_once() -> None:
    p = _projector()

    out = p.on_movement(movement("STOCK_SNAPSHOT", 40, seq=1, warehouse="RNO1"))
    again = p.on_movement(movement("STOCK_SNAPSHOT", 45, seq=2, warehouse="RNO1"))

    assert _emitted(out.records) == [("amazon-us", None, 0, None, 1),
                                     ("b2b-portal", None, 0, None, 1)]
    assert out.records[0]["warehouses"][0]["drift"] == 40
    assert again.records == []


def test_as_of_is_the_newest_event_time_over_the_keys_cells() -> None:
    p = _projector()
    p.on_movement(movement("RECEIPT", 10, seq=1, warehouse="ATL1", event_time=EVENT_T0 + 500))

    out = p.on_movement(movement("RECEIPT", 10, seq=1, warehouse="DAL1", event_time=EVENT_T0 + 100))

    by_key = {(r["channel"], r["location"]): r["as_of"] for r in out.records}
    assert by_key == {
        ("shopify-us", "DAL1"): EVENT_T0 + 100,
        ("amazon-us", None): EVENT_T0 + 500,
        ("b2b-portal", None): EVENT_T0 + 500,
    }


def test_late_superseded_movement_is_a_dead_letter_and_changes_nothing() -> None:
    p = _projector()
    p.on_movement(movement("CYCLE_COUNT", 40, seq=5))

    out = p.on_movement(movement("RECEIPT", 3, seq=4, source_id="W4"))

    assert out.records == []
    assert out.late is not None
    assert (out.late.reason, out.late.source_id) == (Reason.LATE_SUPERSEDED, "W4")
    assert out.late.detail == "RECEIPT #4 is older than the CYCLE_COUNT #5 already applied"
    assert p.state.cells["ATL1"].on_hand == 40


# -- versions -----------------------------------------------------------------------------------


def test_replay_versions_count_from_one_per_key() -> None:
    p = _projector()

    versions = [[r["version"] for r in p.on_movement(movement("RECEIPT", 10, seq=n)).records]
                for n in (1, 2, 3)]

    assert versions == [[1, 1, 1], [2, 2, 2], [3, 3, 3]]


def test_live_versions_are_a_hybrid_logical_clock() -> None:
    wall = [EVENT_T0 + 123]
    p = _projector(clock=lambda: wall[0])

    first = p.on_movement(movement("RECEIPT", 10, seq=1, warehouse="DAL1"))
    same_ms = p.on_movement(movement("RECEIPT", 10, seq=2, warehouse="DAL1"))
    wall[0] = EVENT_T0 - 60_000  # the wall clock stepped back
    back = p.on_movement(movement("RECEIPT", 10, seq=3, warehouse="DAL1"))
    wall[0] = EVENT_T0 + 9_000
    ahead = p.on_movement(movement("RECEIPT", 10, seq=4, warehouse="DAL1"))

    hlc = (EVENT_T0 + 123) * 1000
    assert [r["version"] for r in first.records] == [hlc, hlc, hlc]
    assert [r["version"] for r in same_ms.records] == [hlc + 1] * 3
    assert [r["version"] for r in back.records] == [hlc + 2] * 3
    assert [r["version"] for r in ahead.records] == [(EVENT_T0 + 9_000) * 1000] * 3


def test_a_batch_reads_the_version_clock_once_and_versions_still_increase() -> None:
    def clock() -> int:
        raise AssertionError("the caller's reading must be used")

    p = _projector(clock=clock)
    now = EVENT_T0 + 5
    first = p.on_movement(movement("RECEIPT", 10, seq=1, warehouse="DAL1"), now)
    second = p.on_movement(movement("RECEIPT", 10, seq=2, warehouse="DAL1"), now)
    assert [r["version"] for r in first.records] == [now * 1000] * 3
    assert [r["version"] for r in second.records] == [now * 1000 + 1] * 3


def _run_then_resume(clock: Any = None) -> tuple[Projector, SkuState]:
    before = _projector(clock=clock)
    before.on_movement(movement("RECEIPT", 20, seq=1, warehouse="ATL1"))
    before.on_movement(movement("RECEIPT", 20, seq=1, warehouse="DAL1"))
    snapshot = copy.deepcopy(before.state)
    return _projector(copy.deepcopy(snapshot), clock=clock, resumed=True), snapshot


def test_after_resume_the_first_result_per_key_is_emitted_even_if_unchanged() -> None:
    p, snapshot = _run_then_resume()
    assert snapshot.emitted == {("shopify-us", "ATL1"): (18, 1), ("shopify-us", "DAL1"): (18, 1),
                                ("amazon-us", None): (27, 2), ("b2b-portal", None): (40, 2)}

    first = p.on_movement(movement("PICK", 1, seq=2, warehouse="ATL1"))
    second = p.on_movement(movement("PICK", 1, seq=3, warehouse="ATL1"))
    other = p.on_movement(movement("PICK", 1, seq=2, warehouse="DAL1"))
    after = p.on_movement(movement("PICK", 1, seq=3, warehouse="DAL1"))

    assert _emitted(first.records) == [
        ("shopify-us", "ATL1", 18, 18, 2), ("amazon-us", None, 27, 27, 3),
        ("b2b-portal", None, 40, 40, 3)]
    assert second.records == []
    assert _emitted(other.records) == [("shopify-us", "DAL1", 18, 18, 2)]
    assert after.records == []


def test_without_resume_an_unchanged_result_is_not_emitted() -> None:
    p, snapshot = _run_then_resume()
    fresh = _projector(copy.deepcopy(snapshot), resumed=False)

    assert fresh.on_movement(movement("PICK", 1, seq=2)).records == []


def test_after_resume_live_versions_stay_above_the_restored_ones() -> None:
    p, snapshot = _run_then_resume(clock=lambda: EVENT_T0)
    restored = {key: version for key, (_, version) in snapshot.emitted.items()}
    assert restored[("amazon-us", None)] == EVENT_T0 * 1000 + 1

    out = p.on_movement(movement("PICK", 1, seq=2))

    assert [(r["channel"], r["version"]) for r in out.records] == [
        ("shopify-us", EVENT_T0 * 1000 + 1),
        ("amazon-us", EVENT_T0 * 1000 + 2),
        ("b2b-portal", EVENT_T0 * 1000 + 2),
    ]
    assert all(r["version"] == restored[(r["channel"], r["location"])] + 1 for r in out.records)


# -- replayed dead letters ----------------------------------------------------------------------


def test_replayed_dead_letter_applies_at_most_once() -> None:
    p = _projector()
    p.on_movement(movement("RECEIPT", 10, seq=1))

    first = p.on_movement(movement("RECEIPT", 5, seq=7, source_id="R7", replayed=True))
    again = p.on_movement(movement("RECEIPT", 5, seq=7, source_id="R7", replayed=True))

    assert first.duplicate is False
    assert [r["available"] for r in first.records] == [13, 7, 15]
    assert again == (([], None, True))
    assert p.state.cells["ATL1"].on_hand == 15
    assert p.state.replayed_ids == {"R7"}


def test_replayed_dead_letter_follows_the_late_record_rules() -> None:
    p = _projector()
    p.on_movement(movement("CYCLE_COUNT", 40, seq=5))

    superseded = p.on_movement(movement("SHIP", 5, seq=3, source_id="R3", replayed=True))
    hold = p.on_movement(movement("HOLD", 5, seq=2, source_id="R2", replayed=True))

    assert superseded.late is not None and superseded.late.reason == Reason.LATE_SUPERSEDED
    assert hold.late is None
    assert p.state.cells["ATL1"].on_hold == 5


def test_non_replayed_movement_with_a_replayed_id_still_applies() -> None:
    p = _projector()
    p.on_movement(movement("RECEIPT", 5, seq=7, source_id="R7", replayed=True))

    out = p.on_movement(movement("RECEIPT", 5, seq=8, source_id="R7"))

    assert out.duplicate is False
    assert p.state.cells["ATL1"].on_hand == 10


# -- the projector's inlined formulas -----------------------------------------------------------


_WHS = ("ATL1", "DAL1", "RNO1")


@settings(max_examples=300, deadline=None)
@given(
    rules=st.fixed_dictionaries({
        "share_pct": st.sampled_from([0, 1, 33.3, 50, 80, 99.9, 100]),
        "buffer_units": st.integers(0, 20),
        "max_qty": st.integers(0, 200),
        "min_qty": st.integers(0, 30),
        "include_incoming": st.booleans(),
        "per_location": st.booleans(),
    }),
    moves=st.lists(st.tuples(
        st.sampled_from(["RECEIPT", "PICK", "SHIP", "ADJUST", "CYCLE_COUNT", "HOLD",
                         "RELEASE_HOLD", "SO_ALLOCATION", "SO_DEALLOCATION", "GOODS_ISSUE",
                         "PO_CONFIRMED", "PO_RECEIVED", "STOCK_SNAPSHOT"]),
        st.integers(-50, 150), st.sampled_from(_WHS)), min_size=1, max_size=12),
)
def test_projector_records_follow_channel_available_and_the_cells(
    rules: dict[str, Any], moves: list[tuple[str, int, str]]
) -> None:
    """The projector inlines `channel_available` and `Cell.atp`/`drift` (its hot path), shares
    one movement's warehouse blocks between records and skips keys a movement cannot change:
    after every movement, exactly the keys whose formula value differs from the last one
    emitted (or that never emitted) get a record, carrying what the plain formulas give."""
    channels = (
        Channel(id="c", kind="topic", warehouses=_WHS, **rules),
        Channel(id="all", kind="topic", warehouses=_WHS, include_incoming=True, share_pct=50),
        Channel(id="two", kind="topic", warehouses=_WHS[:2], per_location=True, buffer_units=1),
    )
    by_id = {c.id: c for c in channels}
    p = _projector(channels=Channels(channels=channels))
    last: dict[tuple[str, str | None], int] = {}
    for n, (kind, qty, wh) in enumerate(moves, 1):
        at = EVENT_T0 + (n * 7919) % 13 * 1000  # event times out of order
        result = p.on_movement(movement(kind, qty, seq=n, warehouse=wh, event_time=at))
        if result.late is not None:
            continue
        expected = {}
        for c in channels:
            if wh not in c.warehouses:
                continue
            key = (c.id, wh if c.per_location else None)
            cells = [p.state.cells[w] for w in ((wh,) if c.per_location else c.warehouses)
                     if w in p.state.cells]
            base = sum(x.atp + (max(0, x.incoming) if c.include_incoming else 0) for x in cells)
            available = channel_available(c, base)[1]
            if last.get(key) != available:
                expected[key] = available
        assert {(r["channel"], r["location"]): r["available"] for r in result.records} == expected
        last.update(expected)
        for r in result.records:
            channel = by_id[r["channel"]]
            whs = (r["location"],) if r["location"] else channel.warehouses
            cells = {w: p.state.cells[w] for w in whs if w in p.state.cells}
            base = sum(c.atp + (max(0, c.incoming) if channel.include_incoming else 0)
                       for c in cells.values())
            assert (r["base"], r["after_share"], r["available"]) == (
                base, *channel_available(channel, base))
            assert r["warehouses"] == [{
                "warehouse": w, "on_hand": c.on_hand, "on_hold": c.on_hold,
                "reserved": c.reserved, "incoming": c.incoming, "atp": c.atp,
                "erp_book": c.erp_book, "drift": c.drift} for w, c in cells.items()]
            assert r["as_of"] == max(c.as_of for c in cells.values())
