"""`atpflow generate`: seeded, realistic synthetic fixtures.

Writes the item master first, then movements over `skus` x 3 warehouses from
both sources, in the recorded-fixture format. Knobs inject what real feeds
do: redeliveries (exact duplicates), late delivery (a record held back a few
hundred positions), lost records (gaps that never fill) and poison (bytes
that do not decode, unknown locations, unknown units). Streaming: memory
does not grow with the number of movements.
"""

from __future__ import annotations

import base64
import heapq
import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Knobs", "generate"]

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
FACILITIES = {"ATL1": ("DC-ATL", "1000"), "DAL1": ("DC-DAL", "2000"), "RNO1": ("DC-RNO", "3000")}
FACTORS = {"EA": 1, "CS": 12, "PL": 480}
WMS_TYPES = [
    ("RECEIPT", 14), ("PICK", 16), ("SHIP", 16), ("ADJUST", 3), ("CYCLE_COUNT", 2),
    ("TRANSFER_OUT", 2), ("TRANSFER_IN", 2), ("HOLD", 2), ("RELEASE_HOLD", 2), ("RETURN", 2),
]
ERP_TYPES = [
    ("SO_ALLOCATION", 20), ("SO_DEALLOCATION", 3), ("GOODS_ISSUE", 15), ("PO_CONFIRMED", 4),
    ("PO_RECEIVED", 4), ("STOCK_SNAPSHOT", 1),
]


@dataclass(frozen=True)
class Knobs:
    movements: int = 10_000
    skus: int = 100
    seed: int = 7
    duplicate_rate: float = 0.02
    reorder_rate: float = 0.05
    gap_rate: float = 0.001
    poison_rate: float = 0.001
    #: how far (in records) a late record is held back, at most
    max_delay: int = 300


def _weighted(rng: random.Random, table: list[tuple[str, int]]) -> str:
    return rng.choices([t for t, _ in table], [w for _, w in table])[0]


def _items(knobs: Knobs) -> list[dict[str, Any]]:
    return [
        {"topic": "ref.items", "key": f"SKU-{i:06d}", "value": {
            "sku": f"SKU-{i:06d}", "wms_item": f"ITM-{i:07d}", "erp_material": f"{i:018d}",
            "base_uom": "EA", "uom_factors": FACTORS, "active": True, "updated_at": T0,
        }}
        for i in range(knobs.skus)
    ]


class _Streams:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.seq: Counter[tuple[str, str, str]] = Counter()
        self.n = 0

    def movement(self, sku: int, wh: str, t: int) -> dict[str, Any]:
        rng = self.rng
        facility, plant = FACILITIES[wh]
        self.n += 1
        if rng.random() < 0.6:
            kind = _weighted(rng, WMS_TYPES)
            self.seq[("wms", facility, sku)] += 1
            uom = rng.choice(("EA", "EA", "EA", "CS"))
            qty = rng.randint(1, 40) if uom == "EA" else rng.randint(1, 4)
            if kind == "ADJUST":
                qty = rng.randint(-5, 5)
            if kind == "CYCLE_COUNT":
                uom, qty = "EA", rng.randint(0, 500)
            item = f"ITM-{sku:07d}"
            return {"topic": "wms.inventory.transactions", "key": f"{facility}|{item}", "value": {
                "txn_id": f"T{self.n}", "facility": facility, "item": item, "txn_type": kind,
                "qty": qty, "uom": uom, "seq": self.seq[("wms", facility, sku)],
                "event_time": t, "order_ref": None,
            }}
        kind = _weighted(rng, ERP_TYPES)
        self.seq[("erp", plant, sku)] += 1
        material = f"{sku:018d}"
        unit, qty = rng.choice((("EA", f"{rng.randint(1, 30)}.000"), ("CS", f"{rng.randint(1, 3)}.000"),
                                ("PL", "0.025")))
        return {"topic": "erp.inventory.documents", "key": f"{plant}|{material}", "value": {
            "doc_id": f"D{self.n}", "doc_type": kind, "plant": plant, "material": material,
            "quantity": qty, "unit": unit, "change_seq": self.seq[("erp", plant, sku)],
            "posted_at": t, "sales_order": None,
        }}


def _poison(rng: random.Random, n: int, t: int) -> dict[str, Any]:
    roll = rng.random()
    if roll < 0.4:
        return {"topic": "wms.inventory.transactions", "key": "DC-ATL|ITM-0000000",
                "value_b64": base64.b64encode(rng.randbytes(rng.randint(1, 40))).decode()}
    if roll < 0.7:
        return {"topic": "wms.inventory.transactions", "key": "DC-XXX|ITM-0000000", "value": {
            "txn_id": f"X{n}", "facility": "DC-XXX", "item": "ITM-0000000", "txn_type": "RECEIPT",
            "qty": 1, "uom": "EA", "seq": n, "event_time": t, "order_ref": None}}
    return {"topic": "wms.inventory.transactions", "key": "DC-ATL|ITM-NOPE", "value": {
        "txn_id": f"Y{n}", "facility": "DC-ATL", "item": "ITM-NOPE", "txn_type": "RECEIPT",
        "qty": 1, "uom": "EA", "seq": 1, "event_time": t, "order_ref": None}}


def generate(knobs: Knobs, out: Path) -> Counter[str]:
    """Write the fixture; returns records written per topic."""
    rng = random.Random(knobs.seed)
    streams = _Streams(rng)
    counts: Counter[str] = Counter()
    recent: list[dict[str, Any]] = []
    held: list[tuple[int, int, dict[str, Any]]] = []  # (release position, tiebreak, record)
    warehouses = list(FACILITIES)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as fh:

        def write(rec: dict[str, Any]) -> None:
            fh.write(json.dumps(rec, separators=(",", ":")))
            fh.write("\n")
            counts[rec["topic"]] += 1

        for rec in _items(knobs):
            write(rec)
        for i in range(knobs.movements):
            t = T0 + i * 10
            while held and held[0][0] <= i:
                write(heapq.heappop(held)[2])
            if rng.random() < knobs.poison_rate:
                write(_poison(rng, i, t))
                continue
            rec = streams.movement(rng.randrange(knobs.skus), rng.choice(warehouses), t)
            roll = rng.random()
            if roll < knobs.gap_rate:
                continue  # lost upstream: a gap that never fills
            if roll < knobs.gap_rate + knobs.reorder_rate:
                heapq.heappush(held, (i + rng.randint(1, knobs.max_delay), i, rec))
            else:
                write(rec)
            recent.append(rec)
            if len(recent) > 1000:
                del recent[:500]
            if rng.random() < knobs.duplicate_rate:
                write(rng.choice(recent))
        while held:
            write(heapq.heappop(held)[2])
    return counts
