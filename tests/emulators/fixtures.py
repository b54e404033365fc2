"""pytest fixtures shared by the marketplace, Redis view and serve tests.

Register them in a test module with ``pytest_plugins = ["emulators.fixtures"]``. Redis is the real
server at 127.0.0.1:6379 (or ``ATPFLOW_TEST_REDIS_URL``); every test gets its own key prefix and
its keys are deleted afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from .amazon import AmazonEmulator
from .configs import (
    AMAZON_CLIENT_ID,
    AMAZON_CLIENT_SECRET,
    AMAZON_REFRESH_TOKEN,
    REDIS_URL,
    SHOPIFY_TOKEN,
)
from .shopify import ShopifyEmulator

__all__ = [
    "amazon_emulator",
    "delete_prefix",
    "redis_client",
    "redis_prefix",
    "secrets_env",
    "shopify_emulator",
]


def delete_prefix(client: redis.Redis, prefix: str) -> None:
    """Delete every key under ``prefix``."""
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:  # pragma: no cover - environment problem
        pytest.fail(f"these tests need Redis at {REDIS_URL}: {exc}")
    yield client
    client.close()


@pytest.fixture
def redis_prefix(redis_client: redis.Redis) -> Iterator[str]:
    prefix = f"atpflow-test-{uuid.uuid4().hex[:12]}"
    yield prefix
    delete_prefix(redis_client, prefix)


@pytest.fixture
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The test credentials, given to the config as environment variable names."""
    values = {
        "TEST_SHOPIFY_TOKEN": SHOPIFY_TOKEN,
        "TEST_LWA_CLIENT_ID": AMAZON_CLIENT_ID,
        "TEST_LWA_CLIENT_SECRET": AMAZON_CLIENT_SECRET,
        "TEST_LWA_REFRESH_TOKEN": AMAZON_REFRESH_TOKEN,
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


@pytest.fixture
def shopify_emulator() -> Iterator[ShopifyEmulator]:
    emulator = ShopifyEmulator(SHOPIFY_TOKEN, max_available=200, restore_rate=100)
    emulator.start()
    yield emulator
    emulator.stop()


@pytest.fixture
def amazon_emulator() -> Iterator[AmazonEmulator]:
    emulator = AmazonEmulator(
        seller_id="A2SELLER",
        marketplace_id="ATVPDKIKX0DER",
        client_id=AMAZON_CLIENT_ID,
        client_secret=AMAZON_CLIENT_SECRET,
        refresh_token=AMAZON_REFRESH_TOKEN,
        limits={"patchListingsItem": (20.0, 10.0), "getListingsItem": (20.0, 10.0)},
        processing_delay=(0.05, 0.25),
    )
    emulator.start()
    yield emulator
    emulator.stop()
