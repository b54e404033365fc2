"""The compiled Avro codec (schemas/_avro.pyx) reads and writes exactly what fastavro does.

The reader may decline (None) and leave a record to fastavro, but whatever it returns must
equal fastavro's answer, on valid records and on mutated bytes alike. The encoders (compiled
and pure Python) must write fastavro's bytes, and anything they do not take goes to fastavro.
"""

from __future__ import annotations

import io
from decimal import Decimal
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

# Imported, not skipped when missing: a failed build must fail here (setup.sh builds it).
from schemas import DecodeError, _avro, codec
from schemas.fast import encode_availability as pure_encode

longs = st.integers(-(2**63), 2**63 - 1)
text = st.text(max_size=12)
opt_text = st.none() | text
decimals = st.decimals(
    min_value=Decimal("-999999999999999.999"), max_value=Decimal("999999999999999.999"),
    places=3, allow_nan=False, allow_infinity=False,
)

FLAT_EXAMPLE = {"txn_id": "T1", "facility": "DC-ATL", "item": "ITM-1", "txn_type": "PICK", "qty": 2,
                "uom": "EA", "seq": 1, "event_time": 1_767_225_600_000, "order_ref": None}
FLAT: dict[str, Any] = {
    "WmsInventoryTransaction": st.fixed_dictionaries({
        "txn_id": text, "facility": text, "item": text,
        "txn_type": st.sampled_from(["RECEIPT", "PICK", "SHIP", "ADJUST", "CYCLE_COUNT",
                                     "TRANSFER_OUT", "TRANSFER_IN", "HOLD", "RELEASE_HOLD", "RETURN"]),
        "qty": longs, "uom": text, "seq": longs, "event_time": longs, "order_ref": opt_text,
    }),
    "ErpInventoryDocument": st.fixed_dictionaries({
        "doc_id": text,
        "doc_type": st.sampled_from(["SO_ALLOCATION", "SO_DEALLOCATION", "GOODS_ISSUE",
                                     "PO_CONFIRMED", "PO_RECEIVED", "STOCK_SNAPSHOT"]),
        "plant": text, "material": text, "quantity": decimals, "unit": text,
        "change_seq": longs, "posted_at": longs, "sales_order": opt_text,
    }),
    "CarrierTrackingEvent": st.fixed_dictionaries({
        "event_id": text, "carrier": text, "tracking_number": text,
        "status": st.sampled_from(["LABEL_CREATED", "IN_TRANSIT", "OUT_FOR_DELIVERY", "DELIVERED",
                                   "EXCEPTION", "RETURNED_TO_SENDER"]),
        "location": opt_text, "event_time": longs,
    }),
}


def fastavro_read(schema: str, data: bytes) -> dict[str, Any] | Exception:
    """fastavro's answer alone (what Codec.decode gave before the compiled reader)."""
    buf = io.BytesIO(data)
    try:
        rec = fastavro.schemaless_reader(buf, codec(schema)._parsed, None)
    except Exception as exc:  # noqa: BLE001 - any failure is an answer here
        return exc
    return rec if buf.tell() == len(data) else ValueError("bytes left over")


