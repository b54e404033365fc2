"""The shipment-milestones dataflow: WMS fulfillment events and carrier scans to milestones.

Wiring only (the rules live in `operators.milestones`). Live and replay build the same graph;
they differ in the source and sink passed in, in `mode` (replay: timeouts never fire, open gaps,
parked orders and parked scans settle at end of input, `emitted_at` follows event time) and in
the clock.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.outputs import Sink

from dataflows.config import Config
from operators.milestone_steps import Clock, Mode, decode_inputs, dispatch_step, orders_step
from operators.records import DeadLetter
from operators.steps import chunk, dead_letter_records, emit, emit_records

__all__ = ["build_milestones_flow", "input_topics"]


def input_topics(config: Config) -> list[str]:
    """The topics this dataflow reads."""
    t = config.topics
    return [t.fulfillment_events, t.carrier_events, t.items]


def build_milestones_flow(
    config: Config,
    source: Source,
    sink: Sink,
    *,
    mode: Mode = "live",
    clock: Clock | None = None,
    record_sinks: Sequence[tuple[str, Any]] = (),
) -> Dataflow:
    """The milestones graph between `source` and `sink`.

    Args:
        config: Topics, timeouts and reference data.
        source: `RawRecord`s of any topics; those this flow does not read are ignored.
        sink: Takes `Output`s: milestones for `topics.milestones`, dead letters (schema
            DeadLetter) for `topics.dead_letter`.
        mode: 'live' or 'replay'.
        clock: Processing time in epoch seconds (default: the wall clock).

    Returns:
        The dataflow, ready to run.
    """
    clock = clock or time.time
    topics = config.topics
    mine = set(input_topics(config))
    schemas = {t: s for t, s in topics.input_schemas.items() if t in mine}
    dead_topic = topics.dead_letter

    flow = Dataflow("milestones")
    raw = op.filter("own_topics", op.input("input", flow, source), lambda r: r.topic in mine)
    # ref.items is counted by the availability flow, which reads it too.
    counted = frozenset({topics.fulfillment_events, topics.carrier_events})
    decoded = decode_inputs("decode", raw, schemas, counted=counted)
    routed = dispatch_step(
        "dispatch", decoded.oks,
        unknown_tracking_timeout=config.unknown_tracking_timeout,
        max_clock_skew=config.max_clock_skew,
        # An order waits for an item at most gap_timeout + unknown_item_timeout per item it
        # parks on; a day covers any sane configuration.
        wait_retention=max(86400.0, 4 * (config.gap_timeout + config.unknown_item_timeout)),
        mode=mode, clock=clock,
    )
    milestones = orders_step(
        "orders", routed.oks,
        locations=config.locations, channels=config.channels, topic=topics.milestones,
        gap_timeout=config.gap_timeout, max_buffered=config.max_buffered,
        max_clock_skew=config.max_clock_skew,
        unknown_item_timeout=config.unknown_item_timeout,
        unknown_tracking_timeout=config.unknown_tracking_timeout,
        mode=mode, clock=clock,
    )
    # ref.items is the availability flow's to dead-letter: one dead letter per input record.
    undecodable = op.filter("not_items", decoded.errs, lambda dl: dl.topic != topics.items)
    dead: Stream[DeadLetter] = op.merge("dead", undecodable, routed.errs, milestones.errs)
    letters = dead_letter_records("dead_letter_records", chunk("dead_chunks", dead), dead_topic)
    records = chunk("chunks", milestones.oks)
    emit("output", op.merge("all_out", records, letters), sink)
    # Channel fulfillment pushes (live): every milestone record; the sink acts on SHIPPED.
    emit_records("side_outputs", records, record_sinks)
    return flow
