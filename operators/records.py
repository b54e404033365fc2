"""The records that flow between atpflow's steps.

Plain slotted dataclasses and NamedTuples, not pydantic: they are built once per
input record in the hot path and deep-copied into snapshots, so they stay small and cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

__all__ = [
    "REPLAYED_HEADER",
    "DeadLetter",
    "Output",
    "RawRecord",
    "Reason",
    "dead_letter",
    "short",
]

#: Header set by `atpflow dead-letters replay` on a record sent back to its topic.
REPLAYED_HEADER = "atpflow-replayed"


class Reason:
    """Dead-letter reasons, in the contract's order of precedence."""

    UNDECODABLE = "UNDECODABLE"
    INVALID_RECORD = "INVALID_RECORD"
    CONFLICTING_DUPLICATE = "CONFLICTING_DUPLICATE"
    INVALID_EVENT_TIME = "INVALID_EVENT_TIME"
    UNKNOWN_LOCATION = "UNKNOWN_LOCATION"
    UNKNOWN_CHANNEL = "UNKNOWN_CHANNEL"
    UNKNOWN_ITEM = "UNKNOWN_ITEM"
    UNKNOWN_UOM = "UNKNOWN_UOM"
    FRACTIONAL_QUANTITY = "FRACTIONAL_QUANTITY"
    INVALID_QUANTITY = "INVALID_QUANTITY"
    UNKNOWN_TRACKING = "UNKNOWN_TRACKING"
    LATE_SUPERSEDED = "LATE_SUPERSEDED"
    SEQUENCE_GAP = "SEQUENCE_GAP"


class RawRecord(NamedTuple):
    """One Kafka record as it arrived (or as a fixture line describes it).

    A NamedTuple: one is built per input record, ~8x cheaper than a frozen dataclass.
    """

    topic: str
    partition: int | None
    offset: int | None
    key: str | None
    value: bytes | None
    timestamp: int | None = None
    headers: tuple[tuple[str, bytes], ...] = ()

    @property
    def replayed(self) -> bool:
        """Sent back by `atpflow dead-letters replay`: skips the sequence check."""
        return bool(self.headers) and any(k == REPLAYED_HEADER for k, _ in self.headers)


@dataclass(slots=True)
class DeadLetter:
    """A record that could not be applied, with everything needed to replay it."""

    reason: str
    detail: str
    topic: str
    partition: int | None
    offset: int | None
    key: str | None
    value: bytes | None
    source_id: str | None = None
    gap: dict[str, Any] | None = field(default=None)

    def as_avro(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "detail": self.detail,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "key": self.key,
            "value": self.value,
            "source_id": self.source_id,
            "gap": self.gap,
        }


#: Longest detail kept: a detail quotes fields, and a hostile field can be megabytes.
MAX_DETAIL = 500


def short(text: str, limit: int = MAX_DETAIL) -> str:
    """`text`, cut to `limit` characters with a note of how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit:,} more characters)"


def dead_letter(raw: RawRecord, reason: str, detail: str, source_id: str | None = None) -> DeadLetter:
    """A dead letter for `raw`, keeping its coordinates and bytes (the detail cut short)."""
    return DeadLetter(
        reason, short(detail), raw.topic, raw.partition, raw.offset, raw.key, raw.value,
        None if source_id is None else short(source_id, 200),
    )


class Output(NamedTuple):
    """One record for an output topic: the schema names its codec."""

    topic: str
    key: str | None
    schema: str
    #: the record, or its Avro encoding where only the Kafka sink reads it (`ProjectShard`)
    value: dict[str, Any] | bytes
    #: input record timestamp (ms) of the record that caused it, for latency metrics
    input_ts: int | None = None
    event_time: int | None = None
    #: the source of the record that caused it (wms, erp, fulfillment, carrier)
    source: str | None = None
