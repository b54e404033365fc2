"""Availability record streams for the sink tests, shaped as the dataflow emits them."""

from __future__ import annotations

import random
from typing import Any

__all__ = ["availability_record", "last_per_key", "record_stream"]


def availability_record(
    channel: str,
    sku: str,
    location: str | None,
    available: int,
    version: int,
    previous: int | None = None,
    source_id: str = "T1",
) -> dict[str, Any]:
    warehouses = [location] if location else ["ATL1", "DAL1", "RNO1"]
    return {
        "channel": channel,
        "sku": sku,
        "location": location,
        "available": available,
        "previous": previous,
        "version": version,
        "as_of": 1767225600000 + version,
        "source": "wms",
        "source_id": source_id,
        "warehouses": [
            {
                "warehouse": wh,
                "on_hand": available + 2,
                "on_hold": 0,
                "reserved": 0,
                "incoming": 0,
                "atp": available + 2,
                "erp_book": None,
            }
            for wh in warehouses
        ],
        "base": available + 2,
        "share_pct": 100,
        "after_share": available + 2,
        "buffer_units": 2,
        "max_qty": 500,
        "min_qty": 0,
    }


def record_stream(
    channel: str,
    keys: list[tuple[str, str | None]],
    *,
    max_versions: int = 4,
    seed: int = 3,
    version_base: int = 0,
) -> list[dict[str, Any]]:
    """Interleaved per-key sequences of records, each key's in version order (as on a partition)."""
    rng = random.Random(seed)  # noqa: S311 - test data
    queues: list[list[dict[str, Any]]] = []
    n = 0
    for sku, location in keys:
        previous: int | None = None
        seq = []
        for version in range(1, rng.randint(1, max_versions) + 1):
            available = rng.choice([0, 0, rng.randint(1, 40)])
            n += 1
            seq.append(
                availability_record(
                    channel,
                    sku,
                    location,
                    available,
                    version_base + version,
                    previous,
                    source_id=f"T{n}",
                )
            )
            previous = available
        queues.append(seq)
    out: list[dict[str, Any]] = []
    while queues:
        queue = rng.choice(queues)
        out.append(queue.pop(0))
        if not queue:
            queues.remove(queue)
    return out


def last_per_key(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The newest record per key."""
    last: dict[str, dict[str, Any]] = {}
    for record in records:
        key = f"{record['sku']}|{record['location']}" if record["location"] else record["sku"]
        if key not in last or record["version"] > last[key]["version"]:
            last[key] = record
    return last
