"""The Bytewax outputs: records flow through a real dataflow to the emulators and the view."""

from __future__ import annotations

from datetime import timedelta

import bytewax.operators as op
import pytest
import redis
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main
from emulators.amazon import AmazonEmulator
from emulators.configs import REDIS_URL, amazon_channel, marketplace_config, shopify_channel
from emulators.records import last_per_key, record_stream
from emulators.shopify import ShopifyEmulator

from sinks.marketplace import load_marketplace_config
from sinks.marketplace.bytewax_io import FulfillmentOutput, MarketplaceOutput, RedisViewOutput
from sinks.redis_view import ViewKeys

#: The shared fixtures (Redis with a per-test prefix, emulators, test secrets).
pytest_plugins = ["emulators.fixtures"]

pytestmark = pytest.mark.redis


def test_dataflow_outputs_push_and_view(
    shopify_emulator: ShopifyEmulator,
    amazon_emulator: AmazonEmulator,
    redis_client: redis.Redis,
    redis_prefix: str,
    secrets_env: dict[str, str],
) -> None:
    config = load_marketplace_config(
        marketplace_config(
            redis_prefix,
            shopify_us=shopify_channel(shopify_emulator.url),
            amazon_us=amazon_channel(amazon_emulator.url, settle_s=0.2),
        )
    )
    shopify = record_stream("shopify-us", [(f"SKU-{n}", "ATL1") for n in range(8)], seed=1)
    amazon = record_stream("amazon-us", [(f"SKU-{n}", None) for n in range(6)], seed=2)
    b2b = record_stream("b2b-portal", [("SKU-1", None)], seed=3)  # a topic-only channel
    records = shopify + amazon + b2b
    shopify_emulator.add_order(1001, [("SKU-1", 1)])
    milestones = [
        {
            "level": "SHIPMENT",
            "milestone": "SHIPPED",
            "channel": "shopify-us",
            "channel_order_id": "1001",
            "shipment_id": "S1",
            "carrier": "UPS",
            "tracking_number": "1Z1",
            "lines": [{"sku": "SKU-1", "quantity": 1}],
        },
        {"level": "ORDER", "milestone": "SHIPPED", "channel": "shopify-us"},
    ]

    flow = Dataflow("marketplace_test")
    keyed = op.map("key", op.input("in", flow, TestingSource(records)), lambda r: (r["sku"], r))
    op.output("push", keyed, MarketplaceOutput(config, partitions=2))
    op.output("view", keyed, RedisViewOutput(REDIS_URL, prefix=redis_prefix))
    shipped = op.map("mkey", op.input("ms", flow, TestingSource(milestones)), lambda m: ("1001", m))
    op.output("fulfil", shipped, FulfillmentOutput(config))
    run_main(flow, epoch_interval=timedelta(milliseconds=50))

    # close() drained every sink at the end of input.
    for key, record in last_per_key(shopify).items():
        sku = key.split("|")[0]
        item = f"gid://shopify/InventoryItem/{1000 + int(sku.split('-')[1])}"
        assert shopify_emulator.available(item, "gid://shopify/Location/1") == record["available"]
    assert amazon_emulator.wait_processed()
    for sku, record in last_per_key(amazon).items():
        assert amazon_emulator.quantity(sku) == record["available"]
    assert [f["trackingInfo"][0]["number"] for f in shopify_emulator.fulfillments(1001)] == ["1Z1"]
    keys = ViewKeys(redis_prefix)
    for key, record in last_per_key(records).items():
        channel = record["channel"]
        stored = redis_client.hget(keys.avail(channel, key), "version")
        assert stored == str(record["version"]).encode(), (channel, key)
