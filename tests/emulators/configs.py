"""Test credentials and config builders for the emulator-backed tests (no fixtures here)."""

from __future__ import annotations

import os
from typing import Any

__all__ = [
    "AMAZON_CLIENT_ID",
    "AMAZON_CLIENT_SECRET",
    "AMAZON_REFRESH_TOKEN",
    "REDIS_URL",
    "SHOPIFY_TOKEN",
    "amazon_channel",
    "marketplace_config",
    "shopify_channel",
]

SHOPIFY_TOKEN = "shpat_" + "f00dfeed" * 4
AMAZON_CLIENT_ID = "amzn1.application-oa2-client.0123456789abcdef"
AMAZON_CLIENT_SECRET = "amzn1.oa2-cs.v1.SECRETSECRETSECRET0123456789"  # noqa: S105 - test value
AMAZON_REFRESH_TOKEN = "Atzr|IwEBIREFRESHREFRESHREFRESH0123456789"  # noqa: S105 - test value
REDIS_URL = os.environ.get("ATPFLOW_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


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
