"""Two worker processes share one marketplace account's rate limit through Redis.

Each worker has its own sink, HTTP client and process; only the Redis bucket is shared. The
emulator enforces the account's real limit, and its request log lets the test check every window.
"""

from __future__ import annotations

import multiprocessing
from typing import Any

import pytest
from emulators.amazon import AmazonEmulator
from emulators.base import LogEntry, RequestLog
from emulators.configs import (
    AMAZON_CLIENT_ID,
    AMAZON_CLIENT_SECRET,
    AMAZON_REFRESH_TOKEN,
    SHOPIFY_TOKEN,
    amazon_channel,
    marketplace_config,
    shopify_channel,
)
from emulators.records import last_per_key, record_stream
from emulators.shopify import ShopifyEmulator
from emulators.workers import run_sink_worker

#: The shared fixtures (Redis with a per-test prefix, emulators, test secrets).
pytest_plugins = ["emulators.fixtures"]

pytestmark = pytest.mark.redis


def _run_workers(
    config: dict[str, Any],
    channel: str,
    partitions: list[list[dict[str, Any]]],
    env: dict[str, str],
) -> list[dict[str, Any]]:
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [
        ctx.Process(target=run_sink_worker, args=(config, channel, part, env, 30.0, results))
        for part in partitions
    ]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(timeout=10)
        assert proc.exitcode == 0
    return outcomes


def test_two_shopify_workers_stay_inside_the_cost_bucket(
    redis_prefix: str, secrets_env: dict[str, str]
) -> None:
    max_available, restore_rate = 100.0, 60.0
    with ShopifyEmulator(
        SHOPIFY_TOKEN, max_available=max_available, restore_rate=restore_rate
    ) as emulator:
        # Our shared bucket sits under the account's, with room for request transit jitter.
        # Either worker alone could spend 50 points/s: together, unshared, they would exceed 60.
        channel = shopify_channel(
            emulator.url, skus=200, batch_size=20, rate_limit={"rate": 50, "burst": 60}
        )
        config = marketplace_config(redis_prefix, shopify_us=channel)
        keys = [(f"SKU-{n}", wh) for n in range(60) for wh in ("ATL1", "DAL1")]
        # Keys are partitioned between workers, as Kafka partitions are.
        partitions = [
            record_stream("shopify-us", keys[i::2], max_versions=3, seed=10 + i) for i in range(2)
        ]
        outcomes = _run_workers(config, "shopify-us", partitions, secrets_env)
        assert all(o["drained"] and o["dead_letters"] == 0 for o in outcomes)
        last = last_per_key(partitions[0] + partitions[1])
        for key, record in last.items():
            sku, _, wh = key.partition("|")
            item = f"gid://shopify/InventoryItem/{1000 + int(sku.split('-')[1])}"
            location = {"ATL1": "gid://shopify/Location/1", "DAL1": "gid://shopify/Location/2"}[wh]
            assert emulator.available(item, location) == record["available"], key
        entries = emulator.log.entries()
        assert emulator.log.count(note="throttled") == 0
        assert len({o["pid"] for o in outcomes}) == 2
        # Over any window the points spent stay within the bucket plus what it restores.
        for window in (0.5, 1.0, 2.0):
            spent = RequestLog.max_in_window(entries, window, lambda e: e.cost)
            assert spent <= max_available + restore_rate * window, (window, spent)


def test_two_amazon_workers_stay_inside_the_operation_bucket(
    redis_prefix: str, secrets_env: dict[str, str]
) -> None:
    rate, burst = 10.0, 5.0
    emulator = AmazonEmulator(
        seller_id="A2SELLER",
        marketplace_id="ATVPDKIKX0DER",
        client_id=AMAZON_CLIENT_ID,
        client_secret=AMAZON_CLIENT_SECRET,
        refresh_token=AMAZON_REFRESH_TOKEN,
        limits={"patchListingsItem": (rate, burst)},
        processing_delay=(0.01, 0.05),
    )
    with emulator:
        channel = amazon_channel(
            emulator.url, settle_s=0.2, rate_limits={"patchListingsItem": {"rate": 8, "burst": 4}}
        )
        config = marketplace_config(redis_prefix, amazon_us=channel)
        skus = [(f"SKU-{n}", None) for n in range(16)]
        partitions = [
            record_stream("amazon-us", skus[i::2], max_versions=2, seed=20 + i) for i in range(2)
        ]
        outcomes = _run_workers(config, "amazon-us", partitions, secrets_env)
        assert all(o["drained"] and o["dead_letters"] == 0 for o in outcomes)
        assert emulator.wait_processed()
        for sku, record in last_per_key(partitions[0] + partitions[1]).items():
            assert emulator.quantity(sku) == record["available"], sku
        patches: list[LogEntry] = emulator.log.entries("patchListingsItem")
        assert emulator.log.count(operation="patchListingsItem", note="throttled") == 0
        for window in (0.5, 1.0, 2.0):
            assert (
                RequestLog.max_in_window(patches, window, lambda _e: 1.0) <= burst + rate * window
            )
