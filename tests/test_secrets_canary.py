"""Secret canary: planted credentials must appear nowhere we write.

Fake credentials (unique canary strings) are planted where real ones live: the Kafka SASL
password in a mounted file (`ATPFLOW__KAFKA__SASL_PASSWORD_FILE`) and in an environment
variable, the Shopify access token and the Amazon LWA client secret and refresh token in
environment variables named by the marketplace config. Then the real processes run their
failure paths too (marketplace APIs that refuse connections, poison records, a bad config)
and every output is grepped for each canary, raw and base64-encoded: the logs of
`atpflow run`, the dead-letter topic (every field, raw bytes included), the `/metrics`
endpoint, the rendered dataflow Bytewax writes for its API, start-up error messages, and
the demo's output.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from dataflows.broker import LocalBroker
from dataflows.config import load_config
from tests.faults.harness import (
    REPO,
    Cluster,
    cli,
    free_port,
    publish,
    read_availability,
    read_dead_letters,
    wait_for,
    write_config,
)

pytestmark = [pytest.mark.kafka, pytest.mark.faults]

CANARIES = {
    "kafka_file": "canary-kafka-file-7f3a9c1e",
    "kafka_env": "canary-kafka-env-51d0b2aa",
    "shopify": "shpat_canary0f1e2d3c4b5a69788796a5b4",
    "lwa_secret": "amzn1.oa2-cs.v1.canary9e8d7c6b5a4f",
    "lwa_refresh": "Atzr|canary-refresh-1a2b3c4d5e6f",
    "lwa_client": "amzn1.application-oa2-client.canary0042",
}
FIXTURE = REPO / "tests" / "fixtures" / "availability" / "dead_letters.jsonl"


def _forms(secret: str) -> list[bytes]:
    raw = secret.encode()
    return [raw, base64.b64encode(raw), raw.hex().encode()]


def _leaks(where: str, blob: bytes | str) -> list[str]:
    data = blob.encode() if isinstance(blob, str) else blob
    return [f"{name} in {where}" for name, secret in CANARIES.items()
            for form in _forms(secret) if form in data]


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of every process started here, with the canaries planted."""
    secrets = tmp_path_factory.mktemp("secrets")
    kafka_file = secrets / "kafka-password"
    kafka_file.write_text(CANARIES["kafka_file"] + "\n")
    return {
        **os.environ,
        "ATPFLOW__KAFKA__SASL_PASSWORD_FILE": str(kafka_file),
        "ATPFLOW_CANARY_KAFKA_PASSWORD": CANARIES["kafka_env"],
        "SHOPIFY_ACCESS_TOKEN": CANARIES["shopify"],
        "AMAZON_LWA_CLIENT_ID": CANARIES["lwa_client"],
        "AMAZON_LWA_CLIENT_SECRET": CANARIES["lwa_secret"],
        "AMAZON_LWA_REFRESH_TOKEN": CANARIES["lwa_refresh"],
    }


