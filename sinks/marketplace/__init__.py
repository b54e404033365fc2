"""Marketplace pushes: channel availability and shipment fulfillments.

Targets: Shopify-style (GraphQL Admin API) and Amazon-style (Selling Partner API) channels.

What the dataflow calls:

- `MarketplaceSink.from_config(config, channel_id, redis_client=..., dead_letter=...)`, then
  `add(record)` per availability record and `flush()` at each checkpoint (`MultiChannelSink`
  routes records of several channels);
- `FulfillmentSink.from_config(...)`, then `add(request_or_dict)` per shipped shipment and
  `flush()`; `fulfillment_from_milestone(record)` turns a milestone record into a request;
- `load_marketplace_config(path_or_dict)` for the `MarketplaceConfig`;
- in a Bytewax flow, the outputs of `sinks.marketplace.bytewax_io` (`MarketplaceOutput`,
  `FulfillmentOutput`, `RedisViewOutput`) wrap the above: records in ``write_batch``, a flush at
  every epoch end, the unconfirmed records as resume state.

Adapters (`ShopifyAdapter`, `AmazonAdapter`) cite the API documentation they follow.
"""

from .amazon import AmazonAdapter, LwaTokenProvider, package_reference_id
from .config import (
    AmazonChannelConfig,
    BreakerConfig,
    LwaConfig,
    MarketplaceConfig,
    RateLimitSpec,
    RetryConfig,
    SecretRef,
    ShopifyChannelConfig,
    load_marketplace_config,
)
from .errors import (
    ApiAuthError,
    ApiUnavailableError,
    CircuitOpenError,
    DeadlineExceeded,
    MarketplaceError,
    Redactor,
    ThrottledError,
    TransientApiError,
)
from .factory import build_adapter, build_caller
from .fulfillment import FulfillmentSink, fulfillment_from_milestone
from .models import (
    FulfillmentLine,
    FulfillmentRequest,
    InventoryUpdate,
    MarketplaceDeadLetter,
    PushResult,
    PushStatus,
    idempotency_key,
    record_key,
)
from .ratelimit import BucketSpec, LocalTokenBucket, RedisRateLimiter
from .resilience import BreakerRegistry, CircuitBreaker, backoff_delay
from .shopify import ShopifyAdapter
from .sink import FlushReport, MarketplaceSink, MultiChannelSink

__all__ = [
    "AmazonAdapter",
    "AmazonChannelConfig",
    "ApiAuthError",
    "ApiUnavailableError",
    "BreakerConfig",
    "BreakerRegistry",
    "BucketSpec",
    "CircuitBreaker",
    "CircuitOpenError",
    "DeadlineExceeded",
    "FlushReport",
    "FulfillmentLine",
    "FulfillmentRequest",
    "FulfillmentSink",
    "InventoryUpdate",
    "LocalTokenBucket",
    "LwaConfig",
    "LwaTokenProvider",
    "MarketplaceConfig",
    "MarketplaceDeadLetter",
    "MarketplaceError",
    "MarketplaceSink",
    "MultiChannelSink",
    "PushResult",
    "PushStatus",
    "RateLimitSpec",
    "Redactor",
    "RedisRateLimiter",
    "RetryConfig",
    "SecretRef",
    "ShopifyAdapter",
    "ShopifyChannelConfig",
    "ThrottledError",
    "TransientApiError",
    "backoff_delay",
    "build_adapter",
    "build_caller",
    "fulfillment_from_milestone",
    "idempotency_key",
    "load_marketplace_config",
    "package_reference_id",
    "record_key",
]
