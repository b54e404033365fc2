"""Live dataflows on Kafka, as `python -m bytewax.run` imports them.

`atpflow run` sets ATPFLOW_CONFIG (and passes overrides through the
environment, see dataflows.config) and starts `python -m bytewax.run
dataflows.live:availability` (or `:milestones`). The graphs are the same
ones replay runs; only the source and sink differ.
"""

from __future__ import annotations

import os

from bytewax.dataflow import Dataflow

from dataflows.config import Config, load_config

__all__ = ["availability", "live_config", "milestones"]

CONFIG_ENV = "ATPFLOW_CONFIG"
#: Set by tests: sources stop at the end of each partition instead of tailing.
STOP_AT_EOF_ENV = "ATPFLOW_STOP_AT_EOF"


def live_config() -> Config:
    return load_config(os.environ.get(CONFIG_ENV) or None)


def _stop_at_eof() -> bool:
    return os.environ.get(STOP_AT_EOF_ENV, "").lower() in ("1", "true", "yes")


def availability() -> Dataflow:
    from dataflows.availability import build_availability_flow, input_topics
    from sinks.kafka import KafkaOutputSink, KafkaRawSource

    config = live_config()
    source = KafkaRawSource(config.kafka, input_topics(config), stop_at_eof=_stop_at_eof())
    return build_availability_flow(config, source, KafkaOutputSink(config.kafka), mode="live")


def milestones() -> Dataflow:
    from dataflows.milestones import build_milestones_flow, input_topics
    from sinks.kafka import KafkaOutputSink, KafkaRawSource

    config = live_config()
    source = KafkaRawSource(config.kafka, input_topics(config), stop_at_eof=_stop_at_eof())
    return build_milestones_flow(config, source, KafkaOutputSink(config.kafka), mode="live")
