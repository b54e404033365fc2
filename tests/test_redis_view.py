"""The Redis view writer against a real Redis: version ordering, batching, outages."""

from __future__ import annotations

import json
import random
import threading

import pytest
import redis
from emulators.records import availability_record
from emulators.tcp_proxy import TcpProxy
from redis.backoff import NoBackoff
from redis.retry import Retry

from sinks.redis_view import RedisViewWriter, ViewKeys

#: The shared fixtures (Redis with a per-test prefix, emulators, test secrets).
pytest_plugins = ["emulators.fixtures"]

pytestmark = pytest.mark.redis


def _avail(client: redis.Redis, prefix: str, channel: str, key: str) -> dict[str, str]:
    raw = client.hgetall(ViewKeys(prefix).avail(channel, key))
    return {k.decode(): v.decode() for k, v in raw.items()}


def test_older_version_after_newer_stays_newer(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    writer = RedisViewWriter(redis_client, prefix=redis_prefix)
    writer.add(availability_record("shopify-us", "SKU-1", "ATL1", 7, 12))
    assert writer.flush().written == 1
    # A replay after a crash, in a later flush and in the same one as a newer record.
    writer.add(availability_record("shopify-us", "SKU-1", "ATL1", 3, 11))
    report = writer.flush()
    assert (report.written, report.stale) == (0, 1)
    # Within one flush the writer coalesces per key: an older record does not replace a newer one.
    assert writer.add(availability_record("shopify-us", "SKU-2", "ATL1", 1, 20))
    assert not writer.add(availability_record("shopify-us", "SKU-2", "ATL1", 2, 19))
    assert writer.flush().written == 1
    view = _avail(redis_client, redis_prefix, "shopify-us", "SKU-1|ATL1")
    assert (view["available"], view["version"], view["location"]) == ("7", "12", "ATL1")
    assert view["as_of"] == str(1767225600000 + 12)


def test_versions_beyond_2_53_compare_exactly(redis_client: redis.Redis, redis_prefix: str) -> None:
    writer = RedisViewWriter(redis_client, prefix=redis_prefix)
    big = 2**53 + 10
    writer.add(availability_record("amazon-us", "SKU-9", None, 4, big + 1))
    writer.flush()
    writer.add(availability_record("amazon-us", "SKU-9", None, 5, big))  # differs only past 2^53
    assert writer.flush().stale == 1
    assert _avail(redis_client, redis_prefix, "amazon-us", "SKU-9")["available"] == "4"


def test_racing_writers_keep_the_newest_per_key_and_per_warehouse(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    records = [
        availability_record("amazon-us", f"SKU-{n}", None, v * 10 + n, v)
        for n in range(20)
        for v in range(1, 9)
    ]
    random.Random(4).shuffle(records)  # noqa: S311 - test data

    def write(part: list[dict]) -> None:
        writer = RedisViewWriter(redis.Redis(), prefix=redis_prefix, batch_size=7)
        for start in range(0, len(part), 5):
            for record in part[start : start + 5]:
                writer.add(record)
            writer.flush()

    threads = [threading.Thread(target=write, args=(records[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    keys = ViewKeys(redis_prefix)
    for n in range(20):
        view = _avail(redis_client, redis_prefix, "amazon-us", f"SKU-{n}")
        assert (view["version"], view["available"]) == ("8", str(80 + n))
        atp = redis_client.hgetall(keys.atp("amazon-us", f"SKU-{n}"))
        for wh in ("ATL1", "DAL1", "RNO1"):
            assert atp[f"{wh}:v".encode()] == b"8"
            assert json.loads(atp[wh.encode()])["atp"] == 80 + n + 2
        assert redis_client.smembers(keys.index("amazon-us", f"SKU-{n}")) == {f"SKU-{n}".encode()}
    assert redis_client.sismember(keys.channels(), "amazon-us")


def _write_errors() -> float:
    from prometheus_client import REGISTRY

    import operators.metrics  # noqa: F401 - registers the metrics

    return REGISTRY.get_sample_value("atpflow_redis_write_errors_total") or 0.0


def test_a_redis_that_goes_away_loses_nothing(redis_client: redis.Redis, redis_prefix: str) -> None:
    errors_before = _write_errors()
    proxy = TcpProxy("127.0.0.1", 6379).start()
    client = redis.Redis(
        host="127.0.0.1",
        port=proxy.port,
        socket_timeout=1,
        socket_connect_timeout=0.5,
        retry=Retry(NoBackoff(), 0),
    )
    writer = RedisViewWriter(client, prefix=redis_prefix, batch_size=4)
    try:
        writer.add_many(
            availability_record("shopify-us", f"SKU-{n}", "DAL1", n, 1) for n in range(6)
        )
        assert writer.flush().written == 6
        proxy.stop()
        writer.add_many(
            availability_record("shopify-us", f"SKU-{n}", "DAL1", 100 + n, 2) for n in range(6)
        )
        report = writer.flush()
        assert report.errors > 0 and report.written == 0 and writer.pending_count == 6
        # Newer values arrive while Redis is away: only the newest per key is kept.
        writer.add_many(
            availability_record("shopify-us", f"SKU-{n}", "DAL1", 200 + n, 3) for n in range(3)
        )
        assert writer.flush().errors > 0 and writer.pending_count == 6
        proxy.start()
        report = writer.flush()
        assert (report.written, report.errors, report.pending) == (6, 0, 0)
    finally:
        proxy.stop()
        client.close()
    for n in range(6):
        view = _avail(redis_client, redis_prefix, "shopify-us", f"SKU-{n}|DAL1")
        assert view["available"] == str(200 + n if n < 3 else 100 + n)
    assert writer.error_count >= 2
    assert _write_errors() - errors_before == writer.error_count
