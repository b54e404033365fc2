"""Decode: raw Kafka bytes to validated upstream records, or a dead letter.

Pure functions, no engine. A record that does not decode is `UNDECODABLE`
(it has no identity, so every copy is dead-lettered). A record that decodes
but breaks a documented rule is *not* dead-lettered here: the contract checks
identity before validation (an exact redelivery of a bad record is a counted
duplicate), so the verdict rides along as `Decoded.invalid` and the
sequencing step decides.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from operators.models import (
    CarrierTrackingEvent,
    ErpInventoryDocument,
    ItemMaster,
    WmsFulfillmentEvent,
    WmsInventoryTransaction,
    describe_validation_error,
)
from operators.records import DeadLetter, RawRecord, Reason, dead_letter
from schemas import DecodeError, codec

__all__ = ["MODELS", "Decoded", "decode", "digest"]

#: Schema name -> model. The topic -> schema mapping comes from config.
MODELS: dict[str, type[BaseModel]] = {
    "WmsInventoryTransaction": WmsInventoryTransaction,
    "ErpInventoryDocument": ErpInventoryDocument,
    "ItemMaster": ItemMaster,
    "WmsFulfillmentEvent": WmsFulfillmentEvent,
    "CarrierTrackingEvent": CarrierTrackingEvent,
}


@dataclass(slots=True)
class Decoded:
    """A decoded record, its payload digest, and why it is invalid (if it is)."""

    raw: RawRecord
    rec: Any
    digest: bytes
    invalid: str | None = None
    #: the sequencing key, set once the record is ordered (normalise re-keys by item code)
    stream: str = ""
    #: id hash + payload digest, set by the sequencer (computed once per record)
    identity: bytes = b""


def digest(value: bytes) -> bytes:
    """Payload identity: Avro encoding is deterministic, so equal bytes = equal payload."""
    return hashlib.blake2b(value, digest_size=8).digest()


def decode(raw: RawRecord, schema: str) -> Decoded | DeadLetter:
    """Decode `raw.value` with `schema`; never raises on bad input."""
    if raw.value is None:
        return dead_letter(raw, Reason.UNDECODABLE, "record has no value (a tombstone?)")
    try:
        fields = codec(schema).decode(raw.value)
    except DecodeError as exc:
        return dead_letter(raw, Reason.UNDECODABLE, str(exc))
    model = MODELS[schema]
    try:
        rec = model.model_validate(fields)
        invalid = None
    except ValidationError as exc:
        rec = model.model_construct(**fields)
        invalid = describe_validation_error(exc)
    return Decoded(raw, rec, digest(raw.value), invalid)
