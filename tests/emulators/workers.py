"""Worker processes for the shared-rate-limit tests: each runs its own sink in its own process.

Spawned with ``multiprocessing`` (spawn), so they share nothing with the test process but Redis
and the emulator's HTTP port, exactly like dataflow workers on separate hosts.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["run_sink_worker"]


def run_sink_worker(
    config: dict[str, Any],
    channel: str,
    records: list[dict[str, Any]],
    env: dict[str, str],
    drain_timeout: float,
    result_queue: Any,
) -> None:
    """Add ``records`` to a fresh sink, flush in checkpoint-sized steps, report the outcome."""
    os.environ.update(env)
    import redis

    from sinks.marketplace import MarketplaceSink, load_marketplace_config

    client = redis.Redis.from_url(config["redis_url"])
    sink = MarketplaceSink.from_config(
        load_marketplace_config(config), channel, redis_client=client
    )
    # Records arrive over time, as from a stream: flush after each slice, like checkpoints.
    step = max(1, len(records) // 4)
    for start in range(0, len(records), step):
        sink.add_many(records[start : start + step])
        sink.flush()
    drained = sink.drain(drain_timeout)
    result_queue.put(
        {
            "pid": os.getpid(),
            "drained": drained,
            "pushed": sink.stats.pushed + sink.stats.accepted_pending,
            "dead_letters": sink.stats.dead_letters,
            "retries": sink.stats.retries,
            "backlog": sink.backlog_size,
        }
    )
    sink.close()
    client.close()
