"""Pydantic models of the upstream records, with the schemas' documented rules.

Avro already guarantees the types; these models add what the schema docs say
in words (codes are never empty, sequences start at 1, factors are positive),
so that a record breaking them becomes an `INVALID_RECORD` naming the field.
Quantity and time rules are not here: they have their own dead-letter reasons
and are checked later, in the contract's order.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

__all__ = [
    "CarrierTrackingEvent",
    "ErpInventoryDocument",
    "FulfillmentLine",
    "ItemMaster",
    "WmsFulfillmentEvent",
    "WmsInventoryTransaction",
    "describe_validation_error",
]

Code = Annotated[str, StringConstraints(min_length=1)]
Seq = Annotated[int, Field(ge=1)]

WmsTxnType = Literal[
    "RECEIPT", "PICK", "SHIP", "ADJUST", "CYCLE_COUNT",
    "TRANSFER_OUT", "TRANSFER_IN", "HOLD", "RELEASE_HOLD", "RETURN",
]
ErpDocType = Literal[
    "SO_ALLOCATION", "SO_DEALLOCATION", "GOODS_ISSUE", "PO_CONFIRMED", "PO_RECEIVED",
    "STOCK_SNAPSHOT",
]

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class WmsInventoryTransaction(BaseModel):
    model_config = _FROZEN
    source: ClassVar[str] = "wms"

    txn_id: Code
    facility: Code
    item: Code
    txn_type: WmsTxnType
    qty: int
    uom: Code
    seq: Seq
    event_time: int
    order_ref: str | None = None

    @property
    def record_id(self) -> str:
        return self.txn_id

    @property
    def kind(self) -> str:
        return self.txn_type


class ErpInventoryDocument(BaseModel):
    model_config = _FROZEN
    source: ClassVar[str] = "erp"

    doc_id: Code
    doc_type: ErpDocType
    plant: Code
    material: Code
    quantity: Decimal
    unit: Code
    change_seq: Seq
    posted_at: int
    sales_order: str | None = None

    @property
    def record_id(self) -> str:
        return self.doc_id

    @property
    def seq(self) -> int:
        return self.change_seq

    @property
    def event_time(self) -> int:
        return self.posted_at

    @property
    def kind(self) -> str:
        return self.doc_type


class ItemMaster(BaseModel):
    model_config = _FROZEN

    sku: Code
    wms_item: Code
    erp_material: Code
    base_uom: Code
    uom_factors: dict[Code, Annotated[int, Field(gt=0)]]
    active: bool = True
    updated_at: int


class FulfillmentLine(BaseModel):
    model_config = _FROZEN

    item: Code
    qty: int
    uom: Code


class WmsFulfillmentEvent(BaseModel):
    model_config = _FROZEN
    source: ClassVar[str] = "fulfillment"

    event_id: Code
    order_ref: Code
    channel: Code
    channel_order_id: Code
    facility: Code
    status: Literal["RELEASED", "PICKED", "PACKED", "SHIPPED", "CANCELLED"]
    shipment_id: str | None = None
    carrier: str | None = None
    tracking_number: str | None = None
    lines: tuple[FulfillmentLine, ...] = ()
    seq: Seq
    event_time: int

    @property
    def record_id(self) -> str:
        return self.event_id

    @property
    def kind(self) -> str:
        return self.status


class CarrierTrackingEvent(BaseModel):
    model_config = _FROZEN
    source: ClassVar[str] = "carrier"

    event_id: Code
    carrier: Code
    tracking_number: Code
    status: Literal[
        "LABEL_CREATED", "IN_TRANSIT", "OUT_FOR_DELIVERY", "DELIVERED", "EXCEPTION",
        "RETURNED_TO_SENDER",
    ]
    location: str | None = None
    event_time: int

    @property
    def record_id(self) -> str:
        return self.event_id


def describe_validation_error(exc: ValidationError) -> str:
    """One line per broken rule, each naming the field: 'facility: must not be empty'."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "record"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)
