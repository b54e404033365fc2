"""The availability lookup service: in-process against real Redis, and `serve()` as a process."""

from __future__ import annotations

import subprocess
import sys
import time
import warnings
from collections.abc import Iterator

import httpx
import pytest
import redis
import redis.asyncio as aioredis
from emulators.base import free_port
from emulators.records import availability_record

from sinks.redis_view import RedisViewWriter
from sinks.serve import MAX_BATCH, create_app

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's notice about its httpx-based test client
    from fastapi.testclient import TestClient

#: The shared fixtures (Redis with a per-test prefix, emulators, test secrets).
pytest_plugins = ["emulators.fixtures"]

pytestmark = pytest.mark.redis


@pytest.fixture
def seeded(redis_client: redis.Redis, redis_prefix: str) -> str:
    writer = RedisViewWriter(redis_client, prefix=redis_prefix)
    writer.add(availability_record("shopify-us", "SKU-1", "ATL1", 7, 3, previous=5))
    writer.add(availability_record("shopify-us", "SKU-1", "DAL1", 4, 2))
    writer.add(availability_record("shopify-us", "SKU-2", "ATL1", 0, 1))
    writer.add(availability_record("amazon-us", "SKU-1", None, 11, 9))
    writer.flush()
    return redis_prefix


@pytest.fixture
def client(seeded: str) -> Iterator[TestClient]:
    with TestClient(create_app(aioredis.Redis(), prefix=seeded)) as test_client:
        yield test_client


def test_single_lookup_sums_locations_and_shows_warehouses(client: TestClient) -> None:
    body = client.get("/v1/availability/shopify-us/SKU-1").json()
    assert body["available"] == 11 and body["sku"] == "SKU-1"
    assert [(e["location"], e["available"], e["version"]) for e in body["entries"]] == [
        ("ATL1", 7, 3),
        ("DAL1", 4, 2),
    ]
    assert body["entries"][0]["previous"] == 5 and body["entries"][0]["source"] == "wms"
    assert {w["warehouse"]: w["atp"] for w in body["warehouses"]} == {"ATL1": 9, "DAL1": 6}
    summed = client.get("/v1/availability/amazon-us/SKU-1").json()
    assert summed["available"] == 11 and summed["entries"][0]["location"] is None
    assert {w["warehouse"] for w in summed["warehouses"]} == {"ATL1", "DAL1", "RNO1"}


def test_location_filter(client: TestClient) -> None:
    body = client.get("/v1/availability/shopify-us/SKU-1", params={"location": "DAL1"}).json()
    assert body["available"] == 4 and [w["warehouse"] for w in body["warehouses"]] == ["DAL1"]
    assert (
        client.get("/v1/availability/shopify-us/SKU-1", params={"location": "RNO1"}).status_code
        == 404
    )


def test_unknown_channel_and_sku_are_404(client: TestClient) -> None:
    assert client.get("/v1/availability/nope/SKU-1").status_code == 404
    assert client.get("/v1/availability/shopify-us/SKU-404").status_code == 404
    assert client.get("/v1/availability/nope", params={"sku": "SKU-1"}).status_code == 404


def test_batch_lookup_and_its_limit(client: TestClient) -> None:
    body = client.get(
        "/v1/availability/shopify-us",
        params=[("sku", "SKU-2"), ("sku", "SKU-404"), ("sku", "SKU-1"), ("sku", "SKU-2")],
    ).json()
    assert [i["sku"] for i in body["items"]] == ["SKU-2", "SKU-1"]
    assert body["missing"] == ["SKU-404"]
    full = [("sku", f"SKU-{n}") for n in range(MAX_BATCH)]
    assert client.get("/v1/availability/shopify-us", params=full).status_code == 200
    assert (
        client.get("/v1/availability/shopify-us", params=[*full, ("sku", "one-more")]).status_code
        == 422
    )
    assert client.get("/v1/availability/shopify-us").status_code == 422


def test_health_and_openapi(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    spec = client.get("/openapi.json").json()
    assert {"/v1/availability/{channel}/{sku}", "/v1/availability/{channel}", "/healthz"} <= set(
        spec["paths"]
    )


def test_health_reports_a_missing_redis() -> None:
    dead = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=None)
    with TestClient(create_app(dead)) as test_client:
        response = test_client.get("/healthz")
        assert response.status_code == 503
        assert test_client.get("/v1/availability/shopify-us/SKU-1").status_code == 503


def test_serve_runs_as_a_process(seeded: str) -> None:
    port = free_port()
    code = (
        "from sinks.serve import serve; "
        f"serve({{'port': {port}, 'redis_prefix': '{seeded}', 'log_level': 'error'}})"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])  # noqa: S603 - our own code
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "serve did not come up"
            time.sleep(0.1)
        body = httpx.get(f"http://127.0.0.1:{port}/v1/availability/shopify-us/SKU-1").json()
        assert body["available"] == 11
    finally:
        proc.terminate()
        proc.wait(timeout=10)
