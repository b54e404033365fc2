"""The availability dataflow: raw WMS and ERP movements to channel availability.

Wiring only. Live and replay build the same graph; they differ in the source
and sink they pass in, in `mode` (replay: timeouts never fire, open gaps and
parked streams settle at end of input, versions count from 1) and the clock.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import Sink

from dataflows.config import Config
from operators.decode import Decoded
from operators.records import DeadLetter, Reason, dead_letter
from operators.steps import (
    Clock,
    Mode,
    chunk,
    dead_letter_records,
    emit,
    emit_records,
    order_step,
    project_step,
    route_items_step,
    sort_step,
    split_dead,
)

__all__ = ["RETIRED_STEPS", "build_availability_flow", "input_topics"]

#: Stateful steps of earlier versions (sequence and normalise became `order` on 2026-12-04):
#: this flow cannot resume their state, so `atpflow run` refuses a recovery store holding it.
RETIRED_STEPS = frozenset({"availability.sequence.sequence", "availability.normalise.normalise"})


def input_topics(config: Config) -> list[str]:
    t = config.topics
    return [t.wms_transactions, t.erp_documents, t.items]


def _validate_item(d: Decoded) -> Decoded | DeadLetter:
    if d.invalid:
        return dead_letter(d.raw, Reason.INVALID_RECORD, d.invalid, d.rec.sku or None)
    return d


def build_availability_flow(
    config: Config,
    source: Source,
    sink: Sink,
    *,
    mode: Mode = "live",
    clock: Clock = time.time,
    record_sinks: Sequence[tuple[str, Any]] = (),
) -> Dataflow:
    """The availability graph between `source` (RawRecord) and `sink` (Output chunks).

    `record_sinks` (name, sink) also get every availability record as `(key, record)`:
    the marketplace pushes and the Redis view in live mode.
    """
    topics = config.topics
    mine = set(input_topics(config))
    schemas = {t: s for t, s in topics.input_schemas.items() if t in mine}
    version_clock = None if mode == "replay" else (lambda: int(clock() * 1000))

    flow = Dataflow("availability")
    sorted_ = sort_step("decode", op.input("input", flow, source), schemas, topics.items)
    items = split_dead("validate_items", op.map("check_item", sorted_.items, _validate_item))
    updates = route_items_step("route_items", items.oks)
    movements = order_step(
        "order", sorted_.records, updates, gap_timeout=config.gap_timeout,
        max_buffered=config.max_buffered, max_clock_skew=config.max_clock_skew,
        locations=config.locations, unknown_item_timeout=config.unknown_item_timeout,
        mode=mode, clock=clock,
    )
    projected = project_step(
        "project", movements.oks, channels=config.channels,
        topic_of=topics.availability, version_clock=version_clock,
        # Only the Kafka sink reads the records then: they may arrive as Avro bytes.
        encoded=mode == "live" and not record_sinks,
    )
    dead = op.merge(
        "dead", sorted_.errs, chunk("item_letters", items.errs), movements.errs, projected.errs
    )
    letters = dead_letter_records("dead_letter_records", dead, topics.dead_letter)
    emit("output", op.merge("all_out", projected.oks, letters), sink)
    emit_records("side_outputs", projected.oks, record_sinks)
    return flow
