"""Shipment milestones: WMS fulfillment events and carrier scans to order and shipment milestones.

Pure logic, no engine. Two units, each run by one engine step:

- `Dispatcher`, one instance for the whole flow (keyed by a constant): it sees the item
  master, every fulfillment event and every carrier scan in arrival order. It annotates each
  fulfillment event with the item-master entries of its lines, tells orders waiting for an
  unknown item when the item master names it, learns tracking number -> order from WMS
  SHIPPED events, and routes each scan to its order (or parks it while no SHIPPED event names
  its tracking number). Everything it emits is keyed by order_ref.
- `OrderTracker`, one per order_ref: the sequencer of the order's WMS events (reusing
  `operators.sequencing.Sequencer`), the look-ups and parking, and the order and shipment state
  machines. It emits milestones and dead letters.

Why this keying. A fulfillment event's lines name several items, so no single item-code key can
resolve it (the availability flow's trick); and a scan names only a tracking number, which maps
to an order only once a SHIPPED event said so. Dataflows cannot loop back, so whatever learns
that mapping must sit upstream of the orders and see the SHIPPED events itself. One constant-
keyed step does both jobs cheaply (dictionary look-ups, no per-order state): fulfillment and
carrier volume is low next to inventory movements. Routing everything through that one step
also gives each order its inputs on a single stream, in arrival order, which keeps the
contract's "arrival order" meaning exact and replays repeatable. The per-order state, which
grows with the business, stays spread over workers by order_ref.

A scan therefore may park twice: in the dispatcher while no SHIPPED event names its tracking
number, then in the order while that SHIPPED event waits for its turn (reorder buffer, unknown
item). The `unknown_tracking_timeout` runs from the first park, wherever it happened.

Times: `now` is processing time in epoch seconds, passed in by the engine wrapper. In replay
nothing expires (`live=False`) and `settle()` runs at end of input. `emitted_at` is then the
replay clock: the dispatcher stamps every message with the newest valid event_time it has seen,
and an order uses the stamp of the last message it received. The dispatcher is one key, so the
stamps do not depend on the number of workers, and a replay is repeatable byte for byte.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from operators.decode import Decoded
from operators.models import CarrierTrackingEvent, ItemMaster, WmsFulfillmentEvent
from operators.records import DeadLetter, Output, Reason, dead_letter
from operators.reference import Channels, Locations
from operators.sequencing import MIN_EVENT_TIME_MS, Outcome, Sequencer, SequencerState

__all__ = [
    "DISPATCH_KEY",
    "ENDING_SCANS",
    "MAX_QTY",
    "MILESTONE_SCHEMA",
    "ORDER_STAGES",
    "ROUTE_RETENTION",
    "SCAN_ID_RETENTION",
    "SHIPMENT_STAGES",
    "Dispatcher",
    "DispatchState",
    "FulfillmentIn",
    "ItemInfo",
    "ItemKnown",
    "Line",
    "Message",
    "OrderState",
    "OrderTracker",
    "ParkedScans",
    "Result",
    "ScanHistory",
    "ScanIn",
    "ScanMemory",
    "ShipmentState",
    "check_fulfillment",
    "correlation_id",
    "log_milestone",
    "order_stream_key",
    "screen_scan",
]

log = logging.getLogger("atpflow.milestones")

#: The dispatcher's one key.
DISPATCH_KEY = "milestones"
#: Schema name of the output records (see `schemas.SCHEMA_FILES`).
MILESTONE_SCHEMA = "ShipmentMilestone"
#: Order milestones in progress order; CANCELLED is apart.
ORDER_STAGES = (
    "RELEASED", "PICKED", "PACKED", "PARTIALLY_SHIPPED", "SHIPPED",
    "IN_TRANSIT", "OUT_FOR_DELIVERY", "DELIVERED",
)
#: Shipment progress in order; EXCEPTION and RETURNED_TO_SENDER are apart.
SHIPMENT_STAGES = ("SHIPPED", "IN_TRANSIT", "OUT_FOR_DELIVERY", "DELIVERED")
#: Scan statuses after which a shipment takes nothing more.
ENDING_SCANS = frozenset({"DELIVERED", "RETURNED_TO_SENDER"})
#: Scan ids are kept this long after a tracking number's last scan once it can take no more.
SCAN_ID_RETENTION = 24 * 3600.0
#: The dispatcher forgets an ended shipment's route this long after its last scan. Until then
#: a late scan reaches the order and is counted and dropped; after, it parks and goes to the
#: dead-letter topic as UNKNOWN_TRACKING. Bounds the one-key state by a week of shipments.
ROUTE_RETENTION = 7 * 24 * 3600.0
#: Any line over 10^9 base units is INVALID_QUANTITY.
MAX_QTY = 1_000_000_000

_ORDER_SHIPPED = ORDER_STAGES.index("SHIPPED")
_ORDER_PARTIAL = ORDER_STAGES.index("PARTIALLY_SHIPPED")
_WMS_STAGE = {"RELEASED": 0, "PICKED": 1, "PACKED": 2}
_FULFILLMENT = WmsFulfillmentEvent.source
_CARRIER = CarrierTrackingEvent.source


def order_stream_key(rec: Any) -> str:
    """The sequencing stream of a fulfillment event: `fulfillment|<order_ref>`.

    A SEQUENCE_GAP dead letter takes the part after the source as its key, the order_ref,
    which is the input topic's key too.
    """
    return f"fulfillment|{rec.order_ref}"


def correlation_id(
    level: str, order_ref: str, shipment_id: str | None, milestone: str, n: int
) -> str:
    """A milestone's id, the same on every replay and every re-emission after a crash.

    Args:
        level: ORDER or SHIPMENT.
        order_ref: The order.
        shipment_id: The shipment, or None at order level.
        milestone: The milestone name.
        n: Occurrence number: 1, except for a shipment's repeated EXCEPTION.

    Returns:
        32 hex digits.
    """
    text = f"{level}|{order_ref}|{shipment_id or ''}|{milestone}|{n}"
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def log_milestone(out: Output) -> None:
    """Write the structured log line of one emitted milestone (with its correlation id)."""
    v = out.value
    fields = {
        "event": "milestone",
        "correlation_id": v["correlation_id"],
        "level": v["level"],
        "milestone": v["milestone"],
        "order_ref": v["order_ref"],
        "shipment_id": v["shipment_id"],
        "key": out.key,
        "source_event_ids": v["source_event_ids"],
    }
    log.info(json.dumps(fields, separators=(",", ":")))


def check_fulfillment(d: Decoded) -> Decoded:
    """Add the schema's documented cross-field rules to the model's verdict.

    The schema documents that SHIPPED carries shipment_id, carrier and tracking_number: without
    them a shipment can be neither tracked nor pushed to a channel, so such an event is an
    INVALID_RECORD. Checked on arrival, like the model's own rules, so that the sequencer's
    order of checks (identity first) holds.

    Args:
        d: A decoded fulfillment event.

    Returns:
        `d`, or a copy with `invalid` set.
    """
    rec = d.rec
    if d.invalid or rec.status != "SHIPPED":
        return d
    missing = [f for f in ("shipment_id", "carrier", "tracking_number") if not getattr(rec, f)]
    if not missing:
        return d
    return replace(d, invalid="; ".join(f"{f}: must be set on SHIPPED" for f in missing))


def _event_time_ok(t: int, now: float, max_clock_skew: float) -> bool:
    return MIN_EVENT_TIME_MS <= t <= (now + max_clock_skew) * 1000


# -- values ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ItemInfo:
    """What an order needs of an item-master entry."""

    sku: str
    base_uom: str
    factors: dict[str, int]
    active: bool

    @classmethod
    def of(cls, im: ItemMaster) -> ItemInfo:
        return cls(im.sku, im.base_uom, dict(im.uom_factors), im.active)


@dataclass(frozen=True, slots=True)
class Line:
    """A fulfillment line in base units."""

    item: str
    sku: str
    qty: int
    uom: str

    def as_avro(self) -> dict[str, Any]:
        return {"item": self.item, "sku": self.sku, "qty": self.qty, "uom": self.uom}


@dataclass(slots=True)
class Result:
    """What one call produced, in order, and what it counted.

    `out` holds, in emission order: `Output` milestones and `DeadLetter`s from an order, or
    `(order_ref, Message)` pairs and `DeadLetter`s from the dispatcher.
    """

    out: list[Any] = field(default_factory=list)
    #: exact redeliveries dropped, by source (fulfillment, carrier)
    duplicates: Counter[str] = field(default_factory=Counter)
    #: records applied to the state machines, by source, including those a rule then drops
    #: (a scan after DELIVERED, anything after CANCELLED)
    applied: Counter[str] = field(default_factory=Counter)
    #: of `applied`, how many a rule dropped, by source
    dropped: Counter[str] = field(default_factory=Counter)
    #: sequence gaps skipped
    gaps: int = 0


# -- messages from the dispatcher to an order ---------------------------------------------------


@dataclass(slots=True)
class FulfillmentIn:
    """A fulfillment event, with the item-master entries of its lines known on arrival."""

    order_ref: str
    d: Decoded
    items: dict[str, ItemInfo]
    #: newest valid event_time the dispatcher has seen (the replay clock)
    seen: int


@dataclass(slots=True)
class ItemKnown:
    """The item master now names an item this order's events named while it was unknown."""

    order_ref: str
    code: str
    info: ItemInfo
    seen: int


