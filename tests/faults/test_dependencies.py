"""Dependencies that go away mid-run: a marketplace API down, Redis stopped and restarted.

A live run of the availability flow pushes to both marketplace emulators and writes the Redis
view (a private Redis server on a free port, started and stopped by this test by pid, with an
append-only file so that it comes back with its data). Halfway through the input, the Shopify
emulator goes down and Redis is stopped; both come back a few seconds later. Nothing is lost:
the emulators and the view end on every key's last record, as a clean replay computes it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from emulators.configs import amazon_channel, marketplace_config, shopify_channel

from dataflows.broker import LocalBroker
from dataflows.config import SAMPLE_CONFIG, load_config
from sinks.kafka import create_topics

pytest_plugins = ["emulators.fixtures"]
pytestmark = [pytest.mark.kafka, pytest.mark.redis]

FIXTURES = sorted((Path(__file__).parents[1] / "fixtures" / "availability").glob("*.jsonl"))
OUTAGE_S = float(os.environ.get("ATPFLOW_TEST_OUTAGE_S", "5"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """redis-server on a free port with an append-only file, stopped and restarted by pid."""

    def __init__(self, workdir: Path) -> None:
        self.port = _free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is needed (scripts/setup.sh installs it)"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise AssertionError("private redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # writes the append-only file, then exits
            self.proc.wait(timeout=10)
        self.proc = None


def _last(path: Path) -> dict[str, int]:
    best: dict[str, tuple[int, int]] = {}
    for line in path.read_text().splitlines():
        o = json.loads(line)
        v = o["value"]
        if o["key"] not in best or v["version"] > best[o["key"]][0]:
            best[o["key"]] = (v["version"], v["available"])
    return {k: a for k, (_, a) in best.items()}


def test_marketplace_down_and_redis_restarted_mid_run_lose_nothing(
    broker: LocalBroker, shopify_emulator: Any, amazon_emulator: Any, secrets_env: dict[str, str],
    redis_prefix: str, tmp_path: Path,
) -> None:
    out = tmp_path / "replay"
    subprocess.run([sys.executable, "-m", "dataflows.cli", "replay", "--flow", "availability",
                    "--out", str(out), *map(str, FIXTURES)], check=True, capture_output=True)
    want_shopify = _last(out / "availability.shopify-us.jsonl")
    want_amazon = _last(out / "availability.amazon-us.jsonl")
    skus = sorted({k.split("|")[0] for k in want_shopify} | set(want_amazon))
    inventory = {sku: f"gid://shopify/InventoryItem/{i + 1}" for i, sku in enumerate(skus)}

    store = PrivateRedis(tmp_path / "redis-data")
    store.workdir.mkdir()
    store.start()
    raw = yaml.safe_load(SAMPLE_CONFIG.read_text())
    raw["kafka"]["bootstrap_servers"] = broker.bootstrap
    raw["reference"] = {"locations": str(SAMPLE_CONFIG.parent / "locations.yaml"),
                        "channels": str(SAMPLE_CONFIG.parent / "channels.yaml")}
    raw.update(gap_timeout="1s", unknown_item_timeout="2s", metrics_port=0)
    raw["redis"] = {"enabled": True, "url": store.url, "prefix": "atpflow"}
    market = marketplace_config(
        "atpflow", shopify_us=shopify_channel(shopify_emulator.url, inventory_items=inventory),
        amazon_us=amazon_channel(amazon_emulator.url, seller_skus={s: s for s in skus}))
    market["redis_url"] = store.url
    raw["marketplaces"] = market
    config_path = tmp_path / "atpflow.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    config = load_config(config_path)
    create_topics(config)

    lines = [line for f in FIXTURES for line in f.read_text().splitlines()]
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first.write_text("\n".join(lines[: len(lines) // 2]) + "\n")
    second.write_text("\n".join(lines[len(lines) // 2:]) + "\n")

    def publish(path: Path) -> None:
        subprocess.run([sys.executable, "-m", "dataflows.cli", "publish", "--config", str(config_path),
                        str(path)], check=True, capture_output=True)

    log = open(tmp_path / "run.log", "w+")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "dataflows.cli", "run", "--config", str(config_path),
         "--flow", "availability"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "BYTEWAX_DATAFLOW_API_ENABLED": "false"})
    try:
        publish(first)
        time.sleep(2.0)
        if OUTAGE_S:
            shopify_emulator.faults.down_for(OUTAGE_S)
            store.stop()
        publish(second)  # arrives while Shopify and Redis are away
        time.sleep(OUTAGE_S)
        if OUTAGE_S:
            store.start()
        assert proc.poll() is None, "the dataflow must keep running while its dependencies are away"

        view = redis.Redis.from_url(store.url)
        locations = config.marketplaces["channels"]["shopify-us"]["locations"]

        def state() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
            shop = {k: shopify_emulator.available(inventory[k.split("|")[0]], locations[k.split("|")[1]])
                    for k in want_shopify}
            amazon_emulator.wait_processed(0.3)
            listings = amazon_emulator.state()["listings"]
            amz = {k: listings.get(k) for k in want_amazon}
            redis_view = {k: int(view.hget(f"atpflow:avail:shopify-us:{k}", "available") or -1)
                          for k in want_shopify}
            return shop, amz, redis_view

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and state() != (want_shopify, want_amazon, want_shopify):
            time.sleep(1.0)
        assert state() == (want_shopify, want_amazon, want_shopify)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=20)
        store.stop()
        log.seek(0)
        output = log.read()
        log.close()
    assert code == 0, output[-3000:]
