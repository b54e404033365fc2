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
from decimal import Decimal
from typing import Any, Literal, get_origin

from annotated_types import Ge
from pydantic import BaseModel, StringConstraints, ValidationError

from operators.models import (
    CarrierTrackingEvent,
    ErpInventoryDocument,
    ItemMaster,
    WmsFulfillmentEvent,
    WmsInventoryTransaction,
    describe_validation_error,
)
from operators.records import DeadLetter, RawRecord, Reason, dead_letter
from schemas import DecodeError, _avro, codec

__all__ = ["MODELS", "Decoded", "decode", "digest", "quick_model"]

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
    #: the sequencing key (source stream) and the normalising key (item code), set by the
    #: availability flow's sort step
    stream: str = ""
    code: str = ""
    #: id hash + payload digest, set by the sequencer (computed once per record)
    identity: bytes = b""


def digest(value: bytes) -> bytes:
    """Payload identity: Avro encoding is deterministic, so equal bytes = equal payload."""
    return hashlib.blake2b(value, digest_size=8).digest()


# -- the fast path for valid records ----------------------------------------------------------
#
# pydantic validation costs ~3 us a record, a tenth of the live job's own work per movement.
# For the flat models (every movement schema) the rules it checks on Avro-decoded values are
# few: codes not empty, sequence numbers from 1 (Avro already fixed the types and the enum
# symbols). `quick_model` checks those and builds the model the way `model_construct` does,
# several times faster; a record that breaks a rule goes to pydantic, which names the field.
# tests/test_decode.py proves it accepts exactly what pydantic accepts, with equal models.

_set = object.__setattr__
_NON_EMPTY = StringConstraints(min_length=1)


_Rules = tuple[type[BaseModel], tuple[str, ...], tuple[str, ...]]


def _quick_rules(model: type[BaseModel]) -> _Rules | None:
    """(model, non-empty string fields, fields >= 1), or None if the model checks anything else."""
    codes, positive = [], []
    for name, info in model.model_fields.items():
        hint, rules = info.annotation, list(info.metadata)
        if hint is str and rules == [_NON_EMPTY]:
            codes.append(name)
        elif hint is int and rules == [Ge(1)]:
            positive.append(name)
        elif rules:
            return None
        elif not (hint in (str, int, Decimal, str | None) or get_origin(hint) is Literal):
            return None
    return model, tuple(codes), tuple(positive)


_QUICK = {schema: _quick_rules(model) for schema, model in MODELS.items()}
#: the compiled twin of the checks and construction below (schemas/_avro.pyx), if built
_construct = getattr(_avro, "construct", None)


def quick_model(schema: str, fields: dict[str, Any]) -> BaseModel | None:
    """The model of Avro-decoded `fields` if it keeps the rules, without pydantic; else None."""
    rules = _QUICK[schema]
    if rules is None:
        return None
    if _construct is not None:
        return _construct(*rules, fields)  # type: ignore[no-any-return]
    model, codes, positive = rules
    for name in codes:
        if not fields[name]:
            return None
    for name in positive:
        if fields[name] < 1:
            return None
    rec = model.__new__(model)
    _set(rec, "__dict__", fields)
    _set(rec, "__pydantic_fields_set__", set(fields))
    _set(rec, "__pydantic_extra__", None)
    _set(rec, "__pydantic_private__", None)
    return rec


def decode(raw: RawRecord, schema: str) -> Decoded | DeadLetter:
    """Decode `raw.value` with `schema`; never raises on bad input."""
    if raw.value is None:
        return dead_letter(raw, Reason.UNDECODABLE, "record has no value (a tombstone?)")
    try:
        fields = codec(schema).decode(raw.value)
    except DecodeError as exc:
        return dead_letter(raw, Reason.UNDECODABLE, str(exc))
    rec = quick_model(schema, fields)
    if rec is not None:
        return Decoded(raw, rec, digest(raw.value), None)
    model = MODELS[schema]
    try:
        rec = model.model_validate(fields)
        invalid = None
    except ValidationError as exc:
        rec = model.model_construct(**fields)
        invalid = describe_validation_error(exc)
    return Decoded(raw, rec, digest(raw.value), invalid)
