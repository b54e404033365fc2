"""Live dataflows on Kafka, as `python -m bytewax.run` imports them.

`atpflow run` sets ATPFLOW_CONFIG (and passes overrides through the
environment, see dataflows.config) and starts `python -m bytewax.run
dataflows.live:availability` (or `:milestones`). The graphs are the same
ones replay runs; only the source and sink differ.
"""

from __future__ import annotations

import os
import signal
import threading
from datetime import datetime
from typing import Any

from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from dataflows.config import Config, load_config
from dataflows.gc_tuning import tune_gc

__all__ = ["availability", "live_config", "milestones"]

CONFIG_ENV = "ATPFLOW_CONFIG"
#: Set by tests: sources stop at the end of each partition instead of tailing.
STOP_AT_EOF_ENV = "ATPFLOW_STOP_AT_EOF"


def live_config() -> Config:
    return load_config(os.environ.get(CONFIG_ENV) or None)


def _stop_at_eof() -> bool:
    return os.environ.get(STOP_AT_EOF_ENV, "").lower() in ("1", "true", "yes")


#: Set by SIGTERM: sources end their input, the dataflow drains, sinks flush, exit 0.
STOPPING = threading.Event()
#: Set once this process resumed a partition from a recovery snapshot (counted once).
_RESUMED = threading.Event()


def _on_sigterm(signum: int, frame: Any) -> None:
    STOPPING.set()


class _StoppablePartition(StatefulSourcePartition[Any, Any]):
    def __init__(self, inner: StatefulSourcePartition[Any, Any]) -> None:
        self.inner = inner

    def next_batch(self) -> list[Any]:
        if STOPPING.is_set():
            raise StopIteration
        return list(self.inner.next_batch())

    def next_awake(self) -> datetime | None:
        return self.inner.next_awake()

    def snapshot(self) -> Any:
        return self.inner.snapshot()

    def close(self) -> None:
        self.inner.close()


class GracefulSource(FixedPartitionedSource[Any, Any]):
    """A source that ends cleanly on SIGTERM (how Kubernetes stops a pod).

    Ending the input lets Bytewax finish the epoch: every sink flushes and the
    recovery store gets a final snapshot, so a restart resumes without a gap.
    Stateful steps keep their live state at end of input (only replay settles).
    """

    def __init__(self, inner: FixedPartitionedSource[Any, Any]) -> None:
        self.inner = inner
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _on_sigterm)

    def list_parts(self) -> list[str]:
        return self.inner.list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _StoppablePartition:
        if resume_state is not None and not _RESUMED.is_set():
            from operators import metrics

            _RESUMED.set()
            metrics.RECOVERY_RESUMES.inc()
        return _StoppablePartition(self.inner.build_part(step_id, for_part, resume_state))


def _side_sinks(config: Config, *, fulfillment: bool) -> list[tuple[str, Any]]:
    """Marketplace pushes and the Redis view, as the config asks for them."""
    out: list[tuple[str, Any]] = []
    if config.marketplaces:
        from sinks.dead_letters import MarketplaceDeadLetters
        from sinks.marketplace.bytewax_io import FulfillmentOutput, MarketplaceOutput
        from sinks.marketplace.config import load_marketplace_config

        market = load_marketplace_config(config.marketplaces)
        letters = MarketplaceDeadLetters(config)
        if fulfillment:
            out.append(("fulfillment", FulfillmentOutput(market, dead_letter=letters)))
        else:
            out.append(("marketplaces", MarketplaceOutput(market, dead_letter=letters)))
    if config.redis.enabled and not fulfillment:
        from sinks.marketplace.bytewax_io import RedisViewOutput

        out.append(("redis_view", RedisViewOutput(config.redis.url, prefix=config.redis.prefix)))
    return out


def _source(config: Config, topics: list[str]) -> GracefulSource:
    from sinks.kafka import KafkaRawSource

    return GracefulSource(KafkaRawSource(config.kafka, topics, stop_at_eof=_stop_at_eof()))


def availability() -> Dataflow:
    from dataflows.availability import build_availability_flow, input_topics
    from sinks.kafka import KafkaOutputSink

    config = live_config()
    flow = build_availability_flow(
        config, _source(config, input_topics(config)), KafkaOutputSink(config.kafka), mode="live",
        record_sinks=_side_sinks(config, fulfillment=False),
    )
    tune_gc()
    return flow


def milestones() -> Dataflow:
    from dataflows.milestones import build_milestones_flow, input_topics
    from sinks.kafka import KafkaOutputSink

    config = live_config()
    flow = build_milestones_flow(
        config, _source(config, input_topics(config)), KafkaOutputSink(config.kafka), mode="live",
        record_sinks=_side_sinks(config, fulfillment=True),
    )
    tune_gc()
    return flow
