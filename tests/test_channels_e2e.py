"""End to end: a live run of both dataflows against the marketplace emulators and real Redis.

A real broker, the Shopify- and Amazon-style emulators (real HTTP servers), real Redis and
`atpflow run --flow all -w 2`. The bundled fixtures are published; the emulators must end on
each channel's last availability record per key, the Redis view must hold the newest record
per key, and each shipped shipment must exist exactly once in its channel's fulfillment API
with the right tracking number and lines.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from emulators.configs import REDIS_URL, amazon_channel, marketplace_config, shopify_channel

from dataflows.broker import LocalBroker
from dataflows.config import SAMPLE_CONFIG, load_config
from sinks.kafka import create_topics

pytest_plugins = ["emulators.fixtures"]
pytestmark = [pytest.mark.kafka, pytest.mark.redis]

FIXTURES = Path(__file__).parent / "fixtures"
AVAILABILITY = sorted((FIXTURES / "availability").glob("*.jsonl"))
ORDERS = sorted((FIXTURES / "milestones").glob("*.jsonl"))


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dataflows.cli", *args], capture_output=True,
                          text=True, check=True, timeout=120)


def _replay(tmp: Path) -> dict[str, list[dict[str, Any]]]:
    out = tmp / "replay"
    _cli("replay", "--out", str(out), *map(str, AVAILABILITY + ORDERS))
    return {p.stem: [json.loads(line) for line in p.read_text().splitlines()] for p in out.glob("*.jsonl")}


def _last(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    best: dict[str, dict[str, Any]] = {}
    for o in records:
        if o["key"] not in best or o["value"]["version"] > best[o["key"]]["version"]:
            best[o["key"]] = o["value"]
    return best


def _skus_and_orders() -> tuple[set[str], dict[str, tuple[str, list[tuple[str, int]]]]]:
    """Every sku in the fixtures, and each order's (channel, released lines in base units)."""
    skus: set[str] = set()
    items: dict[str, tuple[str, dict[str, int]]] = {}
    orders: dict[str, tuple[str, list[tuple[str, int]]]] = {}
    for path in AVAILABILITY + ORDERS:
        for line in path.read_text().splitlines():
            o = json.loads(line)
            v = o.get("value") or {}
            if o["topic"] == "ref.items":
                skus.add(v["sku"])
                items[v["wms_item"]] = (v["sku"], v["uom_factors"])
            elif o["topic"] == "wms.fulfillment.events" and v.get("status") == "RELEASED":
                lines = []
                for li in v["lines"]:
                    if li["item"] in items:
                        sku, factors = items[li["item"]]
                        lines.append((sku, li["qty"] * factors.get(li["uom"], 1)))
                orders.setdefault(v["channel_order_id"], (v["channel"], lines))
    return skus, orders


