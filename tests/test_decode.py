"""decode: raw bytes to validated upstream records, or an UNDECODABLE dead letter."""

from __future__ import annotations

import base64
import copy
import io
from typing import Any

import fastavro
import pytest
from helpers import (
    avro_bytes,
    carrier_scan_value,
    erp_doc_value,
    fulfillment_event_value,
    item_master_value,
    raw_record,
    wms_txn_value,
)

from operators.decode import Decoded, decode, digest
from operators.records import DeadLetter, Reason
from schemas import codec, from_json, to_json

VALID = [
    pytest.param("WmsInventoryTransaction", wms_txn_value(), "T1", id="wms"),
    pytest.param("WmsInventoryTransaction", wms_txn_value(txn_type="ADJUST", qty=-4,
                                                          order_ref="ORD-9"), "T1",
                 id="wms-adjust-negative"),
    pytest.param("ErpInventoryDocument", erp_doc_value(quantity="0.250", unit="PL",
                                                       sales_order="SO-1"), "D1", id="erp"),
    pytest.param("ItemMaster", item_master_value(), None, id="item-master"),
    pytest.param("ItemMaster", item_master_value(active=False), None, id="item-master-retired"),
    pytest.param("WmsFulfillmentEvent", fulfillment_event_value(), "F1", id="fulfillment"),
    pytest.param("WmsFulfillmentEvent",
                 fulfillment_event_value(status="RELEASED", shipment_id=None, carrier=None,
                                         tracking_number=None, lines=[]), "F1",
                 id="fulfillment-no-lines"),
    pytest.param("CarrierTrackingEvent", carrier_scan_value(), "C1", id="carrier"),
    pytest.param("CarrierTrackingEvent", carrier_scan_value(location=None), "C1",
                 id="carrier-no-location"),
]

VALUES = {
    "WmsInventoryTransaction": wms_txn_value,
    "ErpInventoryDocument": erp_doc_value,
    "ItemMaster": item_master_value,
    "WmsFulfillmentEvent": fulfillment_event_value,
    "CarrierTrackingEvent": carrier_scan_value,
}


def _plain(node: Any) -> Any:
    """Tuples as lists, so a decoded model compares equal to its plain-JSON value."""
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_plain(v) for v in node]
    return node


def _decode(schema: str, value: dict[str, Any]) -> Decoded | DeadLetter:
    return decode(raw_record(avro_bytes(schema, value)), schema)


# -- valid records ----------------------------------------------------------------------------


@pytest.mark.parametrize(("schema", "value", "record_id"), VALID)
def test_valid_record_decodes_to_its_model(schema: str, value: dict[str, Any],
                                           record_id: str | None) -> None:
    data = avro_bytes(schema, value)
    raw = raw_record(data, key="k", partition=2, offset=17)

    d = decode(raw, schema)

    assert isinstance(d, Decoded)
    assert d.invalid is None
    assert d.raw is raw
    assert d.digest == digest(data)
    assert type(d.rec).__name__ == schema
    assert _plain(to_json(schema, d.rec.model_dump())) == value
    if record_id is not None:
        assert d.rec.record_id == record_id


def test_erp_quantity_stays_an_exact_decimal() -> None:
    d = _decode("ErpInventoryDocument", erp_doc_value(quantity="0.250"))

    assert isinstance(d, Decoded)
    assert str(d.rec.quantity) == "0.250"
    assert (d.rec.seq, d.rec.event_time, d.rec.kind) == (1, d.rec.posted_at, "SO_ALLOCATION")


def test_digest_is_equal_for_equal_bytes_and_differs_for_a_different_payload() -> None:
    a = _decode("WmsInventoryTransaction", wms_txn_value(qty=1))
    again = _decode("WmsInventoryTransaction", wms_txn_value(qty=1))
    other = _decode("WmsInventoryTransaction", wms_txn_value(qty=2))

    assert isinstance(a, Decoded) and isinstance(again, Decoded) and isinstance(other, Decoded)
    assert a.digest == again.digest
    assert a.digest != other.digest
    assert len(a.digest) == 8


# -- bytes that do not decode -----------------------------------------------------------------


def _assert_undecodable(result: object, raw_value: bytes | None, detail_start: str) -> None:
    assert isinstance(result, DeadLetter)
    assert result.reason == Reason.UNDECODABLE
    assert result.detail.startswith(detail_start), result.detail
    assert result.value == raw_value
    assert (result.topic, result.partition, result.offset, result.key) == (
        "wms.inventory.transactions", 3, 41, "DC-ATL|ITM-1")
    assert result.source_id is None
    assert result.gap is None


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\xff" * 12, id="ff-bytes"),
        pytest.param(b"not avro at all", id="text"),
        pytest.param(base64.b64decode("AP9ub3QgYXZybyBhdCBhbGw="), id="fixture-value_b64"),
    ],
)
def test_garbage_bytes_are_undecodable_with_the_raw_bytes(garbage: bytes) -> None:
    result = decode(raw_record(garbage, partition=3, offset=41), "WmsInventoryTransaction")

    _assert_undecodable(result, garbage, "not a WmsInventoryTransaction: ")