def _marketplaces(dead_port: int) -> dict[str, Any]:
    """Both marketplaces pointed at a port nobody listens on: every push fails and retries."""
    base = f"http://127.0.0.1:{dead_port}"
    quick = {"retry": {"max_attempts": 2, "base_delay_s": 0.05, "max_delay_s": 0.1},
             "breaker": {"failure_threshold": 2, "open_seconds": 0.5},
             "connect_timeout_s": 0.5, "read_timeout_s": 0.5, "flush_budget_s": 1.0,
             "readback_interval_s": 0}
    return {
        "redis_url": os.environ.get("ATPFLOW_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
        "redis_prefix": f"canary-{os.getpid()}",
        "channels": {
            "shopify-us": {"kind": "shopify", "base_url": base, "shop": "canary",
                           "access_token": {"env": "SHOPIFY_ACCESS_TOKEN"},
                           "locations": {"ATL1": "gid://shopify/Location/1"},
                           "inventory_items": {"SKU-1": "gid://shopify/InventoryItem/1"},
                           **quick},
            "amazon-us": {"kind": "amazon", "base_url": base, "seller_id": "CANARY",
                          "marketplace_id": "ATVPDKIKX0DER",
                          "lwa": {"token_url": f"{base}/auth/o2/token",
                                  "client_id": {"env": "AMAZON_LWA_CLIENT_ID"},
                                  "client_secret": {"env": "AMAZON_LWA_CLIENT_SECRET"},
                                  "refresh_token": {"env": "AMAZON_LWA_REFRESH_TOKEN"}},
                          **quick},
        },
    }


def test_live_run_leaks_no_secret(planted: dict[str, str], tmp_path: Path) -> None:
    leaks: list[str] = []
    port = free_port()
    with LocalBroker() as broker:
        cfg_path = write_config(
            tmp_path / "atpflow.yaml", broker.bootstrap, recovery_dir=tmp_path / "recovery",
            metrics_port=port, extra={"marketplaces": _marketplaces(free_port())},
        )
        # The SASL password from the environment too (PLAINTEXT: set, never sent).
        planted = {**planted, "ATPFLOW__KAFKA__SASL_PASSWORD_ENV": "ATPFLOW_CANARY_KAFKA_PASSWORD",
                   "BYTEWAX_DATAFLOW_API_ENABLED": "true",
                   "BYTEWAX_DATAFLOW_API_CACHE_PATH": str(tmp_path)}
        config = load_config(cfg_path, environ=planted)
        # (read_secret reads this process's environment: here the file is what it finds)
        assert config.kafka.client_settings()["sasl.password"] in (CANARIES["kafka_env"],
                                                                   CANARIES["kafka_file"])
        cli("topics", "create", "--config", str(cfg_path), env=planted)
        cli("recovery", "init", "--config", str(cfg_path), "--flow", "availability", env=planted)
        cluster = Cluster(cfg_path, tmp_path / "logs", env=planted)
        cluster.start()
        metrics = b""
        try:
            publish(config, FIXTURE)
            assert wait_for(lambda: read_dead_letters(config) and read_availability(config), 30)
            time.sleep(2.0)  # marketplace pushes fail, retry, dead-letter
            metrics = wait_for(lambda: _scrape(port), 10, 0.5) or b""
            assert b"atpflow_records_in_total" in metrics, "metrics endpoint not scraped"
        finally:
            codes, _ = cluster.terminate(15)
            cluster.stop()
        # Not asserted here: with both marketplace APIs down the drain on SIGTERM outlasts the
        # runner's grace period (exit 3, killed; reported to the marketplace owner).
        assert codes in ([0], [3]), cluster.log_tail()
        letters = read_dead_letters(config)
        assert letters
        leaks += _leaks("the run's logs", cluster.log_text())
        leaks += _leaks("dead letters", repr(letters).encode())
        leaks += _leaks("availability records", repr([r.value for r in read_availability(config)]))
        leaks += _leaks("/metrics", metrics)
        cache = tmp_path / "dataflow.json"
        if cache.exists():
            leaks += _leaks("the rendered dataflow", cache.read_bytes())
        for path in (tmp_path / "recovery").rglob("*"):
            if path.is_file():
                leaks += _leaks(f"recovery store {path.name}", path.read_bytes())
        # Failure paths of the CLI: a broker that does not answer, a command that fails.
        for args in (["lag", "--config", str(cfg_path), "--connect-timeout", "1",
                      "--bootstrap", "127.0.0.1:1"],
                     ["dead-letters", "list", "--config", str(cfg_path), "--connect-timeout", "1",
                      "--bootstrap", "127.0.0.1:1"]):
            proc = cli(*args, check=False, env=planted, timeout=60)
            assert proc.returncode != 0
            leaks += _leaks(f"`atpflow {args[0]}` errors", proc.stdout + proc.stderr)
    assert not leaks, leaks


def _scrape(port: int) -> bytes | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:  # noqa: S310
            return resp.read()
    except OSError:
        return None


@pytest.mark.parametrize("misplaced", [
    # A secret pasted where a reference belongs, or under a field name that does not exist.
    {"ATPFLOW__KAFKA__SASL_PASSWORD": CANARIES["kafka_env"]},
    {"ATPFLOW__KAFKA__SASL_PASSWORD_ENV": CANARIES["kafka_env"]},
    pytest.param({"ATPFLOW__KAFKA__SASL_MECHANISM": "{" + CANARIES["kafka_env"]}, id="not-yaml"),
    pytest.param({"ATPFLOW__MARKETPLACES": '{"channels": {"shopify-us": {"kind": "shopify", '
                                           f'"access_token": "{CANARIES["shopify"]}"}}}}}}'},
                 id="token-pasted-in-marketplaces"),
    pytest.param({"ATPFLOW__MARKETPLACES": '{"channels": {"shopify-us": {"kind": "shopify", '
                                           f'"access_token": "{CANARIES["shopify"]}"}}}}'},
                 id="token-in-malformed-marketplaces"),
])
def test_config_errors_do_not_echo_a_misplaced_secret(planted: dict[str, str],
                                                      misplaced: dict[str, str]) -> None:
    proc = cli("lag", "--connect-timeout", "1", "--bootstrap", "127.0.0.1:1", check=False,
               env={**planted, **misplaced}, timeout=60)
    assert proc.returncode != 0
    assert not _leaks("config error", proc.stdout + proc.stderr), proc.stderr[-2000:]


@pytest.mark.slow  # ~20 s: the long part of the fault suite (pytest -m "faults and slow")
def test_demo_output_leaks_no_secret(planted: dict[str, str], tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "dataflows.cli", "demo"], capture_output=True,
                          env={**planted, "COLUMNS": "160"}, cwd=tmp_path, timeout=240,
                          check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:].decode(errors="replace")
    assert not _leaks("the demo's output", out)