@pytest.fixture
def live_config(broker: LocalBroker, redis_prefix: str, shopify_emulator: Any, amazon_emulator: Any,
                secrets_env: dict[str, str], tmp_path: Path) -> Path:
    skus, orders = _skus_and_orders()
    for order_id, (channel, lines) in orders.items():
        if channel == "shopify-us":
            shopify_emulator.add_order(order_id, lines)
        elif channel == "amazon-us":
            amazon_emulator.add_order(order_id, lines)
    shopify = shopify_channel(shopify_emulator.url, inventory_items={
        sku: f"gid://shopify/InventoryItem/{i + 1}" for i, sku in enumerate(sorted(skus))})
    amazon = amazon_channel(amazon_emulator.url, seller_skus={sku: sku for sku in skus})
    raw = yaml.safe_load(SAMPLE_CONFIG.read_text())
    raw["kafka"]["bootstrap_servers"] = broker.bootstrap
    raw["reference"] = {"locations": str(SAMPLE_CONFIG.parent / "locations.yaml"),
                        "channels": str(SAMPLE_CONFIG.parent / "channels.yaml")}
    raw.update(gap_timeout="1s", unknown_item_timeout="2s", unknown_tracking_timeout="3s",
               metrics_port=0, epoch_interval="1s")
    raw["redis"] = {"enabled": True, "url": REDIS_URL, "prefix": redis_prefix}
    raw["marketplaces"] = marketplace_config(redis_prefix, shopify_us=shopify, amazon_us=amazon)
    path = tmp_path / "atpflow.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_marketplaces_redis_and_fulfillments_end_on_the_last_records(
    live_config: Path, shopify_emulator: Any, amazon_emulator: Any, redis_prefix: str, tmp_path: Path,
) -> None:
    config = load_config(live_config)
    create_topics(config)
    expected = _replay(tmp_path)
    shopify_last = _last(expected["availability.shopify-us"])
    amazon_last = _last(expected["availability.amazon-us"])
    inventory = config.marketplaces["channels"]["shopify-us"]["inventory_items"]
    locations = config.marketplaces["channels"]["shopify-us"]["locations"]
    shipped = [o["value"] for o in expected["shipment.milestones"]
               if o["value"]["level"] == "SHIPMENT" and o["value"]["milestone"] == "SHIPPED"
               and o["value"]["channel"] in ("shopify-us", "amazon-us")]  # b2b: topic only
    assert shopify_last and amazon_last and shipped

    log = open(tmp_path / "run.log", "w+")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "dataflows.cli", "run", "--config", str(live_config), "--flow", "all",
         "-w", "2"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "BYTEWAX_DATAFLOW_API_ENABLED": "false"},
    )
    try:
        _cli("publish", "--config", str(live_config), *map(str, AVAILABILITY + ORDERS))

        def shopify_state() -> dict[str, int | None]:
            return {key: shopify_emulator.available(inventory[key.split("|")[0]], locations[key.split("|")[1]])
                    for key in shopify_last}

        def amazon_state() -> dict[str, int | None]:
            amazon_emulator.wait_processed(0.5)
            listings = amazon_emulator.state()["listings"]
            return {key: listings.get(key) for key in amazon_last}

        want_shopify = {k: v["available"] for k, v in shopify_last.items()}
        want_amazon = {k: v["available"] for k, v in amazon_last.items()}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if shopify_state() == want_shopify and amazon_state() == want_amazon \
                    and _fulfilled(shopify_emulator, amazon_emulator) == len(shipped):
                break
            time.sleep(1.0)
        assert shopify_state() == want_shopify
        assert amazon_state() == want_amazon
        assert _fulfilled(shopify_emulator, amazon_emulator) == len(shipped)

        # Exactly one fulfillment per shipment, with its tracking number and lines.
        by_order: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for m in shipped:
            by_order[m["channel_order_id"]].append(m)
        for order_id, ms in by_order.items():
            channel = ms[0]["channel"]
            if channel == "shopify-us":
                got = shopify_emulator.fulfillments(order_id)
                assert sorted(f["trackingInfo"][0]["number"] for f in got) == \
                    sorted(m["tracking_number"] for m in ms)
                for f in got:
                    m = next(m for m in ms if m["tracking_number"] == f["trackingInfo"][0]["number"])
                    assert sorted((li["sku"], li["quantity"]) for li in f["lines"]) == \
                        sorted((li["sku"], li["qty"]) for li in m["lines"])
            elif channel == "amazon-us":
                packages = amazon_emulator.state()["confirmations"].get(order_id, {})
                assert len(packages) == len(ms)
                assert sorted(p["trackingNumber"] for p in packages.values()) == \
                    sorted(m["tracking_number"] for m in ms)

        # Every scan for a tracking number never shipped is in the dead-letter topic.
        from schemas import codec
        from sinks.kafka import iter_records

        def unknown_tracking(letters: list[dict[str, Any]]) -> list[tuple[str, str]]:
            return sorted((dl["key"], dl["source_id"]) for dl in letters if dl["reason"] == "UNKNOWN_TRACKING")

        want_letters = unknown_tracking([o["value"] for o in expected["atpflow.dead-letter"]])
        assert want_letters
        deadline = time.monotonic() + 20
        while True:
            got = [codec("DeadLetter").decode(r.value)
                   for r in iter_records(config.kafka, [config.topics.dead_letter])]
            if unknown_tracking(got) == want_letters or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert unknown_tracking(got) == want_letters

        # The Redis view holds the newest record of every key.
        client = redis.Redis.from_url(REDIS_URL)
        for channel, last in (("shopify-us", shopify_last), ("amazon-us", amazon_last)):
            for key, rec in last.items():
                stored = client.hgetall(f"{redis_prefix}:avail:{channel}:{key}")
                assert int(stored[b"available"]) == rec["available"], (channel, key, stored)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=20)
        log.seek(0)
        output = log.read()
        log.close()
    assert code == 0, output[-3000:]
    for secret in ("shpat_", "SECRETSECRET", "REFRESHREFRESH"):
        assert secret not in output


def _fulfilled(shopify: Any, amazon: Any) -> int:
    state = shopify.state()
    n = sum(len(o["fulfillments"]) for o in state["orders"].values())
    return n + sum(len(p) for p in amazon.state()["confirmations"].values())
