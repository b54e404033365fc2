"""Small builders for the unit tests of the pure operators (no engine involved).

Each builder returns a valid record with plain defaults; keyword arguments change
single fields. Times are faked: event times are epoch milliseconds near
`EVENT_T0`, the processing clock is `NOW` (epoch seconds), passed in as `now`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from operators.decode import Decoded, decode
from operators.models import ItemMaster
from operators.normalise import Movement, stream_key
from operators.records import REPLAYED_HEADER, RawRecord
from operators.reference import Channels, Locations, load_channels, load_locations
from operators.sequencing import Sequencer, SequencerState
from schemas import codec, from_json

__all__ = [
    "CONFIG_DIR",
    "ERP_KINDS",
    "ERP_TOPIC",
    "EVENT_T0",
    "ITEMS_TOPIC",
    "NOW",
    "WMS_TOPIC",
    "avro_bytes",
    "carrier_scan_value",
    "erp_decoded",
    "erp_doc_value",
    "fulfillment_event_value",
    "item_master",
    "item_master_value",
    "movement",
    "new_sequencer",
    "raw_record",
    "decoded",
    "sample_channels",
    "sample_locations",
    "wms_decoded",
    "wms_txn_value",
]

#: 2026-01-01T00:00:00Z in epoch milliseconds: the default event_time.
EVENT_T0 = 1_767_225_600_000
#: The fake processing clock (epoch seconds): one hour after EVENT_T0.
NOW = EVENT_T0 / 1000 + 3600

WMS_TOPIC = "wms.inventory.transactions"
ERP_TOPIC = "erp.inventory.documents"
ITEMS_TOPIC = "ref.items"

#: The repository's sample config folder (atpflow.yaml, locations.yaml, channels.yaml).
CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"

ERP_KINDS = frozenset(
    {"SO_ALLOCATION", "SO_DEALLOCATION", "GOODS_ISSUE", "PO_CONFIRMED", "PO_RECEIVED",
     "STOCK_SNAPSHOT"}
)


# -- upstream values, as plain JSON (the fixture form) ----------------------------------------


def wms_txn_value(**changes: Any) -> dict[str, Any]:
    """A WmsInventoryTransaction: RECEIPT of 1 EA of ITM-1 at DC-ATL, seq 1."""
    value = {
        "txn_id": "T1", "facility": "DC-ATL", "item": "ITM-1", "txn_type": "RECEIPT",
        "qty": 1, "uom": "EA", "seq": 1, "event_time": EVENT_T0, "order_ref": None,
    }
    return _changed(value, changes)


def erp_doc_value(**changes: Any) -> dict[str, Any]:
    """An ErpInventoryDocument: SO_ALLOCATION of 1.000 EA of material 0001 at plant 1000."""
    value = {
        "doc_id": "D1", "doc_type": "SO_ALLOCATION", "plant": "1000", "material": "0001",
        "quantity": "1.000", "unit": "EA", "change_seq": 1, "posted_at": EVENT_T0,
        "sales_order": None,
    }
    return _changed(value, changes)


def item_master_value(**changes: Any) -> dict[str, Any]:
    """An ItemMaster: SKU-1 = WMS ITM-1 = ERP 0001, EA base, CS of 12, PL of 480."""
    value = {
        "sku": "SKU-1", "wms_item": "ITM-1", "erp_material": "0001", "base_uom": "EA",
        "uom_factors": {"EA": 1, "CS": 12, "PL": 480}, "active": True, "updated_at": EVENT_T0,
    }
    return _changed(value, changes)


def fulfillment_event_value(**changes: Any) -> dict[str, Any]:
    """A WmsFulfillmentEvent: order O1 SHIPPED in shipment S1 with one line."""
    value = {
        "event_id": "F1", "order_ref": "O1", "channel": "shopify-us", "channel_order_id": "1001",
        "facility": "DC-ATL", "status": "SHIPPED", "shipment_id": "S1", "carrier": "UPS",
        "tracking_number": "1Z999", "lines": [{"item": "ITM-1", "qty": 2, "uom": "EA"}],
        "seq": 1, "event_time": EVENT_T0,
    }
    return _changed(value, changes)


def carrier_scan_value(**changes: Any) -> dict[str, Any]:
    """A CarrierTrackingEvent: IN_TRANSIT scan of tracking number 1Z999."""
    value = {
        "event_id": "C1", "carrier": "UPS", "tracking_number": "1Z999", "status": "IN_TRANSIT",
        "location": "Atlanta, GA", "event_time": EVENT_T0,
    }
    return _changed(value, changes)


def _changed(value: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    unknown = set(changes) - set(value)
    if unknown:
        msg = f"not fields of this record: {sorted(unknown)}"
        raise TypeError(msg)
    return {**value, **changes}


# -- bytes, raw records, decoded records -----------------------------------------------------


def avro_bytes(schema: str, value: dict[str, Any]) -> bytes:
    """A plain-JSON value encoded as schemaless Avro, as the upstream system writes it."""
    return codec(schema).encode(from_json(schema, value))


def raw_record(
    value: bytes | None,
    *,
    topic: str = WMS_TOPIC,
    key: str | None = "DC-ATL|ITM-1",
    partition: int | None = 0,
    offset: int | None = 0,
    replayed: bool = False,
) -> RawRecord:
    """A Kafka record; `replayed` adds the header of `atpflow dead-letters replay`."""
    headers = ((REPLAYED_HEADER, b"1"),) if replayed else ()
    return RawRecord(topic, partition, offset, key, value, timestamp=None, headers=headers)


def decoded(schema: str, value: dict[str, Any], *, topic: str, offset: int = 0,
            replayed: bool = False) -> Decoded:
    """Encode and decode `value` through the real decode step; it must decode."""
    raw = raw_record(avro_bytes(schema, value), topic=topic, offset=offset, replayed=replayed)
    d = decode(raw, schema)
    assert isinstance(d, Decoded), d
    return d


def wms_decoded(*, offset: int = 0, replayed: bool = False, **changes: Any) -> Decoded:
    """A decoded WMS transaction (see `wms_txn_value` for the defaults)."""
    d = decoded("WmsInventoryTransaction", wms_txn_value(**changes), topic=WMS_TOPIC,
                offset=offset, replayed=replayed)
    d.stream = stream_key(d.rec)
    return d


def erp_decoded(*, offset: int = 0, replayed: bool = False, **changes: Any) -> Decoded:
    """A decoded ERP document (see `erp_doc_value` for the defaults)."""
    d = decoded("ErpInventoryDocument", erp_doc_value(**changes), topic=ERP_TOPIC,
                offset=offset, replayed=replayed)
    d.stream = stream_key(d.rec)
    return d


def item_master(**changes: Any) -> ItemMaster:
    """A validated ItemMaster (see `item_master_value` for the defaults)."""
    return ItemMaster.model_validate(item_master_value(**changes))


# -- units under test -----------------------------------------------------------------------


def new_sequencer(
    *, gap_timeout: float = 30.0, max_buffered: int = 1000, max_clock_skew: float = 3600.0
) -> Sequencer:
    """A Sequencer with fresh state and the contract's defaults."""
    return Sequencer(
        SequencerState(),
        gap_timeout=gap_timeout,
        max_buffered=max_buffered,
        max_clock_skew=max_clock_skew,
        stream_key=stream_key,
    )


def movement(
    kind: str,
    qty: int,
    *,
    seq: int = 1,
    warehouse: str = "ATL1",
    sku: str = "SKU-1",
    event_time: int = EVENT_T0,
    source_id: str | None = None,
    replayed: bool = False,
) -> Movement:
    """A canonical movement; the source (wms/erp) follows from the kind."""
    source = "erp" if kind in ERP_KINDS else "wms"
    topic = ERP_TOPIC if source == "erp" else WMS_TOPIC
    rid = source_id if source_id is not None else f"{kind}-{seq}"
    raw = raw_record(b"", topic=topic, key=None, offset=seq, replayed=replayed)
    return Movement(sku, warehouse, source, rid, seq, kind, qty, event_time, raw)


def sample_locations() -> Locations:
    """config/locations.yaml: ATL1=DC-ATL/1000, DAL1=DC-DAL/2000, RNO1=DC-RNO/3000."""
    return load_locations(CONFIG_DIR / "locations.yaml")


def sample_channels() -> Channels:
    """config/channels.yaml: shopify-us, amazon-us, b2b-portal."""
    return load_channels(CONFIG_DIR / "channels.yaml")