@dataclass(slots=True)
class ScanMemory:
    """Scan ids of one tracking number: id -> payload digest, and replayed scans applied."""

    ids: dict[str, bytes] = field(default_factory=dict)
    replayed: set[tuple[str, bytes]] = field(default_factory=set)
    #: processing time of the last scan
    last_at: float = 0.0


@dataclass(slots=True)
class ScanHistory:
    """The ids the dispatcher remembered for a tracking number before it had an order."""

    order_ref: str
    tracking: str
    memory: ScanMemory
    seen: int


@dataclass(slots=True)
class ScanIn:
    """A carrier scan routed to its order."""

    order_ref: str
    d: Decoded
    seen: int
    #: processing time the dispatcher parked it (its tracking timeout runs from there)
    parked_since: float | None = None
    #: already checked (identity, validity) by the dispatcher
    screened: bool = False


Message = FulfillmentIn | ItemKnown | ScanHistory | ScanIn


def screen_scan(
    mem: ScanMemory, d: Decoded, now: float, max_clock_skew: float, res: Result
) -> bool:
    """A scan's arrival checks, in the contract's order; True if it goes on.

    Identity comes first (an exact redelivery is a counted duplicate even of a scan that was
    dead-lettered), then INVALID_RECORD, CONFLICTING_DUPLICATE (the first payload wins) and
    INVALID_EVENT_TIME. A scan sent back by `atpflow dead-letters replay` skips the identity
    check but applies at most once.

    Args:
        mem: The tracking number's scan ids (updated).
        d: The scan.
        now: Processing time, epoch seconds.
        max_clock_skew: Seconds an event_time may lie ahead of `now`.
        res: Receives the count or dead letter.

    Returns:
        Whether the scan passed.
    """
    rec = d.rec
    rid = rec.record_id
    conflict = False
    if d.raw.replayed:
        if (rid, d.digest) in mem.replayed:
            res.duplicates[_CARRIER] += 1
            return False
        mem.replayed.add((rid, d.digest))
    else:
        first = mem.ids.get(rid)
        if first == d.digest:
            res.duplicates[_CARRIER] += 1
            return False
        conflict = first is not None
        if not conflict:
            mem.ids[rid] = d.digest
    mem.last_at = now
    if d.invalid:
        res.out.append(dead_letter(d.raw, Reason.INVALID_RECORD, d.invalid, rid or None))
        return False
    if conflict:
        detail = (
            f"scan id {rid!r} already seen for tracking number {rec.tracking_number!r} "
            "with a different payload"
        )
        res.out.append(dead_letter(d.raw, Reason.CONFLICTING_DUPLICATE, detail, rid))
        return False
    if not _event_time_ok(rec.event_time, now, max_clock_skew):
        detail = (
            f"event_time {rec.event_time} is before 2000-01-01 or beyond the clock plus "
            "max_clock_skew"
        )
        res.out.append(dead_letter(d.raw, Reason.INVALID_EVENT_TIME, detail, rid))
        return False
    return True


