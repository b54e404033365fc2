"""One rate limit per marketplace account, shared by every worker and process through Redis.

Each bucket is a Redis hash updated by one Lua script per call, so "refill, compare, take" is
atomic across processes, and the clock is Redis's own (``TIME``), so workers on hosts with skewed
clocks still agree. The bucket also carries what the API told us:

- ``blocked_until``: a Retry-After (or a THROTTLED answer) blocks *every* worker, not just the one
  that was told;
- ``rate_cap``: a lower rate learnt from ``x-amzn-RateLimit-Limit`` caps the configured one
  (https://developer-docs.amazon.com/sp-api/docs/usage-plans-and-rate-limits);
- ``observe()``: Shopify reports the real bucket in ``extensions.cost.throttleStatus``
  (https://shopify.dev/docs/apps/build/apis/graphql-admin/rate-limits); our tokens never exceed
  ``currentlyAvailable``, so an estimate that was too low is corrected at once.

When Redis is unreachable each worker falls back to a local bucket with a share of the rate,
rather than stopping the pushes or running unthrottled.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from .errors import DeadlineExceeded

__all__ = ["BucketSpec", "LocalTokenBucket", "RedisRateLimiter"]

_log = logging.getLogger("atpflow.marketplace")

# KEYS[1]: bucket hash. ARGV: rate, capacity, cost, ttl_ms.
# Returns {granted (0/1), wait_ms}.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', KEYS[1], 'tokens', 'ts', 'blocked_until', 'rate_cap')
local rate = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
local cost = math.min(tonumber(ARGV[3]), cap)
if h[4] then rate = math.min(rate, tonumber(h[4])) end
local tokens = tonumber(h[1])
local ts = tonumber(h[2])
if tokens == nil or ts == nil then
  tokens = cap
  ts = now
end
if now > ts then tokens = math.min(cap, tokens + (now - ts) * rate / 1000) end
local blocked = tonumber(h[3]) or 0
local granted = 0
local wait = 0
if now < blocked then
  wait = blocked - now
elseif tokens >= cost then
  tokens = tokens - cost
  granted = 1
else
  wait = math.ceil((cost - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(math.max(now, ts)))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]))
return {granted, wait}
"""

# KEYS[1]: bucket hash. ARGV: block_ms, ttl_ms. Moves blocked_until forward, never back.
_PENALIZE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = now + tonumber(ARGV[1])
local cur = tonumber(redis.call('HGET', KEYS[1], 'blocked_until')) or 0
if until_ms > cur then redis.call('HSET', KEYS[1], 'blocked_until', tostring(until_ms)) end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return math.max(until_ms, cur) - now
"""

# KEYS[1]: bucket hash. ARGV: rate, capacity, reported_available, ttl_ms.
# Refills to now, then lowers the tokens to what the API reported (never raises them: answers of
# concurrent workers arrive out of order, and the lower figure is the safe one).
_OBSERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', KEYS[1], 'tokens', 'ts', 'rate_cap')
local rate = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
if h[3] then rate = math.min(rate, tonumber(h[3])) end
local tokens = tonumber(h[1]) or cap
local ts = tonumber(h[2]) or now
if now > ts then tokens = math.min(cap, tokens + (now - ts) * rate / 1000) end
tokens = math.min(tokens, tonumber(ARGV[3]))
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(math.max(now, ts)))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]))
return 1
"""

_TTL_MS = 3_600_000
#: After a Redis failure, use the local bucket for this long before trying Redis again: a client
#: with retries can take seconds to fail, and a flush must not pay that on every call.
_REDIS_COOLDOWN_S = 5.0


@dataclass(frozen=True, slots=True)
class BucketSpec:
    """Where a call's tokens come from: the Redis bucket name, its rate and capacity."""

    name: str
    rate: float
    capacity: float


