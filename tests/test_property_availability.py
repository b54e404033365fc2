"""Shuffled, duplicated, delayed delivery ends on the same channel availability as in-order.

The oracle below is written from the contract's tables directly (no atpflow code),
so a shared mistake in the operators cannot make both sides agree.
"""

from __future__ import annotations

from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators.records import RawRecord
from schemas import codec, from_json
from tests.flowtest import last_per_key, run_flow, sample_config

T0 = 1_767_225_600_000
FACTORS = {"EA": 1, "CS": 12}
WAREHOUSES = {"ATL1": ("DC-ATL", "1000"), "DAL1": ("DC-DAL", "2000"), "RNO1": ("DC-RNO", "3000")}
SKUS = ("SKU-1", "SKU-2")
WMS_KINDS = ["RECEIPT", "PICK", "SHIP", "ADJUST", "CYCLE_COUNT", "TRANSFER_OUT", "TRANSFER_IN",
             "HOLD", "RELEASE_HOLD", "RETURN"]
ERP_KINDS = ["SO_ALLOCATION", "SO_DEALLOCATION", "GOODS_ISSUE", "PO_CONFIRMED", "PO_RECEIVED",
             "STOCK_SNAPSHOT"]
CONFIG = sample_config()


def _raw(topic: str, schema: str, key: str, value: dict) -> RawRecord:
    return RawRecord(topic, 0, None, key, codec(schema).encode(from_json(schema, value)))


def _items() -> list[RawRecord]:
    return [_raw("ref.items", "ItemMaster", sku, {
        "sku": sku, "wms_item": f"I-{sku}", "erp_material": f"000{sku}", "base_uom": "EA",
        "uom_factors": FACTORS, "active": True, "updated_at": T0}) for sku in SKUS]


movement = st.tuples(
    st.sampled_from(SKUS), st.sampled_from(sorted(WAREHOUSES)), st.booleans(),
    st.integers(0, 9), st.integers(0, 30), st.sampled_from(sorted(FACTORS)),
)


def _history(draws: list[tuple]) -> list[tuple[RawRecord, tuple]]:
    """Valid in-order records, with the canonical (sku, wh, source, kind, base qty) of each."""
    seqs: dict[tuple, int] = {}
    out = []
    for i, (sku, wh, is_wms, k, qty, uom) in enumerate(draws):
        facility, plant = WAREHOUSES[wh]
        t = T0 + i * 1000
        if is_wms:
            kind = WMS_KINDS[k % len(WMS_KINDS)]
            n = seqs[("wms", sku, wh)] = seqs.get(("wms", sku, wh), 0) + 1
            raw = _raw("wms.inventory.transactions", "WmsInventoryTransaction", f"{facility}|I-{sku}", {
                "txn_id": f"T{i}", "facility": facility, "item": f"I-{sku}", "txn_type": kind,
                "qty": qty, "uom": uom, "seq": n, "event_time": t, "order_ref": None})
        else:
            kind = ERP_KINDS[k % len(ERP_KINDS)]
            n = seqs[("erp", sku, wh)] = seqs.get(("erp", sku, wh), 0) + 1
            raw = _raw("erp.inventory.documents", "ErpInventoryDocument", f"{plant}|000{sku}", {
                "doc_id": f"D{i}", "doc_type": kind, "plant": plant, "material": f"000{sku}",
                "quantity": str(Decimal(qty)), "unit": uom, "change_seq": n, "posted_at": t,
                "sales_order": None})
        out.append((raw, (sku, wh, kind, qty * FACTORS[uom])))
    return out


def _oracle(history: list[tuple[RawRecord, tuple]]) -> dict[tuple[str, str | None], int]:
    cells: dict[tuple[str, str], dict[str, int]] = {}
    for _, (sku, wh, kind, q) in history:
        c = cells.setdefault((sku, wh), {"on_hand": 0, "hold": 0, "reserved": 0, "incoming": 0})
        match kind:
            case "RECEIPT" | "RETURN" | "TRANSFER_IN" | "ADJUST": c["on_hand"] += q
            case "SHIP" | "TRANSFER_OUT": c["on_hand"] -= q
            case "CYCLE_COUNT": c["on_hand"] = q
            case "HOLD": c["hold"] += q
            case "RELEASE_HOLD": c["hold"] -= q
            case "SO_ALLOCATION": c["reserved"] += q
            case "SO_DEALLOCATION" | "GOODS_ISSUE": c["reserved"] -= q
            case "PO_CONFIRMED": c["incoming"] += q
            case "PO_RECEIVED": c["incoming"] -= q
    expected = {}
    for ch in CONFIG.channels.channels:
        for sku in SKUS:
            groups = [(wh, [wh]) for wh in ch.warehouses] if ch.per_location else [(None, list(ch.warehouses))]
            for loc, whs in groups:
                present = [cells[(sku, w)] for w in whs if (sku, w) in cells]
                if not present:
                    continue
                base = sum(max(0, c["on_hand"] - c["hold"] - c["reserved"]) for c in present)
                if ch.include_incoming:
                    base += sum(max(0, c["incoming"]) for c in present)
                avail = min(ch.max_qty, max(0, (base * int(ch.share_pct)) // 100 - ch.buffer_units))
                avail = 0 if avail < ch.min_qty else avail
                key = sku if loc is None else f"{sku}|{loc}"
                expected[(f"availability.{ch.id}", key)] = avail
    return expected


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    draws=st.lists(movement, min_size=1, max_size=40),
    data=st.data(),
)
def test_shuffled_duplicated_delayed_delivery_converges(draws: list[tuple], data: st.DataObject) -> None:
    history = _history(draws)
    records = [raw for raw, _ in history]
    dupes = data.draw(st.lists(st.sampled_from(records), max_size=10), label="redelivered")
    delivered = data.draw(st.permutations(records + dupes), label="delivery order")
    items_first = data.draw(st.booleans(), label="item master first")
    stream = _items() + delivered if items_first else delivered + _items()
    outputs = run_flow(stream, CONFIG)
    assert last_per_key(outputs) == _oracle(history)
    assert not [o for o in outputs if o.topic == "atpflow.dead-letter"]
