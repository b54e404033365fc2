"""The compiled decode-and-sort step (operators/_sort.pyx) does exactly what the Python code does.

`sort_batch` decodes and sorts the common case compiled when the module is built and hands
every other record, alone and in place, to the Python code. Here both take the same random
batches (valid WMS and ERP records, item-master records, undecodable and truncated bytes,
records pydantic must validate, tombstones, other topics, values of unexpected types, with
several topic-to-schema mappings): every chunk, `Decoded` (its model to the last attribute),
dead letter, item-master record and their order must be equal.
"""

from __future__ import annotations

import hashlib
import zlib
from types import MappingProxyType
from typing import Any

import pytest
from helpers import (
    ERP_TOPIC,
    ITEMS_TOPIC,
    WMS_TOPIC,
    avro_bytes,
    carrier_scan_value,
    erp_doc_value,
    item_master_value,
    wms_txn_value,
)
from hypothesis import event, given, settings
from hypothesis import strategies as st

from operators import steps
from operators.decode import Decoded
from operators.records import DeadLetter, RawRecord
from operators.steps import _SHARD_NAMES, Letters, shard_of, sort_batch

# Imported, not skipped when missing: a failed build must fail here (setup.sh builds it).
from operators import _sort  # isort: skip

SCHEMAS = {WMS_TOPIC: "WmsInventoryTransaction", ERP_TOPIC: "ErpInventoryDocument",
           ITEMS_TOPIC: "ItemMaster"}
#: the flow's mapping, and others a config could make (a topic missing, a topic read with the
#: wrong schema, the item master as a movement topic); a mapping that is not a dict
MAPPINGS = [
    SCHEMAS,
    {WMS_TOPIC: "WmsInventoryTransaction", ITEMS_TOPIC: "ItemMaster"},
    {WMS_TOPIC: "ErpInventoryDocument", ERP_TOPIC: "WmsInventoryTransaction", ITEMS_TOPIC: "ItemMaster"},
    {WMS_TOPIC: "WmsInventoryTransaction", ERP_TOPIC: "ErpInventoryDocument", ITEMS_TOPIC: "WmsInventoryTransaction"},
    MappingProxyType(SCHEMAS),
]

#: codes: plain, non-ASCII (the shard hashes UTF-8), long (payloads over one BLAKE2b block, as
#: are those with the long ids below)
CODES = ["DC-ATL", "ITM-1", "ITM-2", "1000", "0001", "Ärtikel-7", "品目-3", "X" * 150]
codes = st.sampled_from(CODES)
wms = st.builds(
    lambda txn, facility, item, seq, qty, uom, ref: wms_txn_value(
        txn_id=txn, facility=facility, item=item, seq=seq, qty=qty, uom=uom, order_ref=ref),
    st.sampled_from(["T1", "T2", "", "T" * 300]), codes | st.just(""), codes, st.sampled_from([1, 2, 7, 0, -1]),
    st.integers(-5, 10**12), st.sampled_from(["EA", "CS", ""]), st.none() | codes,
)
erp = st.builds(
    lambda doc, plant, material, seq, qty, unit: erp_doc_value(
        doc_id=doc, plant=plant, material=material, change_seq=seq, quantity=qty, unit=unit),
    st.sampled_from(["D1", "D2", "", "D" * 300]), codes, codes | st.just(""), st.sampled_from([1, 3, 0]),
    st.sampled_from(["1.000", "-2.500", "0.001", "123456789.000"]), st.sampled_from(["EA", "PL"]),
)
item = st.builds(lambda sku, wms_item: item_master_value(sku=sku, wms_item=wms_item),
                 st.sampled_from(["SKU-1", ""]), codes)


def _mangle(value: bytes, how: int) -> Any:
    """The same record as bytes the compiled reader leaves to fastavro, or no record at all."""
    return [value[:-1], value + b"\x00", b"", bytearray(value), b"\xff" * 12][how]


raw_kind = st.one_of(
    st.tuples(st.just(WMS_TOPIC), st.just("WmsInventoryTransaction"), wms),
    st.tuples(st.just(ERP_TOPIC), st.just("ErpInventoryDocument"), erp),
    st.tuples(st.just(ITEMS_TOPIC), st.just("ItemMaster"), item),
    st.tuples(st.just("other.topic"), st.just("WmsInventoryTransaction"), wms),
)


@st.composite
def raws(draw: st.DrawFn) -> RawRecord:
    topic, schema, value = draw(raw_kind)
    data: Any = avro_bytes(schema, value)
    fate = draw(st.sampled_from(["plain"] * 8 + ["mangled", "tombstone"]))
    if fate == "mangled":
        data = _mangle(data, draw(st.integers(0, 4)))
    elif fate == "tombstone":
        data = None
    headers = draw(st.sampled_from([(), (("trace", b"1"),)]))
    return RawRecord(topic, 0, draw(st.integers(0, 10**6)), draw(st.none() | codes), data,
                     draw(st.none() | st.integers(0, 10**13)), headers)


def _model(rec: Any) -> Any:
    """A model to the last attribute: class, field values with their types and exact form (a
    Decimal's exponent), and pydantic's own slots (equality alone skips the fields set)."""
    return (type(rec), [(k, type(v), repr(v)) for k, v in vars(rec).items()],
            rec.__pydantic_fields_set__, rec.__pydantic_extra__, rec.__pydantic_private__)


def _decoded(d: Any) -> Any:
    assert type(d) is Decoded
    return (d.raw, _model(d.rec), type(d.digest), d.digest, d.invalid, d.stream, d.code, d.identity)


