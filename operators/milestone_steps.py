"""Bytewax wrappers for the shipment-milestone operators: the only engine-aware code of them.

Each step is a thin `@operator` around a pure unit of `operators.milestones`, in the shape of
Bytewax's own operators: the state is a dataclass, the logic a `StatefulBatchLogic` that reads
the injected clock once per batch, and a builder takes the resume state. Steps with dead letters
return a frozen dataclass of streams (`oks`, `errs`), like Bytewax's `KafkaOpOut`.

Modes: in 'live' the logic asks to be woken at its next deadline (gap, parked item, parked scan,
id retention) and re-checks every deadline when woken, because a wake-up asked for earlier is
never cancelled. In 'replay' nothing is scheduled and `on_eof` settles what is left, in the
contract's order.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, Literal

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream, StatefulBatchLogic
from typing_extensions import override

from operators import metrics
from operators.decode import Decoded
from operators.milestones import (
    DISPATCH_KEY,
    Dispatcher,
    DispatchState,
    Message,
    OrderState,
    OrderTracker,
    Result,
    log_milestone,
)
from operators.records import Output, RawRecord
from operators.reference import Channels, Locations
from operators.steps import SplitOut, decode_step, split_dead, wake_at

__all__ = [
    "Clock",
    "Mode",
    "decode_inputs",
    "dispatch_step",
    "orders_step",
]

#: Returns processing time in epoch seconds; injected so tests can fake time.
Clock = Callable[[], float]
#: 'live': timeouts on processing time. 'replay': no timeouts, settle at end of input.
Mode = Literal["live", "replay"]

_RETAIN = StatefulBatchLogic.RETAIN




def decode_inputs(
    step_id: str, up: Stream[RawRecord], schemas: dict[str, str], counted: frozenset[str]
) -> SplitOut:
    """Avro-decode every record with its topic's schema (see `operators.steps.decode_step`)."""
    return decode_step(step_id, up, schemas, counted)


def _count(res: Result) -> None:
    for source, n in res.duplicates.items():
        metrics.child(metrics.DUPLICATES, source).inc(n)
    for source, n in res.applied.items():
        metrics.child(metrics.RECORDS_APPLIED, source).inc(n)
    if res.gaps:
        metrics.child(metrics.GAP_SKIPS, "fulfillment").inc(res.gaps)


# -- dispatch ----------------------------------------------------------------------------------


class _DispatchLogic(StatefulBatchLogic[Decoded, Any, DispatchState]):
    def __init__(self, dispatcher: Dispatcher, mode: Mode, clock: Clock) -> None:
        self.dispatcher = dispatcher
        self.mode = mode
        self.clock = clock
        self._parked = dispatcher.parked_count

    def _emit(self, res: Result) -> tuple[list[Any], bool]:
        _count(res)
        parked = self.dispatcher.parked_count
        if parked != self._parked:
            metrics.PARKED_RECORDS.inc(parked - self._parked)
            self._parked = parked
        return res.out, _RETAIN

    @override
    def on_batch(self, values: list[Decoded]) -> tuple[Iterable[Any], bool]:
        now = self.clock()
        res = Result()
        for d in values:
            one = self.dispatcher.on_record(d, now)
            res.out += one.out
            res.duplicates.update(one.duplicates)
        return self._emit(res)

    @override
    def on_notify(self) -> tuple[Iterable[Any], bool]:
        return self._emit(self.dispatcher.on_time(self.clock()))

    @override
    def on_eof(self) -> tuple[Iterable[Any], bool]:
        # Live state stays put for the next run to resume from.
        return self._emit(self.dispatcher.settle() if self.mode == "replay" else Result())

    @override
    def notify_at(self) -> datetime | None:
        return wake_at(self.dispatcher.next_deadline()) if self.mode == "live" else None

    @override
    def snapshot(self) -> DispatchState:
        return copy.deepcopy(self.dispatcher.state)


@operator
def dispatch_step(
    step_id: str,
    up: Stream[Decoded],
    *,
    unknown_tracking_timeout: float,
    max_clock_skew: float,
    wait_retention: float,
    mode: Mode,
    clock: Clock,
) -> SplitOut:
    """Item look-ups and scan routing for all orders, on one key (see `operators.milestones`).

    Args:
        step_id: Unique ID.
        up: Decoded item-master records, fulfillment events and carrier scans, in arrival order.
        unknown_tracking_timeout: Seconds a scan waits for a SHIPPED event to name it.
        max_clock_skew: Seconds an event_time may lie ahead of the clock.
        wait_retention: Seconds an order stays registered as waiting for an unknown item.
        mode: 'live' or 'replay'.
        clock: Processing time, epoch seconds.

    Returns:
        Messages keyed by order_ref as `oks`; dead letters (scans) as `errs`.
    """
    keyed = op.key_on("key_all", up, lambda _: DISPATCH_KEY)

    def build(resume: DispatchState | None) -> _DispatchLogic:
        dispatcher = Dispatcher(
            resume or DispatchState(),
            unknown_tracking_timeout=unknown_tracking_timeout,
            max_clock_skew=max_clock_skew,
            wait_retention=wait_retention,
            live=mode == "live",
        )
        return _DispatchLogic(dispatcher, mode, clock)

    routed = op.map("values", op.stateful_batch("dispatch", keyed, build), lambda kv: kv[1])
    return split_dead("split", routed)