@dataclass(slots=True)
class ParkedScans:
    """Scans of one tracking number waiting for its SHIPPED event, with arrival numbers."""

    since: float
    scans: list[tuple[int, Decoded]] = field(default_factory=list)


def _unknown_tracking(d: Decoded, why: str) -> DeadLetter:
    t = d.rec.tracking_number
    detail = f"tracking number {t!r} is on no applied WMS SHIPPED event {why}"
    return dead_letter(d.raw, Reason.UNKNOWN_TRACKING, detail, d.rec.record_id)


# -- the dispatcher ------------------------------------------------------------------------------


@dataclass(slots=True)
class Route:
    """Where a tracking number's scans go."""

    order_ref: str
    #: live: processing time after which the route is forgotten (ROUTE_RETENTION after the
    #: last scan, once a scan ended the shipment)
    expires_at: float | None = None


@dataclass(slots=True)
class DispatchState:
    """The dispatcher's state: reference data and routing, no per-order progress."""

    #: WMS item code -> its item-master entry (newest record per sku wins)
    items: dict[str, ItemInfo] = field(default_factory=dict)
    #: sku -> the WMS item code it currently uses
    codes: dict[str, str] = field(default_factory=dict)
    #: unknown WMS item code -> order_ref -> processing time the order first named it
    waiting: dict[str, dict[str, float]] = field(default_factory=dict)
    routes: dict[str, Route] = field(default_factory=dict)
    #: tracking numbers no SHIPPED event has named yet
    parked: dict[str, ParkedScans] = field(default_factory=dict)
    scan_ids: dict[str, ScanMemory] = field(default_factory=dict)
    arrivals: int = 0
    #: newest valid event_time seen (the replay clock), epoch ms
    seen: int = 0
    #: live deadlines, a heap of (time, kind, key); each entry is re-checked when it comes due
    timers: list[tuple[float, str, str]] = field(default_factory=list)


