"""Amazon-style adapter and sinks against the SP-API emulator, end to end over real HTTP."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from typing import Any

import pytest
import redis
from emulators.amazon import AmazonEmulator
from emulators.configs import (
    AMAZON_CLIENT_SECRET,
    AMAZON_REFRESH_TOKEN,
    amazon_channel,
    marketplace_config,
)
from emulators.records import availability_record, last_per_key, record_stream

from sinks.marketplace import (
    FulfillmentSink,
    MarketplaceDeadLetter,
    MarketplaceSink,
    load_marketplace_config,
    package_reference_id,
)

#: The shared fixtures (Redis with a per-test prefix, emulators, test secrets).
pytest_plugins = ["emulators.fixtures"]

pytestmark = pytest.mark.redis

CHANNEL = "amazon-us"


def _config(emulator: AmazonEmulator, prefix: str, **overrides: Any):  # type: ignore[no-untyped-def]
    return load_marketplace_config(
        marketplace_config(prefix, amazon_us=amazon_channel(emulator.url, **overrides))
    )


def _sink(
    emulator: AmazonEmulator,
    client: redis.Redis,
    prefix: str,
    dead: list[MarketplaceDeadLetter],
    **overrides: Any,
) -> MarketplaceSink:
    return MarketplaceSink.from_config(
        _config(emulator, prefix, **overrides),
        CHANNEL,
        redis_client=client,
        dead_letter=dead.append,
    )


def test_end_to_end_with_pending_submissions_and_settle_time(
    amazon_emulator: AmazonEmulator,
    redis_client: redis.Redis,
    redis_prefix: str,
    secrets_env: dict[str, str],
) -> None:
    dead: list[MarketplaceDeadLetter] = []
    settle = 0.4
    sink = _sink(amazon_emulator, redis_client, redis_prefix, dead, settle_s=settle)
    records = record_stream(
        CHANNEL, [(f"SKU-{n}", None) for n in range(12)], max_versions=4, seed=5
    )
    for start in range(0, len(records), 10):
        sink.add_many(records[start : start + 10])
        sink.flush()
    assert sink.drain(20)
    for sku, record in last_per_key(records).items():
        assert amazon_emulator.quantity(sku) == record["available"], sku
    assert not dead
    # At most one submission per SKU in flight within the settle time.
    by_sku: dict[str, list[float]] = defaultdict(list)
    for entry in amazon_emulator.log.entries("patchListingsItem"):
        if entry.note == "accepted":
            by_sku[entry.path.rsplit("/", 1)[1]].append(entry.t)
    for times in by_sku.values():
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert all(gap >= settle - 0.05 for gap in gaps), gaps
    assert sink.stats.accepted_pending >= len(by_sku)


def test_settled_submissions_are_read_back_and_drift_repaired(
    amazon_emulator: AmazonEmulator,
    redis_client: redis.Redis,
    redis_prefix: str,
    secrets_env: dict[str, str],
) -> None:
    sink = _sink(amazon_emulator, redis_client, redis_prefix, [], settle_s=0.3)
    records = [availability_record(CHANNEL, f"SKU-{n}", None, 10 + n, 1) for n in range(4)]
    sink.add_many(records)
    assert sink.drain(5)
    # Amazon accepted SKU-2 but something else changed it afterwards.
    amazon_emulator.set_quantity("SKU-2", 0)
    assert sink.reconcile(sample=10) == 1
    assert sink.drain(5)
    assert amazon_emulator.quantity("SKU-2") == 12
    assert amazon_emulator.log.count(operation="getListingsItem") >= 4


def test_lwa_token_is_fetched_cached_and_refreshed(
    amazon_emulator: AmazonEmulator,
    redis_client: redis.Redis,
    redis_prefix: str,
    secrets_env: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    sink = _sink(amazon_emulator, redis_client, redis_prefix, [], settle_s=0)
    sink.add_many([availability_record(CHANNEL, f"SKU-{n}", None, n, 1) for n in range(3)])
    assert sink.drain(5)
    assert amazon_emulator.log.count(operation="lwaToken") == 1  # one token for all calls
    amazon_emulator.expire_tokens()
    sink.add(availability_record(CHANNEL, "SKU-0", None, 7, 2))
    assert sink.drain(5) and amazon_emulator.wait_processed()
    assert amazon_emulator.quantity("SKU-0") == 7
    assert amazon_emulator.log.count(operation="lwaToken") == 2
    assert amazon_emulator.log.count(note="unauthorized") == 1
    for secret in (AMAZON_CLIENT_SECRET, AMAZON_REFRESH_TOKEN, "Atza|"):
        assert secret not in caplog.text


def test_wrong_lwa_credentials_keep_the_backlog(
    amazon_emulator: AmazonEmulator,
    redis_client: redis.Redis,
    redis_prefix: str,
    secrets_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "Atzr|wrong-refresh-token-0123456789"
    monkeypatch.setenv("TEST_LWA_REFRESH_TOKEN", wrong)
    dead: list[MarketplaceDeadLetter] = []
    sink = _sink(amazon_emulator, redis_client, redis_prefix, dead)
    sink.add(availability_record(CHANNEL, "SKU-1", None, 4, 1))
    report = sink.flush(max_seconds=1.5)
    assert report.stopped in ("unavailable", "circuit_open")
    assert sink.backlog_size == 1 and not dead
    assert wrong not in caplog.text and AMAZON_CLIENT_SECRET not in caplog.text


def test_429_with_usage_plan_header_slows_every_worker_down(
    redis_client: redis.Redis, redis_prefix: str, secrets_env: dict[str, str]
) -> None:
    emulator = AmazonEmulator(
        seller_id="A2SELLER",
        marketplace_id="ATVPDKIKX0DER",
        client_id=secrets_env["TEST_LWA_CLIENT_ID"],
        client_secret=AMAZON_CLIENT_SECRET,
        refresh_token=AMAZON_REFRESH_TOKEN,
        limits={"patchListingsItem": (8.0, 2.0)},
        processing_delay=(0.01, 0.05),
    )
    with emulator:
        dead: list[MarketplaceDeadLetter] = []
        # Configured far above what the account really has: the API's 429s must teach us.
        sink = _sink(
            emulator,
            redis_client,
            redis_prefix,
            dead,
            settle_s=0,
            rate_limits={"patchListingsItem": {"rate": 50, "burst": 20}},
        )
        records = [availability_record(CHANNEL, f"SKU-{n}", None, n, 1) for n in range(16)]
        sink.add_many(records)
        assert sink.drain(15) and emulator.wait_processed()
        for record in records:
            assert emulator.quantity(record["sku"]) == record["available"]
        throttled = emulator.log.count(note="throttled")
        assert throttled >= 1
        assert not dead
        bucket = f"{redis_prefix}:ratelimit:amazon:A2SELLER:ATVPDKIKX0DER:patchListingsItem"
        assert (
            float(redis_client.hget(bucket, "rate_cap") or 0) == 8.0
        )  # learnt from x-amzn-RateLimit-Limit


def test_unknown_listing_is_dead_lettered_with_the_answer(
    redis_client: redis.Redis, redis_prefix: str, secrets_env: dict[str, str]
) -> None:
    emulator = AmazonEmulator(
        seller_id="A2SELLER",
        marketplace_id="ATVPDKIKX0DER",
        client_id=secrets_env["TEST_LWA_CLIENT_ID"],
        client_secret=AMAZON_CLIENT_SECRET,
        refresh_token=AMAZON_REFRESH_TOKEN,
        auto_create=False,
        limits={"patchListingsItem": (20.0, 10.0)},
    )
    emulator.add_listing("SKU-1", 0)
    with emulator:
        dead: list[MarketplaceDeadLetter] = []
        sink = _sink(emulator, redis_client, redis_prefix, dead, settle_s=0)
        sink.add(availability_record(CHANNEL, "SKU-1", None, 3, 1))
        sink.add(availability_record(CHANNEL, "SKU-404", None, 3, 1))
        assert sink.drain(5) and emulator.wait_processed()
        assert emulator.quantity("SKU-1") == 3
        assert [(d.key, d.reason, d.http_status) for d in dead] == [("SKU-404", "REJECTED", 404)]
        assert "not found" in dead[0].response
        assert AMAZON_REFRESH_TOKEN not in json.dumps(dead[0].to_dict(), default=str)


def test_shipment_confirmation_is_idempotent_per_package(
    amazon_emulator: AmazonEmulator,
    redis_client: redis.Redis,
    redis_prefix: str,
    secrets_env: dict[str, str],
) -> None:
    amazon_emulator.add_order("111-2222222-3333333", [("SKU-1", 2), ("SKU-2", 1)])
    config = _config(amazon_emulator, redis_prefix, carrier_codes={"UPS": "UPS"})
    request = {
        "channel": CHANNEL,
        "channel_order_id": "111-2222222-3333333",
        "shipment_id": "SHP-1",
        "carrier": "UPS",
        "tracking_number": "1Z0001",
        "lines": [{"sku": "SKU-1", "qty": 2}, {"sku": "SKU-2", "qty": 1}],
        "shipped_at": 1767225600000,
    }
    for _ in range(2):  # a restarted worker pushes the same milestone again
        sink = FulfillmentSink.from_config(config, CHANNEL, redis_client=redis_client)
        sink.add(request)
        assert sink.drain(5)
    packages = amazon_emulator.confirmations["111-2222222-3333333"]
    ref = package_reference_id("SHP-1")
    assert list(packages) == [ref]
    package = packages[ref]
    assert package["carrierCode"] == "UPS" and package["trackingNumber"] == "1Z0001"
    assert package["shipDate"] == "2026-01-01T00:00:00Z"
    assert sorted((i["orderItemId"], i["quantity"]) for i in package["orderItems"]) == [
        ("1112222222333333300" + "1", 2),
        ("1112222222333333300" + "2", 1),
    ]
    assert amazon_emulator.log.count(operation="confirmShipment", note="edited") == 1


def test_confirmation_for_unknown_order_is_dead_lettered(
    amazon_emulator: AmazonEmulator,
    redis_client: redis.Redis,
    redis_prefix: str,
    secrets_env: dict[str, str],
) -> None:
    dead: list[MarketplaceDeadLetter] = []
    sink = FulfillmentSink.from_config(
        _config(amazon_emulator, redis_prefix),
        CHANNEL,
        redis_client=redis_client,
        dead_letter=dead.append,
    )
    sink.add(
        {
            "channel": CHANNEL,
            "channel_order_id": "999",
            "shipment_id": "7",
            "carrier": "Acme Freight",
            "tracking_number": "T1",
            "lines": [{"sku": "SKU-1", "qty": 1}],
        }
    )
    assert sink.drain(5)
    assert [(d.reason, d.code) for d in dead] == [("REJECTED", "ORDER_NOT_FOUND")]
    assert dead[0].extra["tracking_number"] == "T1"
