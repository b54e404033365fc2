"""Configuration of the marketplace pushes: one `MarketplaceConfig` per deployment.

The config file names *where* a secret lives (an environment variable or a file, such as a
Kubernetes secret mount), never the secret itself: every model here forbids unknown keys, so a
stray ``access_token: shpat_...`` line is a validation error rather than a leaked credential.
Secrets are resolved at start-up into `pydantic.SecretStr`, whose ``repr`` and ``str`` are masked,
so they cannot reach a log line or an exception message by accident.

Default rate limits are the documented ones, scaled down by ``safety`` so that the arrival jitter
between our shared bucket and the marketplace's own bucket never tips us over:

- Shopify GraphQL Admin API: calculated query cost, a leaky bucket per app and store
  (https://shopify.dev/docs/apps/build/apis/graphql-admin/rate-limits). Standard plans restore
  100 points/s; mutations cost 10 points.
- Amazon SP-API: a token bucket per operation (rate per second, burst), see
  https://developer-docs.amazon.com/sp-api/docs/usage-plans-and-rate-limits and
  https://developer-docs.amazon.com/sp-api/docs/listings-items-api-rate-limits
  (patchListingsItem and getListingsItem: 5 requests/s, burst 5) and
  https://developer-docs.amazon.com/sp-api/reference/confirmshipment (2/s, burst 10).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    field_validator,
    model_validator,
)

__all__ = [
    "AmazonChannelConfig",
    "BreakerConfig",
    "ChannelConfig",
    "LwaConfig",
    "MarketplaceConfig",
    "RateLimitSpec",
    "RetryConfig",
    "SecretRef",
    "ShopifyChannelConfig",
    "ShopifyCosts",
    "load_marketplace_config",
]


class _Strict(BaseModel):
    """Base for every config model: unknown keys are errors, instances are immutable."""

    # A secret pasted where a reference belongs must not be echoed back in the error message.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class SecretRef(_Strict):
    """Where to read one secret: exactly one of ``env`` (a variable name) or ``file`` (a path).

    A file's content is stripped of surrounding whitespace (secret mounts often end in a newline).
    """

    env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    file: Path | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("a secret reference names exactly one of 'env' or 'file'")
        return self

    def resolve(self) -> SecretStr:
        """Read the secret now. Errors name the variable or file, never a value."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if not value:
                raise LookupError(f"secret environment variable {self.env!r} is not set")
            return SecretStr(value)
        assert self.file is not None  # guaranteed by the validator
        try:
            value = self.file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise LookupError(
                f"secret file {str(self.file)!r} cannot be read: {exc.strerror}"
            ) from None
        if not value:
            raise LookupError(f"secret file {str(self.file)!r} is empty")
        return SecretStr(value)


class RateLimitSpec(_Strict):
    """A token bucket: ``rate`` tokens per second, at most ``burst`` tokens banked.

    For Shopify a token is one point of calculated query cost; for Amazon one request.
    """

    rate: float = Field(gt=0)
    burst: float = Field(gt=0)


class RetryConfig(_Strict):
    """Retries of one update: exponential backoff with full jitter, then a dead letter.

    ``max_attempts`` counts attempts the API answered with a transient failure (429, THROTTLED,
    5xx, a read timeout). An API that cannot be reached at all (connection refused, reset, circuit
    open) burns no attempts: the update waits in the backlog instead, so an outage loses nothing.
    """

    max_attempts: int = Field(default=8, ge=1)
    base_delay_s: float = Field(default=0.2, gt=0)
    max_delay_s: float = Field(default=10.0, gt=0)


class BreakerConfig(_Strict):
    """Circuit breaker per endpoint: opens after ``failure_threshold`` consecutive failures."""

    failure_threshold: int = Field(default=5, ge=1)
    open_seconds: float = Field(default=5.0, gt=0)


class _ChannelBase(_Strict):
    """Settings every marketplace channel shares."""

    base_url: str = Field(pattern=r"^https?://")
    #: Time budget of one flush, so a checkpoint never blocks on a slow or absent API.
    flush_budget_s: float = Field(default=5.0, gt=0)
    #: HTTP timeouts of one request.
    connect_timeout_s: float = Field(default=3.0, gt=0)
    read_timeout_s: float = Field(default=10.0, gt=0)
    retry: RetryConfig = RetryConfig()
    breaker: BreakerConfig = BreakerConfig()
    #: Read-back: every ``readback_interval_s`` a flush samples ``readback_sample`` pushed keys,
    #: reads them from the API and repairs drift. 0 samples disables it.
    readback_interval_s: float = Field(default=60.0, ge=0)
    readback_sample: int = Field(default=20, ge=0)
    #: When Redis (the shared bucket) is unreachable, each worker falls back to a local bucket
    #: with this share of the configured rate, so N workers stay under the limit together.
    local_fallback_share: float = Field(default=0.5, gt=0, le=1)

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")


class ShopifyCosts(_Strict):
    """Cost estimates taken from the shared bucket before a call (points).

    The bucket is corrected afterwards from ``extensions.cost.throttleStatus``, so an estimate
    that is a little low costs at most one THROTTLED answer, never a drift.
    """

    mutation: float = Field(default=10, gt=0)
    read_per_item: float = Field(default=3, gt=0)
    order_query: float = Field(default=20, gt=0)