@pytest.mark.parametrize("schema", sorted(VALUES))
def test_every_truncation_of_a_valid_record_is_undecodable(schema: str) -> None:
    data = avro_bytes(schema, VALUES[schema]())

    for cut in range(len(data)):
        result = decode(raw_record(data[:cut], partition=3, offset=41), schema)
        assert isinstance(result, DeadLetter), cut
        assert result.reason == Reason.UNDECODABLE
        assert result.detail.startswith(f"not a {schema}: "), result.detail
        assert result.value == data[:cut]


@pytest.mark.parametrize(
    ("extra", "left"),
    [
        pytest.param(b"\x00", 1, id="one-byte"),
        pytest.param(b"junk!", 5, id="five-bytes"),
        pytest.param(None, None, id="two-records"),
    ],
)
def test_bytes_left_over_after_a_complete_record_are_undecodable(
    extra: bytes | None, left: int | None
) -> None:
    one = avro_bytes("WmsInventoryTransaction", wms_txn_value())
    extra = one if extra is None else extra
    left = len(one) if left is None else left
    data = one + extra

    result = decode(raw_record(data, partition=3, offset=41), "WmsInventoryTransaction")

    _assert_undecodable(result, data, "")
    assert result.detail == f"{left} bytes left over after a complete WmsInventoryTransaction"


def test_tombstone_is_undecodable_with_detail() -> None:
    result = decode(raw_record(None, partition=3, offset=41), "WmsInventoryTransaction")

    _assert_undecodable(result, None, "")
    assert result.detail == "record has no value (a tombstone?)"


# -- a newer writer schema --------------------------------------------------------------------


def _with_extra_symbol(schema: str, field: str, symbol: str) -> dict[str, Any]:
    raw = copy.deepcopy(codec(schema).raw_schema)
    for f in raw["fields"]:
        if f["name"] == field:
            f["type"]["symbols"].append(symbol)
            return raw
    msg = f"{schema} has no field {field}"
    raise AssertionError(msg)


def _write(writer_schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(writer_schema), record)
    return buf.getvalue()


NEWER_ENUMS = [
    pytest.param("WmsInventoryTransaction", "txn_type", "CONTAINER_MOVE", id="wms-txn_type"),
    pytest.param("ErpInventoryDocument", "doc_type", "CONSIGNMENT", id="erp-doc_type"),
    pytest.param("WmsFulfillmentEvent", "status", "ON_HOLD", id="fulfillment-status"),
    pytest.param("CarrierTrackingEvent", "status", "LOST", id="carrier-status"),
]


@pytest.mark.parametrize(("schema", "field", "symbol"), NEWER_ENUMS)
def test_newer_writer_schema_with_an_extra_enum_symbol_is_undecodable(
    schema: str, field: str, symbol: str
) -> None:
    writer = _with_extra_symbol(schema, field, symbol)
    record = from_json(schema, VALUES[schema]())
    record[field] = symbol
    data = _write(writer, record)

    result = decode(raw_record(data, partition=3, offset=41), schema)

    _assert_undecodable(result, data, f"not a {schema}: ")


@pytest.mark.parametrize(("schema", "field", "symbol"), NEWER_ENUMS)
def test_newer_writer_schema_using_a_known_symbol_still_decodes(
    schema: str, field: str, symbol: str
) -> None:
    writer = _with_extra_symbol(schema, field, symbol)
    value = VALUES[schema]()
    data = _write(writer, from_json(schema, value))

    result = decode(raw_record(data), schema)

    assert isinstance(result, Decoded)
    assert result.invalid is None
    assert _plain(to_json(schema, result.rec.model_dump())) == value


# -- decodes, but breaks a documented rule ----------------------------------------------------

EMPTY_CODES = [
    *[("WmsInventoryTransaction", f) for f in ("txn_id", "facility", "item", "uom")],
    *[("ErpInventoryDocument", f) for f in ("doc_id", "plant", "material", "unit")],
    *[("ItemMaster", f) for f in ("sku", "wms_item", "erp_material", "base_uom")],
    *[("WmsFulfillmentEvent", f) for f in
      ("event_id", "order_ref", "channel", "channel_order_id", "facility")],
    *[("CarrierTrackingEvent", f) for f in ("event_id", "carrier", "tracking_number")],
]


@pytest.mark.parametrize(("schema", "field"), EMPTY_CODES)
def test_empty_code_is_invalid_naming_the_field(schema: str, field: str) -> None:
    value = VALUES[schema](**{field: ""})

    d = _decode(schema, value)

    assert isinstance(d, Decoded), "a record that decodes is not dead-lettered by decode"
    assert d.invalid == f"{field}: String should have at least 1 character"
    assert getattr(d.rec, field) == ""  # the fields ride along for identity checks
    assert d.digest == digest(avro_bytes(schema, value))


