"""Builds a channel's adapter and its shared machinery (HTTP client, limiter, breakers)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ._metrics import metric
from .amazon import AmazonAdapter, LwaTokenProvider
from .config import AmazonChannelConfig, MarketplaceConfig, RateLimitSpec, ShopifyChannelConfig
from .errors import Redactor
from .ratelimit import BucketSpec, RedisRateLimiter
from .resilience import BreakerRegistry
from .shopify import ShopifyAdapter
from .transport import ApiCaller

__all__ = ["build_adapter", "build_caller", "connect_channel", "redis_client_for"]

_FALLBACK_LIMIT = RateLimitSpec(rate=1, burst=1)


def _bucket_resolver(channel: ShopifyChannelConfig | AmazonChannelConfig):  # type: ignore[no-untyped-def]
    """Operation -> bucket. One bucket per *account*, so channels sharing an account share it."""
    if isinstance(channel, ShopifyChannelConfig):
        # Every GraphQL call draws on the same cost bucket of the (app, store) pair.
        spec = BucketSpec(
            f"shopify:{channel.shop}", channel.rate_limit.rate, channel.rate_limit.burst
        )
        return lambda _operation: spec
    limits = channel.rate_limits

    def resolve(operation: str) -> BucketSpec:
        limit = limits.get(operation, _FALLBACK_LIMIT)
        return BucketSpec(
            f"amazon:{channel.seller_id}:{channel.marketplace_id}:{operation}",
            limit.rate,
            limit.burst,
        )

    return resolve


def redis_client_for(config: MarketplaceConfig) -> redis.Redis:
    """A Redis client that fails fast: the limiter falls back to a local bucket rather than wait."""
    return redis.Redis.from_url(
        config.redis_url,
        socket_timeout=1.0,
        socket_connect_timeout=1.0,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 1),
    )


def build_caller(
    channel_id: str,
    config: MarketplaceConfig,
    redis_client: redis.Redis,
    http_client: httpx.Client | None = None,
) -> ApiCaller:
    """The guarded HTTP caller of one channel."""
    channel = config.channel(channel_id)
    client = http_client or httpx.Client(
        timeout=httpx.Timeout(
            connect=channel.connect_timeout_s,
            read=channel.read_timeout_s,
            write=channel.read_timeout_s,
            pool=channel.connect_timeout_s,
        ),
        limits=httpx.Limits(max_connections=8, max_keepalive_connections=8),
        follow_redirects=False,
    )
    limiter = RedisRateLimiter(
        redis_client,
        _bucket_resolver(channel),
        prefix=config.redis_prefix,
        local_fallback_share=channel.local_fallback_share,
        on_redis_error=lambda: metric("REDIS_WRITE_ERRORS").inc(),
    )
    return ApiCaller(
        channel_id, client, limiter, BreakerRegistry(channel_id, channel.breaker), Redactor()
    )


def build_adapter(
    channel_id: str, config: MarketplaceConfig, caller: ApiCaller
) -> ShopifyAdapter | AmazonAdapter:
    """The adapter of one channel, with its secrets resolved now (so a missing one fails fast)."""
    channel = config.channel(channel_id)
    if isinstance(channel, ShopifyChannelConfig):
        return ShopifyAdapter(channel_id, channel, caller, channel.access_token.resolve())
    lwa = LwaTokenProvider(
        caller,
        channel.lwa.token_url,
        channel.lwa.client_id.resolve(),
        channel.lwa.client_secret.resolve(),
        channel.lwa.refresh_token.resolve(),
    )
    return AmazonAdapter(channel_id, channel, caller, lwa)


def connect_channel(
    channel_id: str,
    config: MarketplaceConfig,
    redis_client: redis.Redis | None = None,
    http_client: httpx.Client | None = None,
) -> tuple[ShopifyAdapter | AmazonAdapter, Callable[[], None] | None]:
    """A channel's adapter, and what closes the HTTP client made for it (None if given one)."""
    caller = build_caller(channel_id, config, redis_client or redis_client_for(config), http_client)
    adapter = build_adapter(channel_id, config, caller)
    return adapter, (caller.client.close if http_client is None else None)
