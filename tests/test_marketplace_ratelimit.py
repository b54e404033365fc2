"""The shared Redis token bucket.

Atomic across threads and clients, blocked by Retry-After, capped by learnt rates.
"""

from __future__ import annotations

import threading
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from sinks.marketplace import BucketSpec, DeadlineExceeded, RedisRateLimiter

#: The shared fixtures (Redis with a per-test prefix, emulators, test secrets).
pytest_plugins = ["emulators.fixtures"]

pytestmark = pytest.mark.redis


def _limiter(client: redis.Redis, prefix: str, rate: float, burst: float) -> RedisRateLimiter:
    spec = BucketSpec("test-account", rate, burst)
    return RedisRateLimiter(client, lambda _op: spec, prefix=prefix)


def test_concurrent_takers_never_exceed_the_bucket(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    rate, burst = 40.0, 5.0
    limiters = [_limiter(redis.Redis(), redis_prefix, rate, burst) for _ in range(4)]
    grants: list[float] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + 1.5

    def take(limiter: RedisRateLimiter) -> None:
        while time.monotonic() < stop_at:
            try:
                limiter.acquire("op", 1, deadline=stop_at)
            except DeadlineExceeded:
                return
            with lock:
                grants.append(time.monotonic())

    threads = [threading.Thread(target=take, args=(lim,)) for lim in limiters]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    assert len(grants) <= burst + rate * elapsed + 1
    assert len(grants) >= rate * elapsed * 0.6  # and the bucket is actually used
    # Over any one-second window the grants respect rate + burst.
    grants.sort()
    start = 0
    for end in range(len(grants)):
        while grants[end] - grants[start] > 1.0:
            start += 1
        assert end - start + 1 <= burst + rate * 1.0 + 1


def test_retry_after_blocks_every_worker(redis_client: redis.Redis, redis_prefix: str) -> None:
    first = _limiter(redis_client, redis_prefix, 100, 100)
    second = _limiter(redis.Redis(), redis_prefix, 100, 100)
    first.penalize("op", 0.5)
    with pytest.raises(DeadlineExceeded):
        second.acquire("op", 1, deadline=time.monotonic() + 0.2)
    started = time.monotonic()
    second.acquire("op", 1, deadline=time.monotonic() + 2)
    assert time.monotonic() - started >= 0.2


def test_learnt_rate_caps_and_observed_tokens_lower(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    limiter = _limiter(redis_client, redis_prefix, 100, 10)
    limiter.learn_rate("op", 5)
    key = limiter.key(BucketSpec("test-account", 100, 10))
    assert float(redis_client.hget(key, "rate_cap") or 0) == 5.0
    limiter.observe("op", 0)  # the API says the bucket is empty
    started = time.monotonic()
    limiter.acquire("op", 1, deadline=time.monotonic() + 2)
    # At the learnt 5/s one token takes ~0.2 s, not the configured 100/s's 0.01 s.
    assert time.monotonic() - started >= 0.15


def test_falls_back_to_a_local_bucket_without_redis() -> None:
    dead = redis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    errors: list[int] = []
    spec = BucketSpec("offline", 20, 4)
    limiter = RedisRateLimiter(
        dead, lambda _op: spec, local_fallback_share=0.5, on_redis_error=lambda: errors.append(1)
    )
    started = time.monotonic()
    for _ in range(4):
        limiter.acquire("op", 1, deadline=time.monotonic() + 5)
    # Half the burst is immediate, the rest waits at half the rate (10/s).
    assert time.monotonic() - started >= 0.15
    assert errors
