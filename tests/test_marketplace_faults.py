"""A 429/5xx storm, then an outage: the sinks retry, dead-letter what runs out of budget, keep the
newest value per key while the API is away, never block a flush past its budget, and converge.

The outage lasts ``ATPFLOW_TEST_OUTAGE_S`` seconds (default 3) in CI; the ``slow`` variant runs
the full 30 seconds.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from emulators.amazon import AmazonEmulator
from emulators.configs import (
    AMAZON_CLIENT_ID,
    AMAZON_CLIENT_SECRET,
    AMAZON_REFRESH_TOKEN,
    SHOPIFY_TOKEN,
    amazon_channel,
    marketplace_config,
    shopify_channel,
)
from emulators.records import availability_record
from emulators.shopify import ShopifyEmulator

from sinks.marketplace import MarketplaceDeadLetter, MarketplaceSink, load_marketplace_config

#: The shared fixtures (Redis with a per-test prefix, emulators, test secrets).
pytest_plugins = ["emulators.fixtures"]

pytestmark = pytest.mark.redis

OUTAGE_S = float(os.environ.get("ATPFLOW_TEST_OUTAGE_S", "3"))
FLUSH_BUDGET_S = 0.5


def _dead_letter_metric(channel: str) -> float:
    from prometheus_client import REGISTRY

    import operators.metrics  # noqa: F401 - registers the metrics

    return (
        REGISTRY.get_sample_value("atpflow_marketplace_dead_letters_total", {"channel": channel})
        or 0.0
    )


def _flush_for(sink: MarketplaceSink, seconds: float) -> list[float]:
    """Flush checkpoint after checkpoint for ``seconds``; return each flush's duration."""
    durations = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.monotonic()
        sink.flush()
        durations.append(time.monotonic() - started)
        time.sleep(0.05)
    return durations


def _storm_then_outage(
    sink: MarketplaceSink,
    faults: Any,
    channel: str,
    keys: list[tuple[str, str | None]],
    live_value: Callable[[str, str | None], int | None],
    outage_s: float,
) -> dict[str, Any]:
    dead_before = _dead_letter_metric(channel)
    # 1. A full storm: every call answers 429 or 5xx; the first batches run out of budget.
    faults.storm(0.6, statuses=(429, 500, 503), probability=1.0, retry_after=0.05)
    sink.add_many([availability_record(channel, sku, wh, 5, 1) for sku, wh in keys])
    _flush_for(sink, 0.6)
    dead_after_storm = sink.stats.dead_letters
    # 2. A partial storm: half the calls fail; retries get the updates through.
    faults.storm(1.0, statuses=(429, 500, 503), probability=0.5, retry_after=0.05)
    sink.add_many(
        [availability_record(channel, sku, wh, 10 + i, 2) for i, (sku, wh) in enumerate(keys)]
    )
    _flush_for(sink, 1.0)
    # 3. The API goes away. New values keep coming; older ones are replaced in the backlog.
    faults.down_for(outage_s, mode="drop")
    sink.add_many(
        [availability_record(channel, sku, wh, 20 + i, 3) for i, (sku, wh) in enumerate(keys)]
    )
    final = {(sku, wh): (0 if i % 3 == 0 else 30 + i) for i, (sku, wh) in enumerate(keys)}
    sink.add_many([availability_record(channel, sku, wh, final[(sku, wh)], 4) for sku, wh in keys])
    dead_before_outage = sink.stats.dead_letters
    durations = _flush_for(sink, max(0.0, outage_s - 0.3))
    assert sink.backlog_size == len(keys)  # one (the newest) value per key, nothing lost
    assert sink.stats.dead_letters == dead_before_outage  # an unreachable API burns no budget
    assert max(durations) <= FLUSH_BUDGET_S + 0.35, max(durations)
    # 4. The API comes back: everything converges to the newest value of every key.
    assert sink.drain(15)
    for (sku, wh), value in final.items():
        assert live_value(sku, wh) == value, (sku, wh)
    assert dead_after_storm > 0
    assert sink.stats.retries > 0
    assert _dead_letter_metric(channel) - dead_before == sink.stats.dead_letters
    return {
        "dead_letters": sink.stats.dead_letters,
        "retries": sink.stats.retries,
        "flushes": len(durations),
    }