class ShopifyChannelConfig(_ChannelBase):
    """A Shopify-style channel: GraphQL Admin API inventory and fulfillment mutations."""

    kind: Literal["shopify"]
    shop: str = Field(min_length=1)
    api_version: str = Field(default="2026-04", pattern=r"^(\d{4}-\d{2}|unstable)$")
    access_token: SecretRef
    #: canonical warehouse id -> Location GID.
    locations: dict[str, str] = Field(default_factory=dict)
    #: Location used for keys without a warehouse (channels that are not per_location).
    default_location_id: str | None = None
    #: sku -> InventoryItem GID.
    inventory_items: dict[str, str] = Field(default_factory=dict)
    #: Quantities per inventorySetQuantities call (the API takes a list; keep calls cheap).
    batch_size: int = Field(default=100, ge=1, le=250)
    #: Reason recorded with every change (one of Shopify's documented reasons).
    reason: str = "correction"
    #: Send ``@idempotent(key:)`` on fulfillmentCreate as well as on the inventory mutation.
    fulfillment_idempotency: bool = True
    rate_limit: RateLimitSpec = RateLimitSpec(rate=90, burst=900)
    costs: ShopifyCosts = ShopifyCosts()


class LwaConfig(_Strict):
    """Login with Amazon: the refresh_token grant that yields the SP-API access token."""

    token_url: str = Field(default="https://api.amazon.com/auth/o2/token", pattern=r"^https?://")
    client_id: SecretRef
    client_secret: SecretRef
    refresh_token: SecretRef


def _amazon_default_limits() -> dict[str, RateLimitSpec]:
    # Documented defaults, with headroom: our shared bucket and Amazon's are not in lock-step.
    return {
        "patchListingsItem": RateLimitSpec(rate=4, burst=4),
        "getListingsItem": RateLimitSpec(rate=4, burst=4),
        "getOrderItems": RateLimitSpec(rate=0.4, burst=20),
        "confirmShipment": RateLimitSpec(rate=1.6, burst=8),
    }


class AmazonChannelConfig(_ChannelBase):
    """An Amazon-style channel: Listings Items API 2021-08-01 and Orders API v0."""

    kind: Literal["amazon"]
    seller_id: str = Field(min_length=1)
    marketplace_id: str = Field(min_length=1)
    product_type: str = "PRODUCT"
    fulfillment_channel_code: str = "DEFAULT"
    lwa: LwaConfig
    #: sku (or ``sku|warehouse`` key) -> seller SKU; a sku not listed is used as is
    #: when ``identity_skus`` is true.
    seller_skus: dict[str, str] = Field(default_factory=dict)
    identity_skus: bool = True
    #: ACCEPTED means queued, not applied: no second submission for a seller SKU until the
    #: previous one has had this long to settle.
    settle_s: float = Field(default=30.0, ge=0)
    rate_limits: dict[str, RateLimitSpec] = Field(default_factory=_amazon_default_limits)
    #: carrier name -> Amazon carrierCode; a carrier not listed is sent as ``Other`` with its name.
    carrier_codes: dict[str, str] = Field(default_factory=dict)

    @field_validator("rate_limits")
    @classmethod
    def _fill_defaults(cls, value: dict[str, RateLimitSpec]) -> dict[str, RateLimitSpec]:
        merged = _amazon_default_limits()
        merged.update(value)
        return merged


ChannelConfig = Annotated[ShopifyChannelConfig | AmazonChannelConfig, Field(discriminator="kind")]


class MarketplaceConfig(_Strict):
    """Every pushed channel by its id (the ids of ``channels.yaml``), plus the shared Redis."""

    redis_url: str = Field(default="redis://127.0.0.1:6379/0", pattern=r"^rediss?://|^unix://")
    #: Prefix of every Redis key the marketplace machinery writes (rate-limit buckets).
    redis_prefix: str = Field(default="atpflow", min_length=1)
    channels: dict[str, ChannelConfig] = Field(default_factory=dict)

    def channel(self, channel_id: str) -> ShopifyChannelConfig | AmazonChannelConfig:
        """The config of one channel; `KeyError` names the unknown id."""
        try:
            return self.channels[channel_id]
        except KeyError:
            raise KeyError(
                f"channel {channel_id!r} is not configured for marketplace pushes"
            ) from None


_CONFIG_ADAPTER: TypeAdapter[MarketplaceConfig] = TypeAdapter(MarketplaceConfig)


def load_marketplace_config(source: str | Path | dict[str, Any]) -> MarketplaceConfig:
    """Validate a config from a YAML file path or an already parsed mapping.

    A YAML file may hold the model at its top level or under a ``marketplace:`` key, so the
    section can live inside the main atpflow config.
    """
    if isinstance(source, dict):
        data: Any = source
    else:
        data = yaml.safe_load(Path(source).read_text(encoding="utf-8")) or {}
    if isinstance(data, dict) and "marketplace" in data and "channels" not in data:
        data = data["marketplace"]
    return _CONFIG_ADAPTER.validate_python(data)