def _view(out: list[Any]) -> list[Any]:
    """The whole output of `sort_batch`, in order, as plain comparable values."""
    view = []
    for x in out:
        if type(x) is tuple:
            shard, chunk = x
            assert type(chunk) is list
            assert all(shard == shard_of(d.code) for d in chunk)  # what the order step relies on
            view.append(("chunk", shard, [_decoded(d) for d in chunk]))
        elif type(x) is Letters:
            assert all(type(dl) is DeadLetter for dl in x)
            view.append(("letters", list(x)))
        else:
            view.append(("item", _decoded(x)))
    return view


@settings(max_examples=300, deadline=None)
@given(batch=st.lists(raws(), min_size=15, max_size=60), mapping=st.sampled_from([SCHEMAS] * 3 + MAPPINGS),
       items_topic=st.sampled_from([ITEMS_TOPIC] * 4 + [WMS_TOPIC, "absent", None]))
def test_compiled_sort_equals_the_python_one(
    batch: list[RawRecord], mapping: Any, items_topic: Any
) -> None:
    compiled, pure = (_outcome(batch, mapping, items_topic, flag) for flag in (True, False))
    assert compiled == pure
    event("raised" if type(compiled) is tuple else "sorted")
    if type(compiled) is list:
        event(f"{sum(len(x[2]) for x in compiled if x[0] == 'chunk') // 10 * 10}+ records in chunks")


def _outcome(batch: list[RawRecord], mapping: Any, items_topic: Any, compiled: bool) -> Any:
    """The output, or the error (an item-master record read as a movement has no keys)."""
    try:
        return _view(sort_batch(batch, mapping, items_topic, compiled=compiled))
    except AttributeError as exc:
        return (type(exc), str(exc))


def test_the_common_case_is_decoded_compiled() -> None:
    """Valid movement records never reach the Python code; anything else reaches it alone."""
    seen: list[list[RawRecord]] = []

    def reference(raws: list[RawRecord], schemas: Any, items_topic: Any) -> list[Any]:
        seen.append(raws)
        return steps._sort_batch_python(raws, schemas, items_topic)

    common = [RawRecord(WMS_TOPIC, 0, n, None, avro_bytes("WmsInventoryTransaction", wms_txn_value(
                  txn_id=f"T{n}", seq=n, item=f"ITM-{n % 3}")), None) for n in range(1, 30)]
    common += [RawRecord(ERP_TOPIC, 0, n, None, avro_bytes("ErpInventoryDocument", erp_doc_value(
                   doc_id=f"D{n}", change_seq=n)), None) for n in range(1, 30)]
    out = _sort.sort_batch(common, SCHEMAS, ITEMS_TOPIC, _SHARD_NAMES, Letters(), reference)
    assert seen == []
    assert _view(out) == _view(sort_batch(common, SCHEMAS, ITEMS_TOPIC, compiled=False))

    tombstone = RawRecord(WMS_TOPIC, 0, 99, None, None)
    item = RawRecord(ITEMS_TOPIC, 0, 7, None, avro_bytes("ItemMaster", item_master_value()))
    invalid = RawRecord(WMS_TOPIC, 0, 8, None, avro_bytes("WmsInventoryTransaction", wms_txn_value(seq=0)))
    batch = [common[0], tombstone, common[1], item, invalid, common[2]]
    out = _sort.sort_batch(batch, SCHEMAS, ITEMS_TOPIC, _SHARD_NAMES, Letters(), reference)
    assert seen == [[tombstone], [item], [invalid]]
    assert _view(out) == _view(sort_batch(batch, SCHEMAS, ITEMS_TOPIC, compiled=False))


def test_a_topic_read_with_another_flows_schema_raises_as_in_python() -> None:
    """A carrier scan has no movement keys: both paths raise the Python code's error."""
    raw = RawRecord("scans", 0, 0, None, avro_bytes("CarrierTrackingEvent", carrier_scan_value()))
    for compiled in (True, False):
        with pytest.raises(AttributeError, match="facility"):
            sort_batch([raw], {"scans": "CarrierTrackingEvent"}, ITEMS_TOPIC, compiled=compiled)


@pytest.mark.parametrize("size", [0, 1, 127, 128, 129, 255, 256, 257, 1000])
def test_compiled_digest_equals_hashlib_at_block_edges(size: int) -> None:
    data = bytes(range(256)) * 4
    assert _sort.payload_digest(data[:size]) == hashlib.blake2b(data[:size], digest_size=8).digest()


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400), st.text(max_size=40))
def test_compiled_hashes_equal_hashlib_and_zlib(data: bytes, key: str) -> None:
    assert _sort.payload_digest(data) == hashlib.blake2b(data, digest_size=8).digest()
    try:
        utf8 = key.encode()
    except UnicodeEncodeError:  # lone surrogates: both raise
        with pytest.raises(UnicodeEncodeError):
            _sort.shard(key, _SHARD_NAMES)
        return
    assert _sort.shard(key, _SHARD_NAMES) == _SHARD_NAMES[zlib.crc32(utf8) % len(_SHARD_NAMES)]


def test_without_the_compiled_module_sort_runs_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(steps, "_sort", None)
    raw = RawRecord(WMS_TOPIC, 0, 0, None, avro_bytes("WmsInventoryTransaction", wms_txn_value()))
    [(shard, [d])] = sort_batch([raw], SCHEMAS, ITEMS_TOPIC)
    assert (shard, d.stream, d.code) == (shard_of("wms|ITM-1"), "wms|DC-ATL|ITM-1", "wms|ITM-1")