@pytest.mark.parametrize(
    ("schema", "field", "number"),
    [
        ("WmsInventoryTransaction", "seq", 0),
        ("WmsInventoryTransaction", "seq", -3),
        ("ErpInventoryDocument", "change_seq", 0),
        ("WmsFulfillmentEvent", "seq", 0),
    ],
)
def test_sequence_below_one_is_invalid(schema: str, field: str, number: int) -> None:
    d = _decode(schema, VALUES[schema](**{field: number}))

    assert isinstance(d, Decoded)
    assert d.invalid == f"{field}: Input should be greater than or equal to 1"
    assert d.rec.seq == number


def test_several_broken_rules_are_all_named() -> None:
    d = _decode("WmsInventoryTransaction", wms_txn_value(facility="", seq=0))

    assert isinstance(d, Decoded)
    assert d.invalid == (
        "facility: String should have at least 1 character; "
        "seq: Input should be greater than or equal to 1"
    )


@pytest.mark.parametrize(
    ("factors", "invalid"),
    [
        ({"EA": 1, "CS": 0}, "uom_factors.CS: Input should be greater than 0"),
        ({"EA": 1, "CS": -12}, "uom_factors.CS: Input should be greater than 0"),
    ],
)
def test_item_master_factor_must_be_positive(factors: dict[str, int], invalid: str) -> None:
    d = _decode("ItemMaster", item_master_value(uom_factors=factors))

    assert isinstance(d, Decoded)
    assert d.invalid == invalid


def test_fulfillment_line_with_empty_item_is_invalid() -> None:
    value = fulfillment_event_value(lines=[{"item": "ITM-1", "qty": 1, "uom": "EA"},
                                           {"item": "", "qty": 1, "uom": "EA"}])

    d = _decode("WmsFulfillmentEvent", value)

    assert isinstance(d, Decoded)
    assert d.invalid == "lines.1.item: String should have at least 1 character"


def test_all_zero_bytes_decode_and_are_invalid_not_undecodable() -> None:
    # Bytes that decode are valid Avro: the documented rules then make them INVALID_RECORD.
    d = decode(raw_record(b"\x00" * 9), "WmsInventoryTransaction")

    assert isinstance(d, Decoded)
    assert d.invalid is not None
    assert d.invalid.split("; ") == [
        "txn_id: String should have at least 1 character",
        "facility: String should have at least 1 character",
        "item: String should have at least 1 character",
        "uom: String should have at least 1 character",
        "seq: Input should be greater than or equal to 1",
    ]


# -- the fast path for valid records: exactly pydantic's verdict, and an equal model ----------

def _avro_level(schema: str) -> Any:
    """Values of the Avro types of `schema`'s fields, with the rule-breaking ones included."""
    from hypothesis import strategies as st

    code = st.sampled_from(["", "A", "DC-ATL", "ä€"]) | st.text(max_size=5)
    out = {}
    for f in codec(schema)._parsed["fields"]:
        t = f["type"]
        if t == "string":
            out[f["name"]] = code
        elif t == "long":
            out[f["name"]] = st.integers(-3, 3) | st.integers(-(2**63), 2**63 - 1)
        elif t == ["null", "string"]:
            out[f["name"]] = st.none() | code
        elif t.get("type") == "enum":
            out[f["name"]] = st.sampled_from(t["symbols"])
        else:
            out[f["name"]] = st.decimals(places=3, allow_nan=False, allow_infinity=False,
                                         min_value=-10**6, max_value=10**6)
    return st.fixed_dictionaries(out)


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
@pytest.mark.parametrize("schema", ["WmsInventoryTransaction", "ErpInventoryDocument",
                                    "CarrierTrackingEvent"])
def test_quick_model_accepts_exactly_what_pydantic_accepts(
        schema: str, compiled: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    from hypothesis import given, settings
    from pydantic import ValidationError

    from operators import decode
    from operators.decode import MODELS, quick_model

    if compiled and decode._construct is None:
        pytest.skip("the compiled codec is not built")
    if not compiled:
        monkeypatch.setattr(decode, "_construct", None)

    @settings(max_examples=400, deadline=None)
    @given(_avro_level(schema))
    def check(fields: dict[str, Any]) -> None:
        quick = quick_model(schema, dict(fields))
        try:
            ref = MODELS[schema].model_validate(fields)
        except ValidationError:
            assert quick is None
            return
        assert quick is not None, "a valid record must not need pydantic"
        assert quick == ref
        assert quick.model_dump() == ref.model_dump()
        assert quick.model_fields_set == ref.model_fields_set
        first = next(iter(fields))
        assert getattr(quick.model_copy(update={first: "Z"}), first) == "Z"
        with pytest.raises(ValidationError):
            setattr(quick, first, "Y")  # frozen like the validated model

    check()


def test_quick_model_is_off_for_models_with_other_rules() -> None:
    from operators.decode import quick_model

    value = item_master_value()
    assert quick_model("ItemMaster", value) is None  # uom_factors: pydantic checks it
