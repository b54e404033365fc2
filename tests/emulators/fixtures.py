"""pytest fixtures and config builders shared by the marketplace, Redis view and serve tests.

Import them into a test module (``from emulators.fixtures import *``). Redis is the real server
at 127.0.0.1:6379; every test gets its own key prefix and its keys are deleted afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from .amazon import AmazonEmulator
from .shopify import ShopifyEmulator

__all__ = [
    "AMAZON_CLIENT_ID",
    "AMAZON_CLIENT_SECRET",
    "AMAZON_REFRESH_TOKEN",
    "SHOPIFY_TOKEN",
    "amazon_channel",
    "amazon_emulator",
    "delete_prefix",
    "marketplace_config",
    "redis_client",
    "redis_prefix",
    "secrets_env",
    "shopify_channel",
    "shopify_emulator",
]

SHOPIFY_TOKEN = "shpat_" + "f00dfeed" * 4
AMAZON_CLIENT_ID = "amzn1.application-oa2-client.0123456789abcdef"
AMAZON_CLIENT_SECRET = "amzn1.oa2-cs.v1.SECRETSECRETSECRET0123456789"  # noqa: S105 - test value
AMAZON_REFRESH_TOKEN = "Atzr|IwEBIREFRESHREFRESHREFRESH0123456789"  # noqa: S105 - test value
REDIS_URL = os.environ.get("ATPFLOW_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


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


def shopify_channel(
    url: str, skus: int = 20, warehouses: tuple[str, ...] = ("ATL1", "DAL1"), **overrides: Any
) -> dict[str, Any]:
    """A shopify channel config dict.

    SKU-<n> maps to InventoryItem/<1000+n>, the i-th warehouse to Location/<i+1>.
    """
    channel: dict[str, Any] = {
        "kind": "shopify",
        "base_url": url,
        "shop": "atpflow-test",
        "access_token": {"env": "TEST_SHOPIFY_TOKEN"},
        "locations": {wh: f"gid://shopify/Location/{i + 1}" for i, wh in enumerate(warehouses)},
        "inventory_items": {
            f"SKU-{n}": f"gid://shopify/InventoryItem/{1000 + n}" for n in range(skus)
        },
        "rate_limit": {"rate": 80, "burst": 150},
        "retry": {"max_attempts": 6, "base_delay_s": 0.05, "max_delay_s": 0.5},
        "breaker": {"failure_threshold": 3, "open_seconds": 0.5},
        "read_timeout_s": 2.0,
        "connect_timeout_s": 1.0,
        "readback_interval_s": 3600,
    }
    channel.update(overrides)
    return channel


def amazon_channel(url: str, **overrides: Any) -> dict[str, Any]:
    channel: dict[str, Any] = {
        "kind": "amazon",
        "base_url": url,
        "seller_id": "A2SELLER",
        "marketplace_id": "ATVPDKIKX0DER",
        "lwa": {
            "token_url": f"{url}/auth/o2/token",
            "client_id": {"env": "TEST_LWA_CLIENT_ID"},
            "client_secret": {"env": "TEST_LWA_CLIENT_SECRET"},
            "refresh_token": {"env": "TEST_LWA_REFRESH_TOKEN"},
        },
        "settle_s": 0.4,
        "rate_limits": {
            "patchListingsItem": {"rate": 16, "burst": 8},
            "getListingsItem": {"rate": 16, "burst": 8},
        },
        "retry": {"max_attempts": 6, "base_delay_s": 0.05, "max_delay_s": 0.5},
        "breaker": {"failure_threshold": 3, "open_seconds": 0.5},
        "read_timeout_s": 2.0,
        "connect_timeout_s": 1.0,
        "readback_interval_s": 3600,
    }
    channel.update(overrides)
    return channel


def marketplace_config(prefix: str, **channels: dict[str, Any]) -> dict[str, Any]:
    """A MarketplaceConfig dict; channel ids are given as keyword names with ``_`` for ``-``."""
    return {
        "redis_url": REDIS_URL,
        "redis_prefix": prefix,
        "channels": {name.replace("_", "-"): channel for name, channel in channels.items()},
    }
