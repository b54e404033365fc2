"""Values passed between the sinks and the adapters, and the dead letters they produce."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

__all__ = [
    "FulfillmentLine",
    "FulfillmentRequest",
    "InventoryUpdate",
    "MarketplaceDeadLetter",
    "PushResult",
    "PushStatus",
    "idempotency_key",
    "record_key",
]

#: Namespace of the idempotency keys: a UUIDv5 is what Shopify recommends a key look like
#: (https://shopify.dev/docs/api/usage/idempotent-requests), and a v5 one is deterministic.
_NAMESPACE = uuid.UUID("6f1d8f1e-7a43-4c0b-9a55-6a7466c0a7f1")


def record_key(record: Mapping[str, Any]) -> str:
    """The topic key of an availability record: ``sku`` or ``sku|warehouse``."""
    location = record.get("location")
    return f"{record['sku']}|{location}" if location else str(record["sku"])


def idempotency_key(channel: str, parts: Sequence[object]) -> str:
    """A deterministic UUID from the channel and the parts that make a request distinct.

    The same update retried yields the same key (so the API can recognise the duplicate); any
    change of parameters yields a new one (reusing a key with other parameters is an error,
    IDEMPOTENCY_KEY_PARAMETER_MISMATCH).
    """
    digest = hashlib.sha256("\x1f".join([channel, *map(str, parts)]).encode()).hexdigest()
    return str(uuid.uuid5(_NAMESPACE, digest))


@dataclass(frozen=True, slots=True)
class InventoryUpdate:
    """Set the available quantity of one key: ``quantity`` as of record ``version``.

    ``expected`` is the quantity we believe is live (the compare-and-swap value), or None when
    we do not know it.
    """

    key: str
    version: int
    quantity: int
    expected: int | None = None


class PushStatus(Enum):
    APPLIED = "applied"  # the API applied it
    PENDING = "pending"  # accepted for asynchronous processing (Amazon ACCEPTED)
    REJECTED = "rejected"  # permanently refused: dead-letter it
    RETRY = "retry"  # refused for now: retry later (burns an attempt)


@dataclass(frozen=True, slots=True)
class PushResult:
    """What became of one `InventoryUpdate` (or one fulfillment request)."""

    key: str
    version: int
    status: PushStatus
    http_status: int | None = None
    #: The API's answer for this item, redacted and cut; the dead letter carries it.
    detail: str = ""
    #: A code for humans and dashboards: a userError code, an SP-API issue code, ...
    code: str = ""
    #: The quantity the API holds now, when the adapter learnt it on the way.
    remote_quantity: int | None = None


@dataclass(frozen=True, slots=True)
class FulfillmentLine:
    sku: str
    qty: int


@dataclass(frozen=True, slots=True)
class FulfillmentRequest:
    """One shipment to report to the selling channel, with its tracking.

    The input of the fulfillment pushes (Shopify fulfillmentCreate, Amazon confirmShipment),
    built from a ``SHIPMENT``-level ``SHIPPED`` milestone by `FulfillmentRequest.from_mapping`.
    """

    channel: str
    channel_order_id: str
    shipment_id: str
    carrier: str
    tracking_number: str
    lines: tuple[FulfillmentLine, ...]
    #: When the shipment left, epoch ms (Amazon's shipDate); None means now.
    shipped_at: int | None = None

    @property
    def key(self) -> str:
        """Identity of the push: one fulfillment per shipment of an order."""
        return f"{self.channel_order_id}|{self.shipment_id}"

    def to_dict(self) -> dict[str, Any]:
        """The input dict form (what `from_mapping` reads)."""
        return {
            "channel": self.channel,
            "channel_order_id": self.channel_order_id,
            "shipment_id": self.shipment_id,
            "carrier": self.carrier,
            "tracking_number": self.tracking_number,
            "lines": [{"sku": line.sku, "qty": line.qty} for line in self.lines],
            "shipped_at": self.shipped_at,
        }

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> FulfillmentRequest:
        """Build from the designed input dict, or from a shipment milestone record.

        Input dict: ``{"channel", "channel_order_id", "shipment_id", "carrier",
        "tracking_number", "lines": [{"sku", "qty"}], "shipped_at"?}``. Milestone records may
        name the line quantity ``quantity`` and the time ``occurred_at``; both are accepted.
        """
        lines = tuple(
            FulfillmentLine(sku=str(line["sku"]), qty=int(line.get("qty", line.get("quantity", 0))))
            for line in data.get("lines") or ()
        )
        if not lines or any(line.qty <= 0 for line in lines):
            raise ValueError("a fulfillment needs lines with positive quantities")
        for name in ("channel", "channel_order_id", "shipment_id", "carrier", "tracking_number"):
            if not data.get(name):
                raise ValueError(f"a fulfillment needs a non-empty {name!r}")
        shipped_at = data.get("shipped_at", data.get("occurred_at"))
        return cls(
            channel=str(data["channel"]),
            channel_order_id=str(data["channel_order_id"]),
            shipment_id=str(data["shipment_id"]),
            carrier=str(data["carrier"]),
            tracking_number=str(data["tracking_number"]),
            lines=lines,
            shipped_at=int(shipped_at) if shipped_at is not None else None,
        )


@dataclass(frozen=True, slots=True)
class MarketplaceDeadLetter:
    """An update the marketplace would not take, handed to the dead-letter callback.

    ``response`` is the API's answer, redacted (no secret ever reaches it) and cut to 2,000
    characters. A later record of the same key supersedes it: the sink pushes that one as usual.
    """

    channel: str
    key: str
    operation: str
    reason: str  # REJECTED | RETRY_BUDGET_EXHAUSTED | UNMAPPED_KEY
    attempts: int
    http_status: int | None
    code: str
    response: str
    version: int | None = None
    record: Mapping[str, Any] | None = None
    at_ms: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form, e.g. for the ``atpflow.dead-letter`` topic."""
        return {
            "channel": self.channel,
            "key": self.key,
            "operation": self.operation,
            "reason": self.reason,
            "attempts": self.attempts,
            "http_status": self.http_status,
            "code": self.code,
            "response": self.response,
            "version": self.version,
            "record": dict(self.record) if self.record is not None else None,
            "at_ms": self.at_ms,
            **({"extra": dict(self.extra)} if self.extra else {}),
        }