class Dispatcher:
    """Item look-ups and scan routing for every order. See the module docstring."""

    def __init__(
        self,
        state: DispatchState,
        *,
        unknown_tracking_timeout: float,
        max_clock_skew: float,
        wait_retention: float,
        live: bool,
    ) -> None:
        """Wrap `state`.

        Args:
            state: The state (new or restored).
            unknown_tracking_timeout: Seconds a parked scan waits for its SHIPPED event.
            max_clock_skew: Seconds an event_time may lie ahead of the clock.
            wait_retention: Seconds an order stays registered as waiting for an unknown item;
                longer than any order can stay parked on it.
            live: Whether deadlines run (False in replay).
        """
        self.state = state
        self.tracking_timeout = unknown_tracking_timeout
        self.max_clock_skew = max_clock_skew
        self.wait_retention = wait_retention
        self.live = live

    def on_record(self, d: Decoded, now: float) -> Result:
        """One input record of any of the three topics."""
        res = Result()
        if isinstance(d.rec, ItemMaster):
            self._on_item(d, res)
        elif isinstance(d.rec, WmsFulfillmentEvent):
            self._on_fulfillment(check_fulfillment(d), now, res)
        elif isinstance(d.rec, CarrierTrackingEvent):
            self._on_scan(d, now, res)
        else:
            msg = f"the milestones dispatcher cannot take a {type(d.rec).__name__}"
            raise TypeError(msg)
        return res

    def _see(self, d: Decoded, now: float) -> None:
        # The replay clock: an invalid or far-future time must not drag it forward.
        t = d.rec.event_time
        if d.invalid is None and _event_time_ok(t, now, self.max_clock_skew):
            self.state.seen = max(self.state.seen, t)

    def _timer(self, at: float, kind: str, key: str) -> None:
        if self.live:
            heapq.heappush(self.state.timers, (at, kind, key))

    # -- inputs --------------------------------------------------------------------------------
    def _on_item(self, d: Decoded, res: Result) -> None:
        # An invalid item-master record is the availability flow's to dead-letter (both flows
        # read ref.items; one dead letter per record).
        if d.invalid:
            return
        st = self.state
        im: ItemMaster = d.rec
        info = ItemInfo.of(im)
        old = st.codes.get(im.sku)
        if old is not None and old != im.wms_item and st.items.get(old, info).sku == im.sku:
            del st.items[old]  # the sku moved to a new code: the old one is unknown again
        st.items[im.wms_item] = info
        st.codes[im.sku] = im.wms_item
        for order_ref in st.waiting.pop(im.wms_item, {}):
            res.out.append((order_ref, ItemKnown(order_ref, im.wms_item, info, st.seen)))

    def _on_fulfillment(self, d: Decoded, now: float, res: Result) -> None:
        st = self.state
        rec: WmsFulfillmentEvent = d.rec
        self._see(d, now)
        known: dict[str, ItemInfo] = {}
        if d.invalid is None:  # an invalid record's lines may not even be parsed
            for line in rec.lines:
                info = st.items.get(line.item)
                if info is not None:
                    known[line.item] = info
                    continue
                waiting = st.waiting.setdefault(line.item, {})
                if not waiting:
                    self._timer(now + self.wait_retention, "wait", line.item)
                waiting.setdefault(rec.order_ref, now)
        res.out.append((rec.order_ref, FulfillmentIn(rec.order_ref, d, known, st.seen)))
        if d.invalid is None and rec.status == "SHIPPED" and rec.tracking_number:
            self._route(rec.tracking_number, rec.order_ref, res)

    def _route(self, tracking: str, order_ref: str, res: Result) -> None:
        """A SHIPPED event names `tracking`: its scans go to `order_ref` from now on.

        Tracking numbers are unique per carrier: the first order to name one keeps it, until
        the route expires (`ROUTE_RETENTION` after the shipment ended), so a number a carrier
        recycles later reaches its new order.
        """
        st = self.state
        if tracking in st.routes:
            return
        st.routes[tracking] = Route(order_ref)
        history = st.scan_ids.pop(tracking, None)
        if history is not None:
            res.out.append((order_ref, ScanHistory(order_ref, tracking, history, st.seen)))
        parked = st.parked.pop(tracking, None)
        if parked is not None:
            for _, d in parked.scans:
                scan = ScanIn(order_ref, d, st.seen, parked.since, screened=True)
                res.out.append((order_ref, scan))

    def _on_scan(self, d: Decoded, now: float, res: Result) -> None:
        st = self.state
        rec: CarrierTrackingEvent = d.rec
        t = rec.tracking_number
        self._see(d, now)
        route = st.routes.get(t)
        if route is not None:
            res.out.append((route.order_ref, ScanIn(route.order_ref, d, st.seen)))
            if self.live and (route.expires_at is not None or rec.status in ENDING_SCANS):
                if route.expires_at is None:
                    self._timer(now + ROUTE_RETENTION, "route", t)
                route.expires_at = now + ROUTE_RETENTION
            return
        mem = st.scan_ids.get(t)
        if mem is None:
            mem = st.scan_ids[t] = ScanMemory()
            self._timer(now + SCAN_ID_RETENTION, "ids", t)
        if not screen_scan(mem, d, now, self.max_clock_skew, res):
            return
        parked = st.parked.get(t)
        if parked is None:
            parked = st.parked[t] = ParkedScans(now)
            self._timer(now + self.tracking_timeout, "park", t)
        st.arrivals += 1
        parked.scans.append((st.arrivals, d))

    # -- time ----------------------------------------------------------------------------------
    def on_time(self, now: float) -> Result:
        """Run every deadline due at `now` (the engine may wake us early or late)."""
        res = Result()
        st = self.state
        while self.live and st.timers and st.timers[0][0] <= now:
            _, kind, key = heapq.heappop(st.timers)
            getattr(self, f"_due_{kind}")(key, now, res)
        return res

    def _due_park(self, t: str, now: float, res: Result) -> None:
        parked = self.state.parked.get(t)
        if parked is None:
            return  # routed meanwhile
        if now < parked.since + self.tracking_timeout:
            self._timer(parked.since + self.tracking_timeout, "park", t)
            return
        del self.state.parked[t]
        why = f"within {self.tracking_timeout:g}s"
        res.out += [_unknown_tracking(d, why) for _, d in parked.scans]

    def _due_ids(self, t: str, now: float, res: Result) -> None:
        st = self.state
        mem = st.scan_ids.get(t)
        if mem is None:
            return
        due = mem.last_at + SCAN_ID_RETENTION
        if t in st.parked:
            due = max(due, st.parked[t].since + self.tracking_timeout)
        if now < due:
            self._timer(due, "ids", t)
            return
        del st.scan_ids[t]

    def _due_route(self, t: str, now: float, res: Result) -> None:
        route = self.state.routes.get(t)
        if route is None or route.expires_at is None:
            return
        if now < route.expires_at:
            self._timer(route.expires_at, "route", t)
            return
        del self.state.routes[t]

    def _due_wait(self, code: str, now: float, res: Result) -> None:
        waiting = self.state.waiting.get(code)
        if not waiting:
            return
        for order_ref, since in list(waiting.items()):
            if now >= since + self.wait_retention:
                del waiting[order_ref]
        if waiting:
            self._timer(min(waiting.values()) + self.wait_retention, "wait", code)
        else:
            del self.state.waiting[code]

    def settle(self) -> Result:
        """End of replay input: every scan still parked is UNKNOWN_TRACKING, in arrival order."""
        res = Result()
        scans = sorted(s for p in self.state.parked.values() for s in p.scans)
        self.state.parked.clear()
        res.out += [_unknown_tracking(d, "by the end of input") for _, d in scans]
        return res

    def next_deadline(self) -> float | None:
        timers = self.state.timers
        return timers[0][0] if timers else None

    @property
    def parked_count(self) -> int:
        return sum(len(p.scans) for p in self.state.parked.values())