def _shopify_scenario(redis_client: redis.Redis, redis_prefix: str, outage_s: float) -> None:
    with ShopifyEmulator(SHOPIFY_TOKEN, max_available=400, restore_rate=200) as emulator:
        dead: list[MarketplaceDeadLetter] = []
        channel = shopify_channel(
            emulator.url,
            skus=20,
            batch_size=10,
            flush_budget_s=FLUSH_BUDGET_S,
            read_timeout_s=1.0,
            retry={"max_attempts": 3, "base_delay_s": 0.02, "max_delay_s": 0.2},
            breaker={"failure_threshold": 4, "open_seconds": 0.3},
            rate_limit={"rate": 150, "burst": 300},
        )
        config = load_marketplace_config(marketplace_config(redis_prefix, shopify_us=channel))
        sink = MarketplaceSink.from_config(
            config, "shopify-us", redis_client=redis_client, dead_letter=dead.append
        )
        keys = [(f"SKU-{n}", wh) for n in range(15) for wh in ("ATL1", "DAL1")]
        locations = {"ATL1": "gid://shopify/Location/1", "DAL1": "gid://shopify/Location/2"}

        def live(sku: str, wh: str | None) -> int | None:
            return emulator.available(
                f"gid://shopify/InventoryItem/{1000 + int(sku.split('-')[1])}", locations[str(wh)]
            )

        outcome = _storm_then_outage(sink, emulator.faults, "shopify-us", keys, live, outage_s)
        assert len(dead) == outcome["dead_letters"]
        assert {d.reason for d in dead} == {"RETRY_BUDGET_EXHAUSTED"}
        assert all(d.http_status in (429, 500, 503) and d.response for d in dead)
        assert all(SHOPIFY_TOKEN not in d.response for d in dead)


def test_shopify_storm_and_outage_converge(
    redis_client: redis.Redis, redis_prefix: str, secrets_env: dict[str, str]
) -> None:
    _shopify_scenario(redis_client, redis_prefix, OUTAGE_S)


@pytest.mark.slow
def test_shopify_storm_and_30s_outage_converge(
    redis_client: redis.Redis, redis_prefix: str, secrets_env: dict[str, str]
) -> None:
    _shopify_scenario(redis_client, redis_prefix, 30.0)


def test_amazon_storm_and_outage_converge(
    redis_client: redis.Redis, redis_prefix: str, secrets_env: dict[str, str]
) -> None:
    emulator = AmazonEmulator(
        seller_id="A2SELLER",
        marketplace_id="ATVPDKIKX0DER",
        client_id=AMAZON_CLIENT_ID,
        client_secret=AMAZON_CLIENT_SECRET,
        refresh_token=AMAZON_REFRESH_TOKEN,
        limits={"patchListingsItem": (60.0, 20.0)},
        processing_delay=(0.01, 0.05),
    )
    with emulator:
        dead: list[MarketplaceDeadLetter] = []
        channel = amazon_channel(
            emulator.url,
            settle_s=0.1,
            flush_budget_s=FLUSH_BUDGET_S,
            read_timeout_s=1.0,
            retry={"max_attempts": 3, "base_delay_s": 0.02, "max_delay_s": 0.2},
            breaker={"failure_threshold": 4, "open_seconds": 0.3},
            rate_limits={"patchListingsItem": {"rate": 40, "burst": 15}},
        )
        config = load_marketplace_config(marketplace_config(redis_prefix, amazon_us=channel))
        sink = MarketplaceSink.from_config(
            config, "amazon-us", redis_client=redis_client, dead_letter=dead.append
        )
        keys: list[tuple[str, str | None]] = [(f"SKU-{n}", None) for n in range(10)]

        def live(sku: str, _wh: str | None) -> int | None:
            emulator.wait_processed()
            return emulator.quantity(sku)

        outcome = _storm_then_outage(
            sink, emulator.faults, "amazon-us", keys, live, min(OUTAGE_S, 2.0)
        )
        assert len(dead) == outcome["dead_letters"]