class LocalTokenBucket:
    """An in-process token bucket: the fallback while Redis is unreachable."""

    def __init__(
        self, rate: float, capacity: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.capacity = capacity
        self._tokens = capacity
        self._clock = clock
        self._ts = clock()
        self._blocked_until = 0.0
        self._lock = threading.Lock()

    def try_take(self, cost: float) -> float:
        """Take ``cost`` tokens and return 0, or take nothing and return the seconds to wait."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._ts) * self.rate)
            self._ts = now
            if now < self._blocked_until:
                return self._blocked_until - now
            cost = min(cost, self.capacity)
            if self._tokens >= cost:
                self._tokens -= cost
                return 0.0
            return (cost - self._tokens) / self.rate

    def block(self, seconds: float) -> None:
        with self._lock:
            self._blocked_until = max(self._blocked_until, self._clock() + seconds)

    def lower(self, available: float) -> None:
        with self._lock:
            self._tokens = min(self._tokens, available)


class RedisRateLimiter:
    """Token buckets in Redis, one per account (Shopify) or per account and operation (Amazon).

    ``resolve(operation)`` maps an operation name to its `BucketSpec`; the limiter itself knows
    nothing about marketplaces.
    """

    def __init__(
        self,
        client: redis.Redis,
        resolve: Callable[[str], BucketSpec],
        *,
        prefix: str = "atpflow",
        local_fallback_share: float = 0.5,
        on_redis_error: Callable[[], None] | None = None,
    ) -> None:
        self._redis = client
        self._resolve = resolve
        self._prefix = prefix
        self._share = local_fallback_share
        self._on_redis_error = on_redis_error
        self._acquire = client.register_script(_ACQUIRE)
        self._penalize = client.register_script(_PENALIZE)
        self._observe = client.register_script(_OBSERVE)
        self._local: dict[str, LocalTokenBucket] = {}
        self._local_lock = threading.Lock()
        self._redis_down_until = 0.0

    def key(self, spec: BucketSpec) -> str:
        """The Redis key of a bucket."""
        return f"{self._prefix}:ratelimit:{spec.name}"

    def acquire(self, operation: str, cost: float, deadline: float) -> None:
        """Wait until ``cost`` tokens are granted for ``operation``.

        Raises `DeadlineExceeded` as soon as the wait would end after ``deadline`` (a
        `time.monotonic` instant): a flush gives up early instead of sleeping past its budget.
        """
        spec = self._resolve(operation)
        while True:
            wait = self._try(spec, cost)
            if wait <= 0:
                return
            # A little jitter so that workers woken by the same refill do not collide.
            wait += random.uniform(0, min(0.05, wait * 0.1))  # noqa: S311 - not crypto
            if time.monotonic() + wait > deadline:
                raise DeadlineExceeded(
                    f"rate limit of {spec.name} would wait {wait:.2f}s past the deadline"
                )
            time.sleep(wait)

    def penalize(self, operation: str, seconds: float) -> None:
        """Block the operation's bucket for every worker for ``seconds`` (a Retry-After)."""
        if seconds <= 0:
            return
        spec = self._resolve(operation)
        if self._redis_usable():
            try:
                self._penalize(keys=[self.key(spec)], args=[int(seconds * 1000), _TTL_MS])
            except redis.RedisError:
                self._redis_failed()
        self._local_bucket(spec).block(seconds)

    def observe(self, operation: str, available: float) -> None:
        """Lower the bucket to what the API reported as currently available."""
        spec = self._resolve(operation)
        if self._redis_usable():
            try:
                self._observe(
                    keys=[self.key(spec)], args=[spec.rate, spec.capacity, available, _TTL_MS]
                )
            except redis.RedisError:
                self._redis_failed()
        self._local_bucket(spec).lower(available)

    def learn_rate(self, operation: str, rate: float) -> None:
        """Cap the operation's rate at ``rate`` for every worker (from a rate-limit header)."""
        spec = self._resolve(operation)
        if rate <= 0 or rate >= spec.rate or not self._redis_usable():
            return
        try:
            self._redis.hset(self.key(spec), "rate_cap", str(rate))
        except redis.RedisError:
            self._redis_failed()

    def _try(self, spec: BucketSpec, cost: float) -> float:
        if not self._redis_usable():
            return self._local_bucket(spec).try_take(cost)
        try:
            granted, wait_ms = self._acquire(
                keys=[self.key(spec)], args=[spec.rate, spec.capacity, cost, _TTL_MS]
            )
        except redis.RedisError:
            self._redis_failed()
            return self._local_bucket(spec).try_take(cost)
        return 0.0 if int(granted) == 1 else max(int(wait_ms), 1) / 1000.0

    def _local_bucket(self, spec: BucketSpec) -> LocalTokenBucket:
        with self._local_lock:
            bucket = self._local.get(spec.name)
            if bucket is None:
                bucket = LocalTokenBucket(
                    spec.rate * self._share, max(1.0, spec.capacity * self._share)
                )
                self._local[spec.name] = bucket
            return bucket

    def _redis_usable(self) -> bool:
        return time.monotonic() >= self._redis_down_until

    def _redis_failed(self) -> None:
        self._redis_down_until = time.monotonic() + _REDIS_COOLDOWN_S
        _log.warning("rate limiter: Redis unreachable, using the local fallback bucket")
        if self._on_redis_error is not None:
            self._on_redis_error()