# -- one order -----------------------------------------------------------------------------------


@dataclass(slots=True)
class ShipmentState:
    """One shipment: where the carrier has it."""

    shipment_id: str
    carrier: str
    tracking: str
    lines: list[Line]
    #: index into SHIPMENT_STAGES of the furthest stage emitted
    stage: int = 0
    #: status of the last scan that emitted a milestone (SHIPPED until one does)
    status: str = "SHIPPED"
    ended: bool = False
    exceptions: int = 0


@dataclass(frozen=True, slots=True)
class _Park:
    """Verdict: the record names an item the item master does not know (yet)."""

    code: str


@dataclass(slots=True)
class OrderState:
    """Everything one order keeps (snapshotted per order_ref)."""

    order_ref: str = ""
    seq: SequencerState = field(default_factory=SequencerState)
    #: WMS item code -> entry, from the dispatcher's annotations and notices (newest wins)
    items: dict[str, ItemInfo] = field(default_factory=dict)
    #: the stream parked behind an unknown item, in sequence order
    parked: list[Decoded] = field(default_factory=list)
    parked_since: float | None = None
    parked_on: str = ""
    channel: str | None = None
    channel_order_id: str | None = None
    #: index into ORDER_STAGES of the furthest stage emitted (-1: none)
    stage: int = -1
    cancelled: bool = False
    #: a shipment went back to its sender: the carrier-driven order stages stop here
    held: bool = False
    #: base units per sku, released / shipped
    released: dict[str, int] = field(default_factory=dict)
    shipped: dict[str, Line] = field(default_factory=dict)
    shipments: dict[str, ShipmentState] = field(default_factory=dict)
    #: tracking number -> shipment_id
    by_tracking: dict[str, str] = field(default_factory=dict)
    #: scans routed here before their SHIPPED event applied
    parked_scans: dict[str, ParkedScans] = field(default_factory=dict)
    scan_ids: dict[str, ScanMemory] = field(default_factory=dict)
    #: event ids of replayed dead letters already applied (each applies at most once)
    replayed: set[str] = field(default_factory=set)
    arrivals: int = 0
    #: the replay clock, epoch ms
    seen: int = 0


