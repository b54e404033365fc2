"""Avro codecs for every topic atpflow reads or writes.

Values are schemaless Avro (no registry framing). Timestamps stay epoch
milliseconds in memory: the `timestamp-millis` logical type is stripped
before parsing, which changes nothing on the wire and saves a datetime
round trip per record. Decimals stay `decimal.Decimal`.

The recorded-fixture format (DOMAIN.md, 'Recorded fixtures') is plain JSON
of the same records: decimals as strings, bytes as base64, enums as their
symbol, unions as the bare value. `to_json` / `from_json` convert.
"""

from __future__ import annotations

import base64
import copy
import io
import json
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import fastavro

__all__ = [
    "AVRO_DIR",
    "SCHEMA_FILES",
    "Codec",
    "DecodeError",
    "codec",
    "from_json",
    "to_json",
]

AVRO_DIR = Path(__file__).parent / "avro"

#: Schema file per schema name.
SCHEMA_FILES = {
    "WmsInventoryTransaction": "wms_inventory_transaction.avsc",
    "ErpInventoryDocument": "erp_inventory_document.avsc",
    "ItemMaster": "item_master.avsc",
    "WmsFulfillmentEvent": "wms_fulfillment_event.avsc",
    "CarrierTrackingEvent": "carrier_tracking_event.avsc",
    "AvailabilityRecord": "availability_record.avsc",
    "DeadLetter": "dead_letter.avsc",
    "ShipmentMilestone": "shipment_milestone.avsc",
}


class DecodeError(ValueError):
    """Bytes that are not one complete record of the schema."""


def _strip_timestamps(node: Any) -> Any:
    if isinstance(node, dict):
        if node.get("logicalType") == "timestamp-millis":
            return node["type"]
        return {k: _strip_timestamps(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_strip_timestamps(v) for v in node]
    return node


def _load_json(name: str) -> dict[str, Any]:
    with open(AVRO_DIR / SCHEMA_FILES[name], encoding="utf-8") as fh:
        return json.load(fh)


class Codec:
    """Schemaless Avro encoder/decoder for one schema, reused for every record."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.raw_schema = _load_json(name)
        self._parsed = fastavro.parse_schema(_strip_timestamps(copy.deepcopy(self.raw_schema)))

    def decode(self, data: bytes) -> dict[str, Any]:
        """Decode exactly one record; trailing bytes or a short read are errors."""
        buf = io.BytesIO(data)
        try:
            record = fastavro.schemaless_reader(buf, self._parsed, None)
        except Exception as exc:  # fastavro raises many types on garbage
            msg = f"not a {self.name}: {type(exc).__name__}: {exc}"
            raise DecodeError(msg[:500]) from exc
        left = len(data) - buf.tell()
        if left:
            msg = f"{left} bytes left over after a complete {self.name}"
            raise DecodeError(msg)
        return record

    def encode(self, record: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, self._parsed, record)
        return buf.getvalue()


@cache
def codec(name: str) -> Codec:
    """The shared codec for a schema name (built once per process)."""
    return Codec(name)


def _convert(schema: Any, value: Any, named: dict[str, Any], to_avro: bool) -> Any:
    """Walk a value along its schema, converting between JSON and Avro forms."""
    if isinstance(schema, str):
        if schema in named:
            return _convert(named[schema], value, named, to_avro)
        if schema == "bytes" and value is not None:
            return base64.b64decode(value) if to_avro else base64.b64encode(value).decode()
        return value
    if isinstance(schema, list):
        if value is None:
            return None
        for branch in schema:
            if branch != "null":
                return _convert(branch, value, named, to_avro)
        return value
    kind = schema["type"]
    if kind == "record":
        named[schema["name"]] = schema
        return {
            f["name"]: _convert(f["type"], value.get(f["name"], f.get("default")), named, to_avro)
            for f in schema["fields"]
        }
    if kind in ("enum", "fixed"):
        named[schema["name"]] = schema
        return value
    if kind == "array":
        return [_convert(schema["items"], v, named, to_avro) for v in value]
    if kind == "map":
        return {k: _convert(schema["values"], v, named, to_avro) for k, v in value.items()}
    if schema.get("logicalType") == "decimal":
        if to_avro:
            return Decimal(str(value))
        return format(value, "f") if isinstance(value, Decimal) else str(value)
    return _convert(kind, value, named, to_avro)


def from_json(name: str, value: dict[str, Any]) -> dict[str, Any]:
    """A fixture's plain-JSON value to the record `Codec.encode` takes."""
    return _convert(codec(name).raw_schema, value, {}, to_avro=True)


def _json_native(node: Any) -> bool:
    """True if no value of the schema needs converting for JSON (no bytes, no decimals)."""
    if isinstance(node, dict):
        if node.get("type") in ("bytes", "fixed"):
            return False
        return all(_json_native(v) for v in node.values())
    if isinstance(node, list):
        return all(_json_native(v) for v in node)
    return node not in ("bytes", "fixed")


@cache
def _is_json_native(name: str) -> bool:
    return _json_native(codec(name).raw_schema)


def to_json(name: str, record: dict[str, Any]) -> dict[str, Any]:
    """A decoded record to the fixture's plain-JSON form."""
    if _is_json_native(name):
        return record  # the hot path for availability records: nothing to convert
    return _convert(codec(name).raw_schema, record, {}, to_avro=False)
