"""Normalise: ordered source records to canonical movements.

Runs on the ordered stream, keyed by the source's item code (`wms|<item>` or
`erp|<material>`), because every record of a stream names the same item: the
item-master entry for that code lives in the same state, so a stream whose
item is unknown parks whole, in order, and resumes the moment the item master
names the item. Location look-ups are static reference data.

`ItemRouter` (keyed by sku) turns the `ref.items` stream into updates for the
code keys, including the retraction of a code an item no longer uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import NamedTuple

from operators.decode import Decoded
from operators.models import ItemMaster
from operators.records import DeadLetter, RawRecord, Reason, dead_letter
from operators.reference import Locations

__all__ = [
    "MAX_QTY",
    "CodeState",
    "ItemRouter",
    "Movement",
    "Normaliser",
    "Unmap",
    "code_key",
    "stream_key",
    "to_movement",
]

#: Any quantity over 10^9 base units is INVALID_QUANTITY.
MAX_QTY = 1_000_000_000
#: WMS types whose quantity may be negative.
SIGNED_KINDS = frozenset({"ADJUST"})


def stream_key(rec: object) -> str:
    """The sequencing key: the source's own codes (no reference data needed)."""
    if rec.source == "erp":  # type: ignore[attr-defined]
        return f"erp|{rec.plant}|{rec.material}"  # type: ignore[attr-defined]
    return f"wms|{rec.facility}|{rec.item}"  # type: ignore[attr-defined]


def code_key(rec: object) -> str:
    """The normalising key: the source's item code."""
    if rec.source == "erp":  # type: ignore[attr-defined]
        return f"erp|{rec.material}"  # type: ignore[attr-defined]
    return f"wms|{rec.item}"  # type: ignore[attr-defined]


class Movement(NamedTuple):
    """The canonical movement: one applied change to one (sku, warehouse) cell.

    A NamedTuple: one is built per applied record, several times cheaper than a frozen dataclass.
    """

    sku: str
    warehouse: str
    source: str
    source_id: str
    seq: int
    kind: str
    qty: int
    event_time: int
    raw: RawRecord


_tuple_new = tuple.__new__


@dataclass(slots=True, frozen=True)
class Unmap:
    """The item master moved `sku` off this code: forget the old mapping."""

    sku: str


def to_movement(d: Decoded, warehouse: str, item: ItemMaster) -> Movement | DeadLetter:
    """Units to base units and the quantity rules, in the contract's order."""
    rec = d.rec
    # The models' fields, not their `record_id`/`seq`/... properties: once per applied record.
    if rec.source == "erp":
        source, rid, seq, kind, event_time = "erp", rec.doc_id, rec.change_seq, rec.doc_type, rec.posted_at
        unit, qty_in = rec.unit, rec.quantity
    else:
        source, rid, seq, kind, event_time = "wms", rec.txn_id, rec.seq, rec.txn_type, rec.event_time
        unit, qty_in = rec.uom, rec.qty
    if not item.active:
        return dead_letter(d.raw, Reason.UNKNOWN_ITEM, f"sku {item.sku} is retired", rid)
    factor = item.uom_factors.get(unit)
    if factor is None:
        units = ", ".join(sorted(item.uom_factors))
        detail = f"unit {unit!r} is not in uom_factors of sku {item.sku} ({units})"
        return dead_letter(d.raw, Reason.UNKNOWN_UOM, detail, rid)
    if isinstance(qty_in, Decimal):
        base = qty_in * factor
        if base != base.to_integral_value():
            detail = f"quantity {qty_in} {unit} x {factor} = {base} is not a whole number of {item.base_uom}"
            return dead_letter(d.raw, Reason.FRACTIONAL_QUANTITY, detail, rid)
        qty = int(base)
    else:
        qty = qty_in * factor
    if (qty < 0 and kind not in SIGNED_KINDS) or source == "erp" and qty < 0:
        detail = f"negative quantity {qty_in} is not allowed for {kind}"
        return dead_letter(d.raw, Reason.INVALID_QUANTITY, detail, rid)
    if abs(qty) > MAX_QTY:
        detail = f"quantity {qty} {item.base_uom} is over the limit of {MAX_QTY}"
        return dead_letter(d.raw, Reason.INVALID_QUANTITY, detail, rid)
    # tuple.__new__ skips the NamedTuple's Python-level __new__ (same object, ~0.2 us less).
    return _tuple_new(Movement, (item.sku, warehouse, source, rid, seq, kind, qty, event_time, d.raw))