class OrderTracker:
    """Sequencing, look-ups, parking and the state machines of one order."""

    def __init__(
        self,
        state: OrderState,
        *,
        locations: Locations,
        channels: Channels,
        topic: str,
        gap_timeout: float,
        max_buffered: int,
        max_clock_skew: float,
        unknown_item_timeout: float,
        unknown_tracking_timeout: float,
        live: bool,
    ) -> None:
        """Wrap `state`.

        Args:
            state: The order's state (new or restored).
            locations: Known WMS facilities.
            channels: Known channels.
            topic: The milestones output topic.
            gap_timeout: Seconds an open sequence gap waits (live).
            max_buffered: Reorder buffer limit per order.
            max_clock_skew: Seconds an event_time may lie ahead of the clock.
            unknown_item_timeout: Seconds a stream parked behind an unknown item waits (live).
            unknown_tracking_timeout: Seconds a scan waits for its SHIPPED event (live).
            live: Whether deadlines run and `emitted_at` is the wall clock.
        """
        self.state = state
        self.locations = locations
        self.channels = channels
        self.topic = topic
        self.max_clock_skew = max_clock_skew
        self.item_timeout = unknown_item_timeout
        self.tracking_timeout = unknown_tracking_timeout
        self.live = live
        self.sequencer = Sequencer(
            state.seq, gap_timeout=gap_timeout, max_buffered=max_buffered,
            max_clock_skew=max_clock_skew, stream_key=order_stream_key,
        )

    # -- inputs --------------------------------------------------------------------------------
    def on_message(self, msg: Message, now: float) -> Result:
        """One message from the dispatcher."""
        st = self.state
        res = Result()
        st.order_ref = st.order_ref or msg.order_ref
        st.seen = max(st.seen, msg.seen)
        if isinstance(msg, FulfillmentIn):
            st.items.update(msg.items)
            out = Outcome()
            self.sequencer.on_record(msg.d, now, out)
            self._resume(now, res)  # new item knowledge first: parked records are older
            self._take(out, now, res)
        elif isinstance(msg, ItemKnown):
            st.items[msg.code] = msg.info
            self._resume(now, res)
        elif isinstance(msg, ScanHistory):
            mem = st.scan_ids.setdefault(msg.tracking, ScanMemory())
            mem.ids = {**msg.memory.ids, **mem.ids}
            mem.replayed |= msg.memory.replayed
            mem.last_at = max(mem.last_at, msg.memory.last_at)
        else:
            self._on_scan(msg, now, res)
        return res

    def _take(self, out: Outcome, now: float, res: Result) -> None:
        """Apply what the sequencer released, in order, behind any parked records."""
        res.duplicates[_FULFILLMENT] += out.duplicates
        res.gaps += out.gaps
        res.out += out.dead
        for d in out.ordered:
            if self.state.parked:
                self.state.parked.append(d)
            else:
                self._apply_or_park(d, now, res)

    def _resume(self, now: float, res: Result) -> None:
        """Retry the parked stream; it stays parked from the first record still unresolved."""
        st = self.state
        if not st.parked:
            return
        queue, since = st.parked, st.parked_since
        st.parked, st.parked_since = [], None
        for i, d in enumerate(queue):
            if st.parked:
                st.parked.append(d)
            elif not self._apply_or_park(d, now, res) and i == 0:
                st.parked_since = since  # still waiting on the same record: same deadline

    def _apply_or_park(self, d: Decoded, now: float, res: Result) -> bool:
        """Check and apply one ordered event; False if it parked the stream."""
        st = self.state
        rec = d.rec
        if d.raw.replayed and rec.event_id in st.replayed:
            res.duplicates[_FULFILLMENT] += 1
            return True
        if st.cancelled:
            res.applied[_FULFILLMENT] += 1
            res.dropped[_FULFILLMENT] += 1
            return True
        verdict = self._check(d)
        if isinstance(verdict, _Park):
            st.parked, st.parked_since, st.parked_on = [d], now, verdict.code
            return False
        if d.raw.replayed:
            st.replayed.add(rec.event_id)
        if isinstance(verdict, DeadLetter):
            res.out.append(verdict)
            return True
        res.applied[_FULFILLMENT] += 1
        self._apply(d, verdict, now, res)
        return True

    def _check(self, d: Decoded) -> list[Line] | DeadLetter | _Park:
        """The apply-time checks, in the contract's order of reasons."""
        st = self.state
        rec: WmsFulfillmentEvent = d.rec
        rid = rec.event_id

        def letter(reason: str, detail: str) -> DeadLetter:
            return dead_letter(d.raw, reason, detail, rid)

        if st.channel is not None and (rec.channel, rec.channel_order_id) != (
            st.channel, st.channel_order_id
        ):
            return letter(Reason.INVALID_RECORD, (
                f"channel/channel_order_id {rec.channel}/{rec.channel_order_id} disagree with "
                f"the order's first event ({st.channel}/{st.channel_order_id})"
            ))
        if rec.status == "SHIPPED":
            if rec.shipment_id in st.shipments:
                detail = f"shipment {rec.shipment_id!r} already shipped"
                return letter(Reason.INVALID_RECORD, detail)
            if rec.tracking_number in st.by_tracking:
                other = st.by_tracking[rec.tracking_number]
                return letter(Reason.INVALID_RECORD, (
                    f"tracking_number {rec.tracking_number!r} already names shipment {other!r}"
                ))
        if rec.facility not in self.locations.by_facility:
            return letter(Reason.UNKNOWN_LOCATION, f"facility {rec.facility!r} is not in locations")
        if rec.channel not in self.channels.by_id:
            return letter(Reason.UNKNOWN_CHANNEL, f"channel {rec.channel!r} is not in channels")
        for line in rec.lines:
            if line.item not in st.items:
                return _Park(line.item)
        infos = [st.items[line.item] for line in rec.lines]
        for line, info in zip(rec.lines, infos, strict=True):
            if not info.active:
                return letter(Reason.UNKNOWN_ITEM, f"item {line.item!r}: sku {info.sku} is retired")
        for line, info in zip(rec.lines, infos, strict=True):
            if line.uom not in info.factors:
                units = ", ".join(sorted(info.factors))
                return letter(Reason.UNKNOWN_UOM, (
                    f"unit {line.uom!r} of item {line.item!r} is not in uom_factors of sku "
                    f"{info.sku} ({units})"
                ))
        lines = []
        for line, info in zip(rec.lines, infos, strict=True):
            qty = line.qty * info.factors[line.uom]
            if line.qty < 0 or qty > MAX_QTY:
                return letter(Reason.INVALID_QUANTITY, (
                    f"line {line.item!r}: {line.qty} {line.uom} = {qty} {info.base_uom} is "
                    f"negative or over {MAX_QTY}"
                ))
            lines.append(Line(line.item, info.sku, qty, info.base_uom))
        return lines

    # -- the order state machine -----------------------------------------------------------
    def _apply(self, d: Decoded, lines: list[Line], now: float, res: Result) -> None:
        st = self.state
        rec: WmsFulfillmentEvent = d.rec
        if st.channel is None:
            st.channel, st.channel_order_id = rec.channel, rec.channel_order_id
        status = rec.status
        if status == "RELEASED":
            for line in lines:
                st.released[line.sku] = st.released.get(line.sku, 0) + line.qty
        if status in _WMS_STAGE:
            self._advance(_WMS_STAGE[status], d, lines, None, now, res)
        elif status == "SHIPPED":
            self._ship(d, lines, now, res)
        elif status == "CANCELLED":
            st.cancelled = True
            self._emit(res, "ORDER", "CANCELLED", d, now, lines=lines)
            # Scans that came for a shipment of this order will never join now.
            dropped = sum(len(p.scans) for p in st.parked_scans.values())
            res.applied[_CARRIER] += dropped
            res.dropped[_CARRIER] += dropped
            st.parked_scans.clear()

    def _ship(self, d: Decoded, lines: list[Line], now: float, res: Result) -> None:
        st = self.state
        rec: WmsFulfillmentEvent = d.rec
        assert rec.shipment_id and rec.carrier and rec.tracking_number  # check_fulfillment
        sh = ShipmentState(rec.shipment_id, rec.carrier, rec.tracking_number, lines)
        st.shipments[sh.shipment_id] = sh
        st.by_tracking[sh.tracking] = sh.shipment_id
        for line in lines:
            total = st.shipped.get(line.sku)
            qty = line.qty + (total.qty if total else 0)
            st.shipped[line.sku] = Line(total.item if total else line.item, line.sku, qty, line.uom)
        self._emit(res, "SHIPMENT", "SHIPPED", d, now, shipment=sh, lines=lines)
        # Over-shipment counts as shipped; an item never released does not hold the order.
        complete = all(
            (s.qty if (s := st.shipped.get(sku)) else 0) >= qty for sku, qty in st.released.items()
        )
        stage = _ORDER_SHIPPED if complete else _ORDER_PARTIAL
        self._advance(stage, d, list(st.shipped.values()), sh, now, res)
        parked = st.parked_scans.pop(sh.tracking, None)
        if parked is not None:
            for _, scan in parked.scans:
                self._apply_scan(sh, scan, now, res)

    def _advance(
        self, stage: int, cause: Decoded, lines: list[Line], sh: ShipmentState | None,
        now: float, res: Result,
    ) -> None:
        """Emit order stage `stage` if it is ahead; a stage passed over is never emitted."""
        st = self.state
        if stage <= st.stage:
            return
        st.stage = stage
        self._emit(res, "ORDER", ORDER_STAGES[stage], cause, now, shipment=sh, lines=lines)

    def _carrier_stage(self, cause: Decoded, sh: ShipmentState, now: float, res: Result) -> None:
        """The order's carrier-driven stage: the least advanced of its shipped shipments."""
        st = self.state
        if st.stage < _ORDER_SHIPPED or st.held:
            return
        least = min(s.stage for s in st.shipments.values())
        self._advance(_ORDER_SHIPPED + least, cause, list(st.shipped.values()), sh, now, res)

    # -- scans ---------------------------------------------------------------------------------
    def _on_scan(self, msg: ScanIn, now: float, res: Result) -> None:
        st = self.state
        d = msg.d
        t = d.rec.tracking_number
        mem = st.scan_ids.setdefault(t, ScanMemory())
        if msg.screened:
            mem.last_at = now
        elif not screen_scan(mem, d, now, self.max_clock_skew, res):
            return
        sid = st.by_tracking.get(t)
        if st.cancelled:
            res.applied[_CARRIER] += 1
            res.dropped[_CARRIER] += 1
        elif sid is not None:
            self._apply_scan(st.shipments[sid], d, now, res)
        else:
            parked = st.parked_scans.get(t)
            if parked is None:
                since = now if msg.parked_since is None else msg.parked_since
                parked = st.parked_scans[t] = ParkedScans(since)
            st.arrivals += 1
            parked.scans.append((st.arrivals, d))

    def _apply_scan(self, sh: ShipmentState, d: Decoded, now: float, res: Result) -> None:
        """The shipment state machine, then the order's carrier-driven stage."""
        res.applied[_CARRIER] += 1
        status = d.rec.status
        if sh.ended:
            res.dropped[_CARRIER] += 1
            return
        if status == "LABEL_CREATED":
            return
        if status == "EXCEPTION":
            if sh.status != "EXCEPTION":
                sh.status = "EXCEPTION"
                sh.exceptions += 1
                self._emit(res, "SHIPMENT", "EXCEPTION", d, now, shipment=sh, lines=sh.lines,
                           n=sh.exceptions)
            return
        if status == "RETURNED_TO_SENDER":
            sh.status, sh.ended = status, True
            self.state.held = True
            self._emit(res, "SHIPMENT", status, d, now, shipment=sh, lines=sh.lines)
            return
        stage = SHIPMENT_STAGES.index(status)
        if stage <= sh.stage:
            return  # backwards, or passed over: never emitted
        sh.stage, sh.status, sh.ended = stage, status, status == "DELIVERED"
        self._emit(res, "SHIPMENT", status, d, now, shipment=sh, lines=sh.lines)
        self._carrier_stage(d, sh, now, res)

    # -- output --------------------------------------------------------------------------------
    def _emit(
        self, res: Result, level: str, milestone: str, cause: Decoded, now: float, *,
        shipment: ShipmentState | None = None, lines: list[Line], n: int = 1,
    ) -> None:
        st = self.state
        rec = cause.rec
        shipment_id = shipment.shipment_id if level == "SHIPMENT" and shipment else None
        value = {
            "level": level,
            "channel": st.channel,
            "channel_order_id": st.channel_order_id,
            "order_ref": st.order_ref,
            "milestone": milestone,
            "shipment_id": shipment_id,
            "carrier": shipment.carrier if shipment else None,
            "tracking_number": shipment.tracking if shipment else None,
            "lines": [line.as_avro() for line in lines],
            "occurred_at": rec.event_time,
            "emitted_at": int(now * 1000) if self.live else st.seen,
            "location": rec.location if isinstance(rec, CarrierTrackingEvent) else None,
            "source_event_ids": [rec.record_id],
            "correlation_id": correlation_id(level, st.order_ref, shipment_id, milestone, n),
        }
        key = f"{st.channel}|{st.channel_order_id}"
        res.out.append(Output(
            self.topic, key, MILESTONE_SCHEMA, value, cause.raw.timestamp, rec.event_time,
            rec.source,
        ))

    # -- time ----------------------------------------------------------------------------------
    def on_time(self, now: float) -> Result:
        """Run every deadline due at `now` (the engine may wake us early); none in replay."""
        st = self.state
        res = Result()
        if not self.live:
            return res
        out = Outcome()
        self.sequencer.on_time(now, out)
        self._take(out, now, res)
        if st.parked_since is not None and now >= st.parked_since + self.item_timeout:
            self._expire_parked(f"after {self.item_timeout:g}s", res)
        for t, parked in list(st.parked_scans.items()):
            if now >= parked.since + self.tracking_timeout:
                del st.parked_scans[t]
                why = f"within {self.tracking_timeout:g}s"
                res.out += [_unknown_tracking(d, why) for _, d in parked.scans]
        for t in [t for t in st.scan_ids if (due := self._ids_due(t)) is not None and now >= due]:
            del st.scan_ids[t]
        return res

    def _expire_parked(self, why: str, res: Result) -> None:
        """Dead-letter the whole parked stream as UNKNOWN_ITEM; the order goes on after it.

        Records parked behind the unknown item take the stream's reason even when they name
        no item themselves: they could not apply before it, and applying them now, out of
        order, could emit stages the order never went through in sequence.
        """
        st = self.state
        code = st.parked_on
        detail = f"order {st.order_ref} waited for item {code!r}, unknown to the item master {why}"
        res.out += [
            dead_letter(d.raw, Reason.UNKNOWN_ITEM, detail, d.rec.record_id) for d in st.parked
        ]
        st.parked, st.parked_since = [], None

    def _ids_due(self, t: str) -> float | None:
        """When a tracking number's scan ids may go: 24 h after its last scan, once closed."""
        st = self.state
        sid = st.by_tracking.get(t)
        closed = st.cancelled or (sid is not None and st.shipments[sid].ended)
        if not closed or t in st.parked_scans:
            return None
        return st.scan_ids[t].last_at + SCAN_ID_RETENTION

    def settle(self) -> Result:
        """End of replay input: gaps skip, then the parked stream, then parked scans."""
        st = self.state
        res = Result()
        out = Outcome()
        self.sequencer.skip(out)
        self._take(out, 0.0, res)
        if st.parked:
            self._expire_parked("by the end of input", res)
        scans = sorted(s for p in st.parked_scans.values() for s in p.scans)
        st.parked_scans.clear()
        res.out += [_unknown_tracking(d, "by the end of input") for _, d in scans]
        return res

    def next_deadline(self) -> float | None:
        st = self.state
        if not self.live:
            return None
        due = [
            st.seq.gap_deadline,
            None if st.parked_since is None else st.parked_since + self.item_timeout,
            *(p.since + self.tracking_timeout for p in st.parked_scans.values()),
            *(self._ids_due(t) for t in st.scan_ids),
        ]
        times = [t for t in due if t is not None]
        return min(times) if times else None

    @property
    def parked_count(self) -> int:
        st = self.state
        return len(st.parked) + sum(len(p.scans) for p in st.parked_scans.values())
