"""Fixture files: JSON Lines <-> RawRecord, without a broker."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest

from dataflows.config import load_config
from dataflows.fixtures import (
    FixtureError,
    read_fixture,
    read_fixtures,
    record_line,
    topic_schemas,
    write_line,
)
from operators.records import REPLAYED_HEADER, RawRecord
from schemas import codec, from_json

WMS = "wms.inventory.transactions"
ITEMS = "ref.items"
SCHEMAS = {WMS: "WmsInventoryTransaction", ITEMS: "ItemMaster"}


def txn(txn_id: str, seq: int, qty: int = 10) -> dict[str, Any]:
    return {"txn_id": txn_id, "facility": "DC-ATL", "item": "ITM-0012345", "txn_type": "RECEIPT",
            "qty": qty, "uom": "CS", "seq": seq, "event_time": 1767225600000, "order_ref": None}


def item(sku: str) -> dict[str, Any]:
    return {"sku": sku, "wms_item": "ITM-1", "erp_material": "0001", "base_uom": "EA",
            "uom_factors": {"EA": 1, "CS": 12}, "active": True, "updated_at": 1767225600000}


def write(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def test_value_is_avro_encoded_with_the_topic_schema(tmp_path: Path) -> None:
    f = write(tmp_path / "a.jsonl",
              [{"topic": WMS, "key": "DC-ATL|ITM-0012345", "value": txn("T1", 1)}])
    (rec,) = read_fixture(f, SCHEMAS)
    assert rec.value == codec("WmsInventoryTransaction").encode(
        from_json("WmsInventoryTransaction", txn("T1", 1)))
    assert (rec.topic, rec.key, rec.partition, rec.offset) == (WMS, "DC-ATL|ITM-0012345", 0, 0)
    assert rec.timestamp is None and rec.headers == ()


def test_value_b64_is_raw_bytes_and_null_value_is_a_tombstone(tmp_path: Path) -> None:
    garbage = b"\x00\xffnot avro"
    f = write(tmp_path / "a.jsonl", [
        {"topic": WMS, "key": "k", "value_b64": base64.b64encode(garbage).decode()},
        {"topic": ITEMS, "key": "SKU-1", "value": None},
        {"topic": "some.unknown.topic", "key": None, "value_b64": "AAE="},
    ])
    recs = list(read_fixture(f, SCHEMAS))
    assert [r.value for r in recs] == [garbage, None, b"\x00\x01"]
    assert recs[2].key is None


def test_missing_coordinates_count_per_topic_across_files(tmp_path: Path) -> None:
    a = write(tmp_path / "a.jsonl", [
        {"topic": WMS, "key": "k", "value": txn("T1", 1)},
        {"topic": ITEMS, "key": "S1", "value": item("S1")},
        {"topic": WMS, "key": "k", "value": txn("T2", 2), "partition": 2, "offset": 40},
    ])
    b = write(tmp_path / "b.jsonl", [
        {"topic": WMS, "key": "k", "value": txn("T3", 3)},
        {"topic": ITEMS, "key": "S2", "value": item("S2"), "partition": 0},
    ])
    recs = list(read_fixtures([a, b], SCHEMAS))
    assert [(r.topic, r.partition, r.offset) for r in recs] == [
        (WMS, 0, 0), (ITEMS, 0, 0), (WMS, 2, 40), (WMS, 0, 2), (ITEMS, 0, 1),
    ]


def test_headers_and_timestamp(tmp_path: Path) -> None:
    f = write(tmp_path / "a.jsonl", [{
        "topic": WMS, "key": "k", "value": txn("T1", 1), "timestamp": 1767225600123,
        "headers": {REPLAYED_HEADER: "atpflow.dead-letter/1/7", "trace": "é"},
    }])
    (rec,) = read_fixture(f, SCHEMAS)
    assert rec.timestamp == 1767225600123
    assert rec.headers == ((REPLAYED_HEADER, b"atpflow.dead-letter/1/7"), ("trace", "é".encode()))
    assert rec.replayed


def test_record_line_decodes_or_falls_back_to_b64() -> None:
    schema = "WmsInventoryTransaction"
    good = codec(schema).encode(from_json(schema, txn("T1", 1)))
    line = record_line(RawRecord(WMS, 1, 5, "k", good, 99, (("h", b"v"),)),
                       "WmsInventoryTransaction")
    assert line == {"topic": WMS, "key": "k", "value": txn("T1", 1), "partition": 1, "offset": 5,
                    "timestamp": 99, "headers": {"h": "v"}}
    # Trailing bytes after a complete record make it undecodable: kept as raw bytes.
    bad = record_line(RawRecord(WMS, 0, 0, "k", good + b"\x00"), "WmsInventoryTransaction")
    assert base64.b64decode(bad["value_b64"]) == good + b"\x00" and "value" not in bad
    assert "value_b64" in record_line(RawRecord("x", 0, 0, None, b"\x01"), None)
    assert record_line(RawRecord(WMS, 0, 0, "k", None), "WmsInventoryTransaction")["value"] is None


def test_round_trip_through_record_line(tmp_path: Path) -> None:
    src = Path(__file__).parent / "fixtures" / "availability"
    files = sorted(src.glob("*.jsonl"))
    config = load_config()
    schemas = topic_schemas(config)
    first = list(read_fixtures(files, schemas))
    assert first, "the availability fixtures are expected in tests/fixtures/availability"
    out = tmp_path / "out.jsonl"
    with open(out, "w", encoding="utf-8") as fh:
        for raw in first:
            write_line(fh, record_line(raw, schemas.get(raw.topic)))
    assert list(read_fixture(out, schemas)) == first


def test_errors_name_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"topic": WMS, "key": "k", "value": txn("T1", 1)}) + "\n\n{oops\n")
    records = read_fixture(f, SCHEMAS)
    assert next(records).key == "k"  # streamed: the bad line is not reached yet
    with pytest.raises(FixtureError, match=r"bad.jsonl:3: not JSON"):
        next(records)
    g = write(tmp_path / "g.jsonl", [{"topic": "nope", "key": "k", "value": {"a": 1}}])
    with pytest.raises(FixtureError, match=r"g.jsonl:1: no schema known for topic 'nope'"):
        list(read_fixture(g, SCHEMAS))
    h = write(tmp_path / "h.jsonl", [{"topic": WMS, "key": "k", "value": {"txn_id": 5}}])
    with pytest.raises(FixtureError, match=r"h.jsonl:1: value does not fit WmsInventory"):
        list(read_fixture(h, SCHEMAS))


def test_topic_schemas_cover_every_topic() -> None:
    config = load_config()
    schemas = topic_schemas(config)
    assert schemas[config.topics.dead_letter] == "DeadLetter"
    for channel in config.channels.channels:
        assert schemas[config.topics.availability(channel.id)] == "AvailabilityRecord"
    assert set(config.topics.input_schemas.items()) <= set(schemas.items())


def test_write_line_is_one_json_object_per_line() -> None:
    buf = io.StringIO()
    write_line(buf, {"topic": "t", "key": "é", "value": None})
    write_line(buf, {"topic": "t", "key": "b", "value": None})
    lines = buf.getvalue().splitlines()
    assert [json.loads(x)["key"] for x in lines] == ["é", "b"]