@dataclass(slots=True)
class CodeState:
    """Per item code: its item-master entry and the streams parked behind it."""

    item: ItemMaster | None = None
    #: stream key -> parked records, in order
    parked: dict[str, list[Decoded]] = field(default_factory=dict)
    #: stream key -> processing time its first parked record arrived
    parked_since: dict[str, float] = field(default_factory=dict)


class Normaliser:
    """Look-ups, parking and unit conversion for one item code."""

    def __init__(self, state: CodeState, locations: Locations, unknown_item_timeout: float) -> None:
        self.state = state
        self.locations = locations
        self.timeout = unknown_item_timeout

    def on_record(self, d: Decoded, stream: str, now: float) -> list[Movement | DeadLetter]:
        rec = d.rec
        code = rec.plant if rec.source == "erp" else rec.facility
        warehouse = self.locations.warehouse_for(rec.source, code)
        if warehouse is None:
            what = "plant" if rec.source == "erp" else "facility"
            detail = f"{what} {code!r} is not in locations"
            return [dead_letter(d.raw, Reason.UNKNOWN_LOCATION, detail, rec.record_id)]
        st = self.state
        if stream in st.parked or st.item is None:
            st.parked.setdefault(stream, []).append(d)
            st.parked_since.setdefault(stream, now)
            return []
        return [to_movement(d, warehouse, st.item)]

    def on_item(self, update: ItemMaster | Unmap) -> list[Movement | DeadLetter]:
        """A new item-master entry for this code: resume every parked stream."""
        st = self.state
        if isinstance(update, Unmap):
            if st.item is not None and st.item.sku == update.sku:
                st.item = None
            return []
        st.item = update
        out: list[Movement | DeadLetter] = []
        parked, st.parked, st.parked_since = st.parked, {}, {}
        for stream, records in parked.items():
            for d in records:
                out += self.on_record(d, stream, 0.0)
        return out

    def expire(self, now: float | None) -> list[DeadLetter]:
        """Dead-letter streams parked too long (`now=None`: all, at end of replay)."""
        st = self.state
        out: list[DeadLetter] = []
        for stream in list(st.parked):
            if now is not None and now < st.parked_since[stream] + self.timeout:
                continue
            for d in st.parked.pop(stream):
                code = d.rec.material if d.rec.source == "erp" else d.rec.item
                detail = f"item {code!r} unknown to the item master"
                detail += " at end of input" if now is None else f" after {self.timeout:g}s"
                out.append(dead_letter(d.raw, Reason.UNKNOWN_ITEM, detail, d.rec.record_id))
            del st.parked_since[stream]
        return out

    def next_deadline(self) -> float | None:
        if not self.state.parked_since:
            return None
        return min(self.state.parked_since.values()) + self.timeout

    @property
    def parked_count(self) -> int:
        parked = self.state.parked
        return sum(len(v) for v in parked.values()) if parked else 0


class ItemRouter:
    """Per sku: fan an item-master record out to its WMS and ERP code keys."""

    def __init__(self, last: ItemMaster | None) -> None:
        self.last = last

    def on_item(self, item: ItemMaster) -> list[tuple[str, ItemMaster | Unmap]]:
        out: list[tuple[str, ItemMaster | Unmap]] = []
        old = self.last
        if old is not None and old.wms_item != item.wms_item:
            out.append((f"wms|{old.wms_item}", Unmap(item.sku)))
        if old is not None and old.erp_material != item.erp_material:
            out.append((f"erp|{old.erp_material}", Unmap(item.sku)))
        out.append((f"wms|{item.wms_item}", item))
        out.append((f"erp|{item.erp_material}", item))
        self.last = item
        return out
