"""Shopify-style adapter and sinks against the GraphQL emulator, end to end over real HTTP."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest
import redis
from emulators.configs import SHOPIFY_TOKEN, marketplace_config, shopify_channel
from emulators.records import availability_record, last_per_key, record_stream
from emulators.shopify import ShopifyEmulator

from sinks.marketplace import (
    FulfillmentSink,
    MarketplaceDeadLetter,
    MarketplaceSink,
    load_marketplace_config,
)

#: The shared fixtures (Redis with a per-test prefix, emulators, test secrets).
pytest_plugins = ["emulators.fixtures"]

pytestmark = pytest.mark.redis

CHANNEL = "shopify-us"


def _item(sku: str) -> str:
    return f"gid://shopify/InventoryItem/{1000 + int(sku.split('-')[1])}"


LOCATIONS = {"ATL1": "gid://shopify/Location/1", "DAL1": "gid://shopify/Location/2"}


def _sink(
    emulator: ShopifyEmulator,
    client: redis.Redis,
    prefix: str,
    dead: list[MarketplaceDeadLetter],
    **overrides: Any,
) -> MarketplaceSink:
    config = load_marketplace_config(
        marketplace_config(prefix, shopify_us=shopify_channel(emulator.url, **overrides))
    )
    return MarketplaceSink.from_config(
        config, CHANNEL, redis_client=client, dead_letter=dead.append
    )


def _metric(name: str, labels: dict[str, str]) -> float:
    try:
        from prometheus_client import REGISTRY

        import operators.metrics  # noqa: F401 - registers the metrics
    except ImportError:  # pragma: no cover - metrics module absent
        return 0.0
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _assert_converged(emulator: ShopifyEmulator, last: dict[str, dict[str, Any]]) -> None:
    for key, record in last.items():
        sku, _, warehouse = key.partition("|")
        assert emulator.available(_item(sku), LOCATIONS[warehouse]) == record["available"], key


def test_end_to_end_final_quantities_equal_last_record(
    shopify_emulator: ShopifyEmulator,
    redis_client: redis.Redis,
    redis_prefix: str,
    secrets_env: dict[str, str],
) -> None:
    dead: list[MarketplaceDeadLetter] = []
    sink = _sink(shopify_emulator, redis_client, redis_prefix, dead, skus=30, batch_size=25)
    keys = [(f"SKU-{n}", wh) for n in range(30) for wh in ("ATL1", "DAL1")]
    records = record_stream(CHANNEL, keys, max_versions=4)
    for start in range(0, len(records), 40):  # records arrive between checkpoints
        sink.add_many(records[start : start + 40])
        sink.flush()
    # At-least-once: after a crash older records come again; they are ignored by version.
    assert sink.add_many(records[: len(records) // 2]) == 0
    assert sink.drain(10)
    _assert_converged(shopify_emulator, last_per_key(records))
    assert not dead
    assert shopify_emulator.log.count(note="throttled") == 0
    mutations = shopify_emulator.log.count(operation="inventorySetQuantities")
    # Batched: far fewer calls than updates (inventorySetQuantities takes a list).
    assert mutations < sink.stats.pushed / 4
    assert sink.stats.stale_ignored >= len(records) // 2


def test_drops_to_zero_are_pushed_first(
    shopify_emulator: ShopifyEmulator,
    redis_client: redis.Redis,
    redis_prefix: str,
    secrets_env: dict[str, str],
) -> None:
    sink = _sink(shopify_emulator, redis_client, redis_prefix, [], batch_size=1)
    for n in range(10):
        sink.add(availability_record(CHANNEL, f"SKU-{n}", "ATL1", 10, 1))
    assert sink.drain(10)
    applied_before = len(shopify_emulator.history)
    # Increases arrive first, drops to zero last: the drops must still go out first.
    for n in range(10):
        sink.add(
            availability_record(CHANNEL, f"SKU-{n}", "ATL1", 20 if n < 5 else 0, 2, previous=10)
        )
    assert sink.drain(10)
    targets = [change["to"] for change in shopify_emulator.history[applied_before:]]
    assert targets == [0] * 5 + [20] * 5


def test_stale_compare_is_read_and_corrected(
    shopify_emulator: ShopifyEmulator,
    redis_client: redis.Redis,
    redis_prefix: str,
    secrets_env: dict[str, str],
) -> None:
    sink = _sink(shopify_emulator, redis_client, redis_prefix, [])
    sink.add(availability_record(CHANNEL, "SKU-1", "ATL1", 10, 1))
    assert sink.drain(5)
    shopify_emulator.set_available(_item("SKU-1"), LOCATIONS["ATL1"], 7)  # a sale we have not seen
    sink.add(availability_record(CHANNEL, "SKU-1", "ATL1", 12, 2, previous=10))
    assert sink.drain(5)
    assert shopify_emulator.available(_item("SKU-1"), LOCATIONS["ATL1"]) == 12
    notes = [(e.operation, e.note) for e in shopify_emulator.log.entries()]
    stale_at = notes.index(("inventorySetQuantities", "user-errors"))
    assert notes[stale_at + 1][0] == "inventoryItem"  # the read of the live value
    assert notes[stale_at + 2] == ("inventorySetQuantities", "applied")


def test_lost_answer_is_retried_with_the_same_idempotency_key(
    shopify_emulator: ShopifyEmulator,
    redis_client: redis.Redis,
    redis_prefix: str,
    secrets_env: dict[str, str],
) -> None:
    sink = _sink(shopify_emulator, redis_client, redis_prefix, [], read_timeout_s=0.3)
    # Answers take 0.6 s for the next 0.9 s: the first attempt times out after it was applied.
    shopify_emulator.faults.slow(0.9, 0.6)
    sink.add(availability_record(CHANNEL, "SKU-2", "DAL1", 9, 1))
    assert sink.drain(8)
    assert shopify_emulator.available(_item("SKU-2"), LOCATIONS["DAL1"]) == 9
    assert len(shopify_emulator.history) == 1  # applied once, however often it was sent
    assert shopify_emulator.log.count(note="idempotent-replay") >= 1
    assert sink.stats.retries >= 1


def test_readback_repairs_drift_and_counts_it(
    shopify_emulator: ShopifyEmulator,
    redis_client: redis.Redis,
    redis_prefix: str,
    secrets_env: dict[str, str],
) -> None:
    sink = _sink(shopify_emulator, redis_client, redis_prefix, [])
    records = [availability_record(CHANNEL, f"SKU-{n}", "ATL1", 5 + n, 1) for n in range(8)]
    sink.add_many(records)
    assert sink.drain(5)
    before = _metric("atpflow_marketplace_drift_repairs_total", {"channel": CHANNEL})
    for n in (1, 4, 6):
        shopify_emulator.set_available(_item(f"SKU-{n}"), LOCATIONS["ATL1"], 99)
    assert sink.reconcile(sample=100) == 3
    assert sink.drain(5)
    _assert_converged(shopify_emulator, last_per_key(records))
    assert sink.stats.drift_repairs == 3
    assert _metric("atpflow_marketplace_drift_repairs_total", {"channel": CHANNEL}) - before == 3.0


def test_rejections_are_dead_lettered_and_superseded_by_a_later_change(
    shopify_emulator: ShopifyEmulator,
    redis_client: redis.Redis,
    redis_prefix: str,
    secrets_env: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    dead: list[MarketplaceDeadLetter] = []
    sink = _sink(shopify_emulator, redis_client, redis_prefix, dead)
    shopify_emulator.invalid_items.add(_item("SKU-3"))
    records = [availability_record(CHANNEL, f"SKU-{n}", "ATL1", n, 1) for n in range(1, 6)]
    records.append(availability_record(CHANNEL, "SKU-999", "ATL1", 4, 1))  # no mapping
    sink.add_many(records)
    assert sink.drain(5)
    by_key = {d.key: d for d in dead}
    assert set(by_key) == {"SKU-3|ATL1", "SKU-999|ATL1"}
    assert by_key["SKU-3|ATL1"].code == "INVALID_INVENTORY_ITEM"
    assert "could not be found" in by_key["SKU-3|ATL1"].response
    assert by_key["SKU-999|ATL1"].code == "UNMAPPED_KEY"
    for n in (1, 2, 4, 5):  # the rest of the batch went through
        assert shopify_emulator.available(_item(f"SKU-{n}"), LOCATIONS["ATL1"]) == n
    shopify_emulator.invalid_items.clear()
    sink.add(availability_record(CHANNEL, "SKU-3", "ATL1", 33, 2))
    assert sink.drain(5)
    assert shopify_emulator.available(_item("SKU-3"), LOCATIONS["ATL1"]) == 33
    texts = caplog.text + json.dumps([d.to_dict() for d in dead], default=str)
    assert SHOPIFY_TOKEN not in texts


def test_rejected_credentials_keep_the_backlog_and_leak_nothing(
    shopify_emulator: ShopifyEmulator,
    redis_client: redis.Redis,
    redis_prefix: str,
    secrets_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "shpat_" + "0badc0de" * 4
    monkeypatch.setenv("TEST_SHOPIFY_TOKEN", wrong)
    dead: list[MarketplaceDeadLetter] = []
    sink = _sink(shopify_emulator, redis_client, redis_prefix, dead)
    records = [availability_record(CHANNEL, f"SKU-{n}", "DAL1", n, 1) for n in range(5)]
    sink.add_many(records)
    report = sink.flush(max_seconds=2)
    assert report.stopped in ("unavailable", "circuit_open")
    assert sink.backlog_size == 5 and not dead  # nothing is lost for an operator error
    assert wrong not in caplog.text
    # The operator fixes the secret; a new worker resumes from the snapshot.
    monkeypatch.setenv("TEST_SHOPIFY_TOKEN", SHOPIFY_TOKEN)
    fixed = _sink(shopify_emulator, redis_client, redis_prefix, dead)
    fixed.restore(sink.snapshot())
    assert fixed.drain(5)
    _assert_converged(shopify_emulator, last_per_key(records))


def _fulfillment(shipment: str, tracking: str, lines: list[tuple[str, int]]) -> dict[str, Any]:
    return {
        "channel": CHANNEL,
        "channel_order_id": "1001",
        "shipment_id": shipment,
        "carrier": "UPS",
        "tracking_number": tracking,
        "lines": [{"sku": s, "qty": q} for s, q in lines],
    }


def test_fulfillment_is_created_once_per_shipment(
    shopify_emulator: ShopifyEmulator,
    redis_client: redis.Redis,
    redis_prefix: str,
    secrets_env: dict[str, str],
) -> None:
    shopify_emulator.add_order(1001, [("SKU-1", 2), ("SKU-2", 1)])
    config = load_marketplace_config(
        marketplace_config(redis_prefix, shopify_us=shopify_channel(shopify_emulator.url))
    )
    sink = FulfillmentSink.from_config(config, CHANNEL, redis_client=redis_client)
    first = _fulfillment("SHP-1", "1Z0001", [("SKU-1", 2)])
    assert sink.add(first) and not sink.add(first)
    assert sink.drain(5)
    # A restarted worker sees the milestone again: still one fulfillment.
    again = FulfillmentSink.from_config(config, CHANNEL, redis_client=redis_client)
    again.add(first)
    assert again.drain(5)
    again.add(_fulfillment("SHP-2", "1Z0002", [("SKU-2", 1)]))
    assert again.drain(5)
    fulfillments = shopify_emulator.fulfillments(1001)
    assert [f["trackingInfo"][0]["number"] for f in fulfillments] == ["1Z0001", "1Z0002"]
    assert fulfillments[0]["trackingInfo"][0]["company"] == "UPS"
    assert [(line["sku"], line["quantity"]) for line in fulfillments[0]["lines"]] == [("SKU-1", 2)]
    assert sink.pushed == 1 and again.pushed == 2


def test_emulator_dedupes_a_repeated_fulfillment_idempotency_key(
    shopify_emulator: ShopifyEmulator,
) -> None:
    order = shopify_emulator.add_order(2002, [("SKU-1", 3)])
    query = httpx.post(
        f"{shopify_emulator.url}/admin/api/2026-04/graphql.json",
        headers={"X-Shopify-Access-Token": SHOPIFY_TOKEN},
        json={
            "query": "query($id: ID!) { order(id: $id) { fulfillmentOrders(first: 5) "
            "{ nodes { id lineItems(first: 5) { nodes { id } } } } } }",
            "variables": {"id": order},
        },
    ).json()
    fo = query["data"]["order"]["fulfillmentOrders"]["nodes"][0]
    mutation = (
        "mutation($f: FulfillmentInput!, $k: String!) { fulfillmentCreate(fulfillment: $f) "
        "@idempotent(key: $k) { fulfillment { id } userErrors { message } } }"
    )
    variables = {
        "k": "key-1",
        "f": {
            "lineItemsByFulfillmentOrder": [
                {
                    "fulfillmentOrderId": fo["id"],
                    "fulfillmentOrderLineItems": [
                        {"id": fo["lineItems"]["nodes"][0]["id"], "quantity": 1}
                    ],
                }
            ],
            "trackingInfo": {"company": "UPS", "number": "1Z9"},
        },
    }
    answers = [
        httpx.post(
            f"{shopify_emulator.url}/admin/api/2026-04/graphql.json",
            headers={"X-Shopify-Access-Token": SHOPIFY_TOKEN},
            json={"query": mutation, "variables": variables},
        ).json()
        for _ in range(2)
    ]
    assert answers[0]["data"] == answers[1]["data"]
    assert len(shopify_emulator.fulfillments(2002)) == 1


def test_emulator_checks_auth_and_payload_shapes(shopify_emulator: ShopifyEmulator) -> None:
    url = f"{shopify_emulator.url}/admin/api/2026-04/graphql.json"
    assert httpx.post(url, json={"query": "{ __typename }"}).status_code == 401
    wrong_field = httpx.post(
        url,
        headers={"X-Shopify-Access-Token": SHOPIFY_TOKEN},
        json={
            "query": "mutation($i: InventorySetQuantitiesInput!) { "
            'inventorySetQuantities(input: $i) @idempotent(key: "k") { userErrors { code } } }',
            "variables": {
                "i": {
                    "name": "available",
                    "reason": "correction",
                    "quantities": [
                        {
                            "inventoryItemId": "gid://shopify/InventoryItem/1",
                            "locationId": "gid://shopify/Location/1",
                            "availableQuantity": 3,
                        }
                    ],
                }
            },
        },
    ).json()
    assert wrong_field.get("errors") and not wrong_field.get("data")
    state = httpx.get(f"{shopify_emulator.url}/__admin/state").json()
    assert "levels" in state
    log = httpx.get(f"{shopify_emulator.url}/__admin/log").json()
    assert log and {"t", "operation", "status", "cost"} <= set(log[0])
