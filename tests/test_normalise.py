"""normalise: units, quantity rules, locations, parking behind an unknown item, item routing."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from helpers import EVENT_T0, NOW, erp_decoded, item_master, sample_locations, wms_decoded

from operators.decode import Decoded
from operators.normalise import (
    MAX_QTY,
    CodeState,
    ItemRouter,
    Movement,
    Normaliser,
    Unmap,
    code_key,
    stream_key,
    to_movement,
)
from operators.records import DeadLetter, Reason

WMS_KINDS = ["RECEIPT", "PICK", "SHIP", "ADJUST", "CYCLE_COUNT", "TRANSFER_OUT", "TRANSFER_IN",
             "HOLD", "RELEASE_HOLD", "RETURN"]
ERP_KINDS = ["SO_ALLOCATION", "SO_DEALLOCATION", "GOODS_ISSUE", "PO_CONFIRMED", "PO_RECEIVED",
             "STOCK_SNAPSHOT"]
TIMEOUT = 300.0


def _dead(result: object, reason: str, source_id: str) -> DeadLetter:
    assert isinstance(result, DeadLetter), result
    assert (result.reason, result.source_id) == (reason, source_id)
    return result


# -- to_movement: units -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("qty", "uom", "base"),
    [(7, "EA", 7), (10, "CS", 120), (2, "PL", 960), (0, "CS", 0)],
)
def test_wms_quantity_converts_to_base_units(qty: int, uom: str, base: int) -> None:
    d = wms_decoded(qty=qty, uom=uom, seq=3, event_time=EVENT_T0 + 5)

    m = to_movement(d, "ATL1", item_master())

    assert m == Movement("SKU-1", "ATL1", "wms", "T1", 3, "RECEIPT", base, EVENT_T0 + 5, d.raw)


@pytest.mark.parametrize(
    ("quantity", "unit", "base"),
    [("0.250", "PL", 120), ("12.000", "CS", 144), ("5.000", "EA", 5), ("0.500", "CS", 6),
     ("0.000", "EA", 0), ("1.125", "PL", 540)],
)
def test_erp_decimal_quantity_converts_to_base_units(quantity: str, unit: str, base: int) -> None:
    d = erp_decoded(quantity=quantity, unit=unit, change_seq=4, doc_type="PO_CONFIRMED")

    m = to_movement(d, "DAL1", item_master())

    assert m == Movement("SKU-1", "DAL1", "erp", "D1", 4, "PO_CONFIRMED", base, EVENT_T0, d.raw)
    assert type(m.qty) is int


@pytest.mark.parametrize(
    ("quantity", "unit"),
    [("1.500", "EA"), ("0.100", "EA"), ("0.001", "CS"), ("0.001", "PL"), ("2.010", "CS")],
)
def test_erp_quantity_that_is_not_whole_base_units_is_fractional(quantity: str, unit: str) -> None:
    d = erp_decoded(quantity=quantity, unit=unit)

    dl = _dead(to_movement(d, "ATL1", item_master()), Reason.FRACTIONAL_QUANTITY, "D1")

    assert dl.value == d.raw.value and dl.topic == d.raw.topic
    assert dl.detail.startswith(f"quantity {quantity} {unit} x ")
    assert dl.detail.endswith("is not a whole number of EA")


# -- to_movement: quantity rules ---------------------------------------------------------------


@pytest.mark.parametrize("kind", [k for k in WMS_KINDS if k != "ADJUST"])
def test_negative_wms_quantity_is_invalid_except_adjust(kind: str) -> None:
    d = wms_decoded(txn_type=kind, qty=-1)

    dl = _dead(to_movement(d, "ATL1", item_master()), Reason.INVALID_QUANTITY, "T1")

    assert dl.detail == f"negative quantity -1 is not allowed for {kind}"


def test_negative_adjust_is_a_signed_movement() -> None:
    d = wms_decoded(txn_type="ADJUST", qty=-2, uom="CS")

    m = to_movement(d, "ATL1", item_master())

    assert isinstance(m, Movement)
    assert (m.kind, m.qty) == ("ADJUST", -24)


@pytest.mark.parametrize("kind", ERP_KINDS)
def test_negative_erp_quantity_is_invalid(kind: str) -> None:
    d = erp_decoded(doc_type=kind, quantity="-3.000")

    dl = _dead(to_movement(d, "ATL1", item_master()), Reason.INVALID_QUANTITY, "D1")

    assert dl.detail == f"negative quantity -3.000 is not allowed for {kind}"


@pytest.mark.parametrize(
    ("kind", "qty", "uom", "ok"),
    [
        pytest.param("RECEIPT", MAX_QTY, "EA", True, id="exactly-1e9"),
        pytest.param("RECEIPT", MAX_QTY + 1, "EA", False, id="1e9-plus-1"),
        pytest.param("RECEIPT", 2_083_333, "PL", True, id="PL-just-under"),
        pytest.param("RECEIPT", 2_083_334, "PL", False, id="PL-over-after-conversion"),
        pytest.param("ADJUST", -MAX_QTY, "EA", True, id="adjust-minus-1e9"),
        pytest.param("ADJUST", -MAX_QTY - 1, "EA", False, id="adjust-under-minus-1e9"),
        pytest.param("CYCLE_COUNT", 83_333_334, "CS", False, id="count-over-after-conversion"),
    ],
)
def test_quantity_over_1e9_base_units_is_invalid(kind: str, qty: int, uom: str, ok: bool) -> None:
    d = wms_decoded(txn_type=kind, qty=qty, uom=uom)

    result = to_movement(d, "ATL1", item_master())

    base = qty * {"EA": 1, "CS": 12, "PL": 480}[uom]
    if ok:
        assert isinstance(result, Movement) and result.qty == base
    else:
        dl = _dead(result, Reason.INVALID_QUANTITY, "T1")
        assert dl.detail == f"quantity {base} EA is over the limit of {MAX_QTY}"


def test_erp_quantity_over_1e9_base_units_is_invalid() -> None:
    d = erp_decoded(quantity="2083334.000", unit="PL")

    dl = _dead(to_movement(d, "ATL1", item_master()), Reason.INVALID_QUANTITY, "D1")

    assert dl.detail == f"quantity 1000000320 EA is over the limit of {MAX_QTY}"


# -- to_movement: units and items that are not known -----------------------------------------


@pytest.mark.parametrize(
    ("uom", "factors"),
    [
        pytest.param("BOX", {"EA": 1, "CS": 12}, id="not-listed"),
        pytest.param("cs", {"EA": 1, "CS": 12}, id="case-counts"),
        pytest.param("EA", {"CS": 12}, id="base-unit-not-listed"),
    ],
)
def test_unit_not_in_uom_factors_is_unknown(uom: str, factors: dict[str, int]) -> None:
    d = wms_decoded(uom=uom)

    dl = _dead(to_movement(d, "ATL1", item_master(uom_factors=factors)), Reason.UNKNOWN_UOM, "T1")

    units = ", ".join(sorted(factors))
    assert dl.detail == f"unit {uom!r} is not in uom_factors of sku SKU-1 ({units})"


def test_retired_sku_is_unknown_item_with_retired_detail() -> None:
    d = wms_decoded()

    dl = _dead(to_movement(d, "ATL1", item_master(active=False)), Reason.UNKNOWN_ITEM, "T1")

    assert "retired" in dl.detail
    assert dl.detail == "sku SKU-1 is retired"


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        pytest.param(lambda: wms_decoded(uom="BOX", qty=-1), Reason.UNKNOWN_UOM,
                     id="unknown-uom-before-invalid-quantity"),
        pytest.param(lambda: erp_decoded(unit="BOX", quantity="0.500"), Reason.UNKNOWN_UOM,
                     id="unknown-uom-before-fractional"),
        pytest.param(lambda: erp_decoded(quantity="-0.500"), Reason.FRACTIONAL_QUANTITY,
                     id="fractional-before-invalid-quantity"),
    ],
)
def test_one_reason_per_dead_letter_in_the_contract_order(
    make: Callable[[], Decoded], reason: str
) -> None:
    d = make()

    result = to_movement(d, "ATL1", item_master())

    assert isinstance(result, DeadLetter) and result.reason == reason


def test_retired_takes_precedence_over_unit_and_quantity() -> None:
    d = wms_decoded(uom="BOX", qty=-1)

    result = to_movement(d, "ATL1", item_master(active=False))

    assert isinstance(result, DeadLetter) and result.reason == Reason.UNKNOWN_ITEM


# -- Normaliser: locations --------------------------------------------------------------------


def _normaliser(item: object = None) -> Normaliser:
    return Normaliser(CodeState(item=item), sample_locations(), TIMEOUT)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("d", "warehouse"),
    [
        pytest.param(wms_decoded(facility="DC-ATL"), "ATL1", id="wms-atl"),
        pytest.param(wms_decoded(facility="DC-DAL"), "DAL1", id="wms-dal"),
        pytest.param(erp_decoded(plant="3000"), "RNO1", id="erp-rno"),
        pytest.param(erp_decoded(plant="2000"), "DAL1", id="erp-dal"),
    ],
)
def test_known_location_maps_to_its_warehouse(d: Decoded, warehouse: str) -> None:
    out = _normaliser(item_master()).on_record(d, d.stream, NOW)

    assert len(out) == 1 and isinstance(out[0], Movement)
    assert out[0].warehouse == warehouse


@pytest.mark.parametrize(
    ("d", "detail"),
    [
        pytest.param(wms_decoded(facility="dc-atl"), "facility 'dc-atl' is not in locations",
                     id="case-counts"),
        pytest.param(wms_decoded(facility="DC-ATL "), "facility 'DC-ATL ' is not in locations",
                     id="trailing-space"),
        pytest.param(wms_decoded(facility="DC-XYZ"), "facility 'DC-XYZ' is not in locations",
                     id="unknown-facility"),
        pytest.param(erp_decoded(plant="01000"), "plant '01000' is not in locations",
                     id="leading-zero-counts"),
        pytest.param(erp_decoded(plant="100"), "plant '100' is not in locations",
                     id="missing-zero"),
        pytest.param(erp_decoded(plant="DC-ATL"), "plant 'DC-ATL' is not in locations",
                     id="facility-code-is-not-a-plant"),
    ],
)
@pytest.mark.parametrize("item_known", [True, False], ids=["item-known", "item-unknown"])
def test_location_must_match_exactly(d: Decoded, detail: str, item_known: bool) -> None:
    norm = _normaliser(item_master() if item_known else None)

    out = norm.on_record(d, d.stream, NOW)

    assert len(out) == 1
    dl = _dead(out[0], Reason.UNKNOWN_LOCATION, d.rec.record_id)
    assert dl.detail == detail
    assert norm.parked_count == 0


# -- Normaliser: parking behind an unknown item ------------------------------------------------


def _wms(seq: int, facility: str = "DC-ATL") -> Decoded:
    return wms_decoded(txn_id=f"T{seq}", seq=seq, facility=facility, offset=seq)


def test_stream_parks_while_item_unknown_and_resumes_in_order() -> None:
    norm = _normaliser()

    parked = [norm.on_record(d, d.stream, NOW + i) for i, d in enumerate([_wms(1), _wms(2)])]
    resumed = norm.on_item(item_master())
    after = norm.on_record(_wms(3), "wms|DC-ATL|ITM-1", NOW + 10)

    assert parked == [[], []]
    assert [(m.source_id, m.sku, m.warehouse) for m in resumed] == [
        ("T1", "SKU-1", "ATL1"), ("T2", "SKU-1", "ATL1")]
    assert all(isinstance(m, Movement) for m in resumed)
    assert [m.source_id for m in after] == ["T3"]
    assert norm.parked_count == 0
    assert norm.next_deadline() is None


def test_every_stream_parked_behind_the_code_resumes() -> None:
    norm = _normaliser()
    for d in (_wms(1, "DC-ATL"), _wms(1, "DC-DAL"), _wms(2, "DC-ATL")):
        norm.on_record(d, d.stream, NOW)

    resumed = norm.on_item(item_master())

    assert [(m.warehouse, m.seq) for m in resumed] == [("ATL1", 1), ("ATL1", 2), ("DAL1", 1)]


def test_parked_record_resumes_to_a_dead_letter_if_it_breaks_a_rule() -> None:
    norm = _normaliser()
    for d in (_wms(1), wms_decoded(txn_id="T2", seq=2, uom="BOX")):
        norm.on_record(d, d.stream, NOW)

    resumed = norm.on_item(item_master())

    assert isinstance(resumed[0], Movement)
    _dead(resumed[1], Reason.UNKNOWN_UOM, "T2")


def test_parked_stream_of_a_retired_item_resumes_as_unknown_item() -> None:
    norm = _normaliser()
    d = _wms(1)
    norm.on_record(d, d.stream, NOW)

    resumed = norm.on_item(item_master(active=False))

    assert len(resumed) == 1
    assert _dead(resumed[0], Reason.UNKNOWN_ITEM, "T1").detail == "sku SKU-1 is retired"


def test_parked_stream_expires_after_timeout_from_its_first_record_not_before() -> None:
    norm = _normaliser()
    norm.on_record(_wms(1), "wms|DC-ATL|ITM-1", 100.0)
    norm.on_record(_wms(2), "wms|DC-ATL|ITM-1", 250.0)

    assert norm.next_deadline() == 400.0
    early = norm.expire(399.999)
    due = norm.expire(400.0)

    assert early == []
    assert [(dl.reason, dl.source_id, dl.offset) for dl in due] == [
        (Reason.UNKNOWN_ITEM, "T1", 1), (Reason.UNKNOWN_ITEM, "T2", 2)]
    assert [dl.detail for dl in due] == ["item 'ITM-1' unknown to the item master after 300s"] * 2
    assert norm.parked_count == 0
    assert norm.next_deadline() is None
    assert norm.state.parked_since == {}


def test_each_parked_stream_keeps_its_own_deadline() -> None:
    norm = _normaliser()
    norm.on_record(_wms(1, "DC-ATL"), "wms|DC-ATL|ITM-1", 100.0)
    norm.on_record(_wms(1, "DC-DAL"), "wms|DC-DAL|ITM-1", 250.0)

    first = norm.expire(400.0)
    assert norm.next_deadline() == 550.0
    second = norm.expire(550.0)

    assert [dl.key for dl in first] == ["DC-ATL|ITM-1"]
    assert [(dl.reason, dl.source_id) for dl in second] == [(Reason.UNKNOWN_ITEM, "T1")]
    assert norm.parked_count == 0


def test_expire_none_settles_every_parked_stream_at_end_of_replay() -> None:
    norm = _normaliser()
    e = erp_decoded(material="0001", doc_id="D7")
    norm.on_record(_wms(1), "wms|DC-ATL|ITM-1", NOW)
    norm.on_record(e, e.stream, NOW + 1)
    norm.on_record(_wms(2), "wms|DC-ATL|ITM-1", NOW + 2)

    out = norm.expire(None)

    assert [(dl.reason, dl.source_id) for dl in out] == [
        (Reason.UNKNOWN_ITEM, "T1"), (Reason.UNKNOWN_ITEM, "T2"), (Reason.UNKNOWN_ITEM, "D7")]
    assert [dl.detail for dl in out] == [
        "item 'ITM-1' unknown to the item master at end of input",
        "item 'ITM-1' unknown to the item master at end of input",
        "item '0001' unknown to the item master at end of input",
    ]
    assert norm.parked_count == 0


def test_expire_leaves_a_known_item_alone() -> None:
    norm = _normaliser(item_master())
    norm.on_record(_wms(1), "wms|DC-ATL|ITM-1", NOW)

    assert norm.expire(None) == []
    assert norm.next_deadline() is None


def test_unmap_forgets_the_item_and_later_records_park() -> None:
    norm = _normaliser(item_master())

    other = norm.on_item(Unmap("SKU-OTHER"))
    still = norm.on_record(_wms(1), "wms|DC-ATL|ITM-1", NOW)
    gone = norm.on_item(Unmap("SKU-1"))
    parked = norm.on_record(_wms(2), "wms|DC-ATL|ITM-1", NOW)

    assert (other, gone, parked) == ([], [], [])
    assert [m.source_id for m in still] == ["T1"]
    assert norm.state.item is None
    assert norm.parked_count == 1


def test_changed_factor_applies_to_records_processed_after_it() -> None:
    norm = _normaliser(item_master(uom_factors={"EA": 1, "CS": 12}))
    before = norm.on_record(wms_decoded(txn_id="T1", seq=1, qty=1, uom="CS"), "s", NOW)

    norm.on_item(item_master(uom_factors={"EA": 1, "CS": 10}))
    after = norm.on_record(wms_decoded(txn_id="T2", seq=2, qty=1, uom="CS"), "s", NOW)

    assert [m.qty for m in before + after] == [12, 10]


# -- ItemRouter and keys ----------------------------------------------------------------------


def test_item_router_sends_a_first_item_to_both_code_keys() -> None:
    router = ItemRouter(None)
    item = item_master()

    assert router.on_item(item) == [("wms|ITM-1", item), ("erp|0001", item)]
    assert router.last is item


def test_item_router_sends_no_unmap_when_codes_stay() -> None:
    router = ItemRouter(item_master())
    item = item_master(uom_factors={"EA": 1})

    assert router.on_item(item) == [("wms|ITM-1", item), ("erp|0001", item)]


@pytest.mark.parametrize(
    ("changes", "unmapped"),
    [
        ({"wms_item": "ITM-2"}, ["wms|ITM-1"]),
        ({"erp_material": "0002"}, ["erp|0001"]),
        ({"wms_item": "ITM-2", "erp_material": "0002"}, ["wms|ITM-1", "erp|0001"]),
    ],
)
def test_item_router_unmaps_a_code_the_item_no_longer_uses(
    changes: dict[str, str], unmapped: list[str]
) -> None:
    router = ItemRouter(item_master())
    item = item_master(**changes)

    out = router.on_item(item)

    assert out == [*[(k, Unmap("SKU-1")) for k in unmapped],
                   (f"wms|{item.wms_item}", item), (f"erp|{item.erp_material}", item)]
    assert router.last is item


def test_stream_and_code_keys_use_the_sources_own_codes() -> None:
    w = wms_decoded(facility="DC-DAL", item="ITM-9")
    e = erp_decoded(plant="2000", material="0009")

    assert (stream_key(w.rec), code_key(w.rec)) == ("wms|DC-DAL|ITM-9", "wms|ITM-9")
    assert (stream_key(e.rec), code_key(e.rec)) == ("erp|2000|0009", "erp|0009")