# -- orders ------------------------------------------------------------------------------------


class _OrderLogic(StatefulBatchLogic[Message, Any, OrderState]):
    def __init__(self, tracker: OrderTracker, mode: Mode, clock: Clock) -> None:
        self.tracker = tracker
        self.mode = mode
        self.clock = clock
        self._parked = tracker.parked_count
        self._buffered = tracker.sequencer.buffered
        self._gap_open = tracker.state.seq.gap_deadline is not None

    def _emit(self, res: Result) -> tuple[list[Any], bool]:
        _count(res)
        for item in res.out:
            if isinstance(item, Output):
                log_milestone(item)
        parked = self.tracker.parked_count
        if parked != self._parked:
            metrics.PARKED_RECORDS.inc(parked - self._parked)
            self._parked = parked
        buffered = self.tracker.sequencer.buffered
        if buffered != self._buffered:
            metrics.REORDER_BUFFERED.inc(buffered - self._buffered)
            self._buffered = buffered
        gap_open = self.tracker.state.seq.gap_deadline is not None
        if gap_open != self._gap_open:
            metrics.OPEN_GAPS.inc(1 if gap_open else -1)
            self._gap_open = gap_open
        return res.out, _RETAIN

    @override
    def on_batch(self, values: list[Message]) -> tuple[Iterable[Any], bool]:
        now = self.clock()
        res = Result()
        for msg in values:
            one = self.tracker.on_message(msg, now)
            res.out += one.out
            res.duplicates.update(one.duplicates)
            res.applied.update(one.applied)
            res.gaps += one.gaps
        return self._emit(res)

    @override
    def on_notify(self) -> tuple[Iterable[Any], bool]:
        return self._emit(self.tracker.on_time(self.clock()))

    @override
    def on_eof(self) -> tuple[Iterable[Any], bool]:
        return self._emit(self.tracker.settle() if self.mode == "replay" else Result())

    @override
    def notify_at(self) -> datetime | None:
        return wake_at(self.tracker.next_deadline()) if self.mode == "live" else None

    @override
    def snapshot(self) -> OrderState:
        return copy.deepcopy(self.tracker.state)


@operator
def orders_step(
    step_id: str,
    up: KeyedStream[Message],
    *,
    locations: Locations,
    channels: Channels,
    topic: str,
    gap_timeout: float,
    max_buffered: int,
    max_clock_skew: float,
    unknown_item_timeout: float,
    unknown_tracking_timeout: float,
    mode: Mode,
    clock: Clock,
) -> SplitOut:
    """Per order_ref: sequencing, look-ups, parking and the milestone state machines.

    Args:
        step_id: Unique ID.
        up: The dispatcher's messages, keyed by order_ref.
        locations: Known WMS facilities.
        channels: Known channels.
        topic: The milestones output topic.
        gap_timeout: Seconds an open sequence gap waits.
        max_buffered: Reorder buffer limit per order.
        max_clock_skew: Seconds an event_time may lie ahead of the clock.
        unknown_item_timeout: Seconds a stream parked behind an unknown item waits.
        unknown_tracking_timeout: Seconds a scan waits for its SHIPPED event to apply.
        mode: 'live' or 'replay'.
        clock: Processing time, epoch seconds.

    Returns:
        Milestone `Output`s as `oks`; dead letters as `errs`.
    """

    def build(resume: OrderState | None) -> _OrderLogic:
        tracker = OrderTracker(
            resume or OrderState(),
            locations=locations,
            channels=channels,
            topic=topic,
            gap_timeout=gap_timeout,
            max_buffered=max_buffered,
            max_clock_skew=max_clock_skew,
            unknown_item_timeout=unknown_item_timeout,
            unknown_tracking_timeout=unknown_tracking_timeout,
            live=mode == "live",
        )
        return _OrderLogic(tracker, mode, clock)

    values = op.map("values", op.stateful_batch("orders", up, build), lambda kv: kv[1])
    return split_dead("split", values)
