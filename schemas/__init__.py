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
from collections.abc import Callable
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import fastavro

try:  # compiled at install when a C compiler is there (setup.py); see schemas/_avro.pyx
    from schemas import _avro
except ImportError:
    _avro = None

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
        #: the compiled reader's field plan, for the flat schemas it reads (every movement)
        self._plan = _flat_plan(self._parsed) if _avro is not None else None
        self._fast: Callable[[dict[str, Any]], bytes] | None = None
        if name == "AvailabilityRecord":  # the live hot path
            if _avro is not None:
                self._fast = _avro.encode_availability
            else:
                from schemas.fast import encode_availability

                self._fast = encode_availability

    def decode(self, data: bytes) -> dict[str, Any]:
        """Decode exactly one record; trailing bytes or a short read are errors."""
        if self._plan is not None and type(data) is bytes:
            record = _avro.read_flat(data, self._plan)  # type: ignore[union-attr]
            if record is not None:
                return record
            # not a plain, complete encoding: fastavro decodes it or says what is wrong
        return self.decode_generic(data)

    def decode_generic(self, data: bytes) -> dict[str, Any]:
        """fastavro's reader, for any schema (the reference the compiled reader is tested against)."""
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
        if self._fast is not None:
            try:
                return self._fast(record)
            except (TypeError, ValueError, KeyError, OverflowError):
                pass  # a value the fast writer does not take: fastavro writes it or says why
        return self.encode_generic(record)

    def encode_generic(self, record: dict[str, Any]) -> bytes:
        """fastavro's writer, for any schema (the reference the fast encoder is tested against)."""
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, self._parsed, record)
        return buf.getvalue()


def _flat_plan(schema: dict[str, Any]) -> list[Any] | None:
    """The compiled reader's plan for a record of plain fields, or None (fastavro reads it)."""
    assert _avro is not None
    plan = []
    for f in schema["fields"]:
        t, name = f["type"], f["name"]
        if t == "string":
            plan.append(_avro.Field(name, _avro.STRING))
        elif t == "long":
            plan.append(_avro.Field(name, _avro.LONG))
        elif t == ["null", "string"]:
            plan.append(_avro.Field(name, _avro.OPT_STRING))
        elif t == ["null", "long"]:
            plan.append(_avro.Field(name, _avro.OPT_LONG))
        elif isinstance(t, dict) and t.get("type") == "enum":
            plan.append(_avro.Field(name, _avro.ENUM, tuple(t["symbols"])))
        elif isinstance(t, dict) and t.get("type") == "bytes" and t.get("logicalType") == "decimal":
            plan.append(_avro.Field(name, _avro.DECIMAL, (), t["precision"], t.get("scale", 0)))
        else:
            return None
    return plan


@cache
def codec(name: str) -> Codec:
    """The shared codec for a schema name (built once per process)."""
    return Codec(name)


Convert = Callable[[Any], Any]


def _identity(value: Any) -> Any:
    return value


def _compile(schema: Any, named: dict[str, Any], to_avro: bool) -> Convert:
    """A converter for one schema node, built once: fixtures and replay outputs run it per record.

    Nodes that need no conversion compile to the identity, so a record converts only the
    fields that differ between JSON and Avro (bytes as base64, decimals as strings).
    """
    if isinstance(schema, str):
        if schema in named:
            compiled: list[Convert] = []  # compiled on first use: the type may refer to itself

            def by_name(v: Any) -> Any:
                if not compiled:
                    compiled.append(_compile(named[schema], named, to_avro))
                return compiled[0](v)

            return by_name
        if schema == "bytes":
            if to_avro:
                return lambda v: None if v is None else base64.b64decode(v)
            return lambda v: None if v is None else base64.b64encode(v).decode()
        return _identity
    if isinstance(schema, list):
        branches = [b for b in schema if b != "null"]
        inner = _compile(branches[0], named, to_avro) if branches else _identity
        if inner is _identity:
            return _identity
        return lambda v: None if v is None else inner(v)
    kind = schema["type"]
    if kind == "record":
        named[schema["name"]] = schema
        fields = [(f["name"], f.get("default"), _compile(f["type"], named, to_avro))
                  for f in schema["fields"]]
        if to_avro:  # fixture values may leave out fields that have defaults
            return lambda v: {n: conv(v.get(n, d)) for n, d, conv in fields}
        special = [(n, conv) for n, _, conv in fields if conv is not _identity]
        if not special:
            return _identity

        def record(v: dict[str, Any]) -> dict[str, Any]:
            out = dict(v)
            for n, conv in special:
                out[n] = conv(out.get(n))
            return out

        return record
    if kind in ("enum", "fixed"):
        named[schema["name"]] = schema
        return _identity
    if kind == "array":
        item = _compile(schema["items"], named, to_avro)
        return _identity if item is _identity and not to_avro else (lambda v: [item(x) for x in v])
    if kind == "map":
        val = _compile(schema["values"], named, to_avro)
        return _identity if val is _identity else (lambda v: {k: val(x) for k, x in v.items()})
    if schema.get("logicalType") == "decimal":
        if to_avro:
            return lambda v: None if v is None else Decimal(str(v))
        return lambda v: None if v is None else (format(v, "f") if isinstance(v, Decimal) else str(v))
    return _compile(kind, named, to_avro)


@cache
def _converter(name: str, to_avro: bool) -> Convert:
    return _compile(codec(name).raw_schema, {}, to_avro)


def from_json(name: str, value: dict[str, Any]) -> dict[str, Any]:
    """A fixture's plain-JSON value to the record `Codec.encode` takes."""
    return _converter(name, True)(value)


def to_json(name: str, record: dict[str, Any]) -> dict[str, Any]:
    """A decoded record to the fixture's plain-JSON form."""
    return _converter(name, False)(record)