def test_decode_generic_is_fastavro_alone() -> None:
    c = codec("WmsInventoryTransaction")
    raw = c.encode_generic(FLAT_EXAMPLE)
    assert c.decode_generic(raw) == fastavro_read("WmsInventoryTransaction", raw) == FLAT_EXAMPLE
    with pytest.raises(DecodeError, match="left over"):
        c.decode_generic(raw + b"\x00")


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal, with equal types and decimal exponents (Decimal('1') == Decimal('1.000'))."""
    return list(a) == list(b) and all(
        type(a[k]) is type(b[k]) and (a[k].as_tuple() == b[k].as_tuple() if isinstance(a[k], Decimal)
                                      else a[k] == b[k])
        for k in a
    )


def test_the_movement_schemas_take_the_compiled_reader() -> None:
    for schema in FLAT:
        assert codec(schema)._plan is not None, schema
    assert codec("ItemMaster")._plan is None  # a map: fastavro reads it


@pytest.mark.parametrize("schema", sorted(FLAT))
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_reader_equals_fastavro_on_valid_records(schema: str, data: st.DataObject) -> None:
    rec = data.draw(FLAT[schema])
    raw = codec(schema).encode_generic(rec)
    fast = _avro.read_flat(raw, codec(schema)._plan)
    ref = fastavro_read(schema, raw)
    assert isinstance(ref, dict)
    if schema != "ErpInventoryDocument" or abs(rec["quantity"]) < Decimal(10) ** 15:
        assert fast is not None  # a plain record is never left to fastavro
    assert fast is None or same(fast, ref)


def mutate(raw: bytes, how: int, at: int, byte: int) -> bytes:
    at = at % (len(raw) + 1)
    if how == 0:
        return raw[:at]  # short
    if how == 1:
        return raw + bytes([byte])  # left over
    if how == 2:
        return raw[:at] + bytes([byte]) + raw[at + 1:]  # one byte changed
    return raw[:at] + bytes([byte]) + raw[at:]  # one byte inserted


@pytest.mark.parametrize("schema", sorted(FLAT))
@settings(max_examples=400, deadline=None)
@given(data=st.data(), how=st.integers(0, 3), at=st.integers(0, 200), byte=st.integers(0, 255))
def test_on_mutated_bytes_the_reader_equals_fastavro_or_defers(
    schema: str, data: st.DataObject, how: int, at: int, byte: int
) -> None:
    raw = mutate(codec(schema).encode_generic(data.draw(FLAT[schema])), how, at, byte)
    fast = _avro.read_flat(raw, codec(schema)._plan)
    ref = fastavro_read(schema, raw)
    if fast is not None:
        assert isinstance(ref, dict), f"compiled read {fast}, fastavro failed: {ref!r}"
        assert same(fast, ref)
    # and the codec as a whole still answers exactly like fastavro
    if isinstance(ref, dict):
        assert same(codec(schema).decode(raw), ref)
    else:
        with pytest.raises(DecodeError):
            codec(schema).decode(raw)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=80))
def test_on_random_bytes_the_reader_equals_fastavro_or_defers(raw: bytes) -> None:
    for schema in FLAT:
        fast = _avro.read_flat(raw, codec(schema)._plan)
        if fast is not None:
            ref = fastavro_read(schema, raw)
            assert isinstance(ref, dict) and same(fast, ref)


def test_decimals_beyond_the_precision_round_like_fastavro() -> None:
    # 20 digits in a precision-18 field: fastavro rounds it; so must the compiled reader.
    c = codec("ErpInventoryDocument")
    rec = {"doc_id": "D", "doc_type": "GOODS_ISSUE", "plant": "P", "material": "M",
           "quantity": Decimal("1.000"), "unit": "EA", "change_seq": 1, "posted_at": 1,
           "sales_order": None}
    raw = c.encode_generic(rec)
    unscaled = (12345678901234567891).to_bytes(9, "big", signed=True)
    big = raw.replace(b"\x04\x03\xe8", bytes([len(unscaled) * 2]) + unscaled)  # 1.000 is 0x03e8
    ref = fastavro_read("ErpInventoryDocument", big)
    assert isinstance(ref, dict)
    fast = _avro.read_flat(big, c._plan)
    assert fast is not None and same(fast, ref)


def test_repeated_decimals_come_from_a_bounded_cache() -> None:
    c = codec("ErpInventoryDocument")
    [quantity] = [f for f in c._plan if f.name == "quantity"]
    for n in [*range(-3000, 3000), *range(-5, 5)]:
        rec = {"doc_id": "D", "doc_type": "GOODS_ISSUE", "plant": "P", "material": "M",
               "quantity": Decimal(n) / 1000, "unit": "EA", "change_seq": 1, "posted_at": 1,
               "sales_order": None}
        raw = c.encode_generic(rec)
        assert same(_avro.read_flat(raw, c._plan), fastavro_read("ErpInventoryDocument", raw))
        assert len(quantity.decimals) <= 4096


# -- AvailabilityRecord ----------------------------------------------------------------------

warehouse = st.fixed_dictionaries({
    "warehouse": text, "on_hand": longs, "on_hold": longs, "reserved": longs, "incoming": longs,
    "atp": longs, "erp_book": st.none() | longs, "drift": st.none() | longs,
})
availability = st.fixed_dictionaries({
    "channel": text, "sku": text, "location": opt_text, "available": longs,
    "previous": st.none() | longs, "version": longs, "as_of": longs, "source": text,
    "source_id": st.text(max_size=600), "warehouses": st.lists(warehouse, max_size=12),
    "base": longs, "share_pct": st.floats(allow_nan=False), "after_share": longs,
    "buffer_units": longs, "max_qty": longs, "min_qty": longs, "include_incoming": st.booleans(),
})


@pytest.mark.parametrize("encode", [_avro.encode_availability, pure_encode], ids=["compiled", "pure"])
@settings(max_examples=300, deadline=None)
@given(rec=availability)
def test_availability_encoders_equal_fastavro(encode: Any, rec: dict[str, Any]) -> None:
    c = codec("AvailabilityRecord")
    assert encode(rec) == c.encode_generic(rec)  # records of up to ~8 KB: past the stack buffer
    assert c.decode(c.encode(rec)) == rec


@pytest.mark.parametrize(
    "field, value",
    [("share_pct", 80), ("include_incoming", 1), ("available", 2**64), ("location", 7),
     ("version", 3.0)],
)
def test_values_the_fast_encoder_does_not_take_go_to_fastavro(field: str, value: Any) -> None:
    c = codec("AvailabilityRecord")
    rec = {"channel": "c", "sku": "s", "location": None, "available": 1, "previous": None,
           "version": 1, "as_of": 0, "source": "wms", "source_id": "T1", "warehouses": [],
           "base": 1, "share_pct": 100.0, "after_share": 1, "buffer_units": 0, "max_qty": 10,
           "min_qty": 0, "include_incoming": False, field: value}
    with pytest.raises((TypeError, OverflowError)):
        _avro.encode_availability(rec)
    try:
        expected: bytes | type[Exception] = c.encode_generic(rec)
    except Exception as exc:  # noqa: BLE001
        expected = type(exc)
    if isinstance(expected, bytes):
        assert c.encode(rec) == expected
    else:
        with pytest.raises(expected):
            c.encode(rec)


def test_a_missing_field_names_it() -> None:
    with pytest.raises(KeyError, match="'sku'"):
        _avro.encode_availability({"channel": "c"})


def test_without_the_compiled_module_the_codec_reads_and_writes_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An install without a C compiler: fastavro and the pure-Python encoder, same results."""
    import schemas

    rec = {"channel": "c", "sku": "s", "location": "ATL1", "available": 3, "previous": 1,
           "version": 2, "as_of": 5, "source": "wms", "source_id": "T1",
           "warehouses": [{"warehouse": "ATL1", "on_hand": 5, "on_hold": 0, "reserved": 2,
                           "incoming": 0, "atp": 3, "erp_book": None, "drift": None}],
           "base": 3, "share_pct": 100.0, "after_share": 3, "buffer_units": 0, "max_qty": 10,
           "min_qty": 0, "include_incoming": False}
    raw = codec("WmsInventoryTransaction").encode_generic(FLAT_EXAMPLE)
    compiled = codec("WmsInventoryTransaction").decode(raw), codec("AvailabilityRecord").encode(rec)

    monkeypatch.setattr(schemas, "_avro", None)
    wms, avail = schemas.Codec("WmsInventoryTransaction"), schemas.Codec("AvailabilityRecord")
    assert wms._plan is None and avail._fast is pure_encode
    assert (wms.decode(raw), avail.encode(rec)) == compiled
    assert compiled == (FLAT_EXAMPLE, avail.encode_generic(rec))
