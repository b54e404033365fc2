"""Available to promise per (sku, warehouse), and its projection onto channels.

Two units, composed per sku (both need the same key, so one engine step runs
them; each is tested alone):

- `Cell` + `apply_movement`: the contract's table of effects, kept unclamped so
  that delta movements commute; `atp` is the only clamped value. The fold has
  the shape `initialize / agg / result` and needs no framework to test.
- `Projector`: per channel key, the available quantity per `channels.yaml`,
  emitted only when it changes (and once when first computed), with a version
  that increases strictly per key and the working that produced the number.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cache
from typing import Any, NamedTuple

from operators.normalise import Movement
from operators.records import DeadLetter, Reason, dead_letter
from operators.reference import Channel, Channels

_tuple_new = tuple.__new__

__all__ = [
    "Applied",
    "Cell",
    "ChannelKey",
    "Projector",
    "SkuState",
    "apply_movement",
    "channel_available",
]

_ON_HAND_PLUS = frozenset({"RECEIPT", "RETURN", "TRANSFER_IN", "ADJUST"})
_ON_HAND_MINUS = frozenset({"SHIP", "TRANSFER_OUT"})
#: WMS kinds that change on_hand: a late one below an applied count is superseded.
ON_HAND_KINDS = _ON_HAND_PLUS | _ON_HAND_MINUS | {"CYCLE_COUNT"}


@dataclass(slots=True)
class Cell:
    """One (sku, warehouse): unclamped sums in base units."""

    on_hand: int = 0
    on_hold: int = 0
    reserved: int = 0
    incoming: int = 0
    erp_book: int | None = None
    #: newest event_time applied to this cell
    as_of: int = 0
    #: highest applied WMS number, WMS CYCLE_COUNT number and ERP STOCK_SNAPSHOT number
    wms_seq: int = 0
    count_seq: int = 0
    snapshot_seq: int = 0

    @property
    def atp(self) -> int:
        return max(0, self.on_hand - self.on_hold - self.reserved)

    @property
    def drift(self) -> int | None:
        return None if self.erp_book is None else self.erp_book - self.on_hand


def apply_movement(cell: Cell, m: Movement) -> str | None:
    """Apply `m` to `cell`; returns a LATE_SUPERSEDED detail instead if newer info applied."""
    kind, qty = m.kind, m.qty
    if m.source == "wms":
        if kind in ON_HAND_KINDS and m.seq < cell.count_seq:
            return f"{kind} #{m.seq} is older than the CYCLE_COUNT #{cell.count_seq} already applied"
        if kind == "CYCLE_COUNT" and m.seq < cell.wms_seq:
            return f"CYCLE_COUNT #{m.seq} is older than movement #{cell.wms_seq} already applied"
        if m.seq > cell.wms_seq:
            cell.wms_seq = m.seq
        if kind in _ON_HAND_PLUS:
            cell.on_hand += qty
        elif kind in _ON_HAND_MINUS:
            cell.on_hand -= qty
        elif kind == "CYCLE_COUNT":
            cell.on_hand = qty
            cell.count_seq = m.seq
        elif kind == "HOLD":
            cell.on_hold += qty
        elif kind == "RELEASE_HOLD":
            cell.on_hold -= qty
        # PICK: no quantity change, the ERP already allocated the stock
    else:
        if kind == "STOCK_SNAPSHOT":
            if m.seq < cell.snapshot_seq:
                return f"STOCK_SNAPSHOT #{m.seq} is older than #{cell.snapshot_seq} already applied"
            cell.erp_book = qty
            cell.snapshot_seq = m.seq
        elif kind == "SO_ALLOCATION":
            cell.reserved += qty
        elif kind in ("SO_DEALLOCATION", "GOODS_ISSUE"):
            cell.reserved -= qty
        elif kind == "PO_CONFIRMED":
            cell.incoming += qty
        elif kind == "PO_RECEIVED":
            cell.incoming -= qty
    if m.event_time > cell.as_of:
        cell.as_of = m.event_time
    return None


@cache
def _share(pct: float) -> tuple[int, int]:
    """share_pct / 100 as an exact fraction (numerator, denominator): floor without float error."""
    f = Fraction(str(pct)) / 100
    return f.numerator, f.denominator


def channel_available(channel: Channel, base: int) -> tuple[int, int]:
    """(after_share, available) for a base, per the header of channels.yaml."""
    num, den = _share(channel.share_pct)
    after_share = base * num // den
    available = min(channel.max_qty, max(0, after_share - channel.buffer_units))
    if available < channel.min_qty:
        available = 0
    return after_share, available


class Applied(NamedTuple):
    """What one movement did: records it changed, or why it did not apply."""

    records: list[dict[str, Any]]
    late: DeadLetter | None = None
    duplicate: bool = False


#: (channel id, warehouse or None)
ChannelKey = tuple[str, str | None]


class _Target(NamedTuple):
    """A channel key that a movement at one warehouse can change, its rule's numbers ready."""

    key: ChannelKey
    location: str | None
    #: the warehouses its base sums
    warehouses: tuple[str, ...]
    channel: Channel
    #: share_pct / 100 as an exact fraction
    num: int
    den: int


def _targets(channels: Channels) -> dict[str, tuple[_Target, ...]]:
    """Per warehouse, the channel keys its movements feed."""
    out = {}
    for wh, chans in channels.by_warehouse.items():
        targets = []
        for c in chans:
            location = wh if c.per_location else None
            targets.append(_Target((c.id, location), location, (wh,) if location else c.warehouses,
                                   c, *_share(c.share_pct)))
        out[wh] = tuple(targets)
    return out


@dataclass(slots=True)
class SkuState:
    """Everything kept per sku (snapshotted per key)."""

    #: set by the first movement (the engine builds state without the key)
    sku: str = ""
    cells: dict[str, Cell] = field(default_factory=dict)
    #: channel key -> (available, version) last emitted
    emitted: dict[ChannelKey, tuple[int, int]] = field(default_factory=dict)
    #: ids of replayed dead letters already applied (at most once each)
    replayed_ids: set[str] | None = None


class Projector:
    """Applies movements to one sku's cells and emits changed channel quantities.

    Args:
        state: restored or fresh state.
        channels: the channel rules.
        version_clock: `None` for replay (versions count from 1), else a callable
            returning wall-clock epoch milliseconds for the hybrid logical clock.
        resumed: the state came from a recovery snapshot: the first result per key
            is emitted even when unchanged, so every consumer converges.
    """

    def __init__(
        self,
        state: SkuState,
        channels: Channels,
        version_clock: Callable[[], int] | None,
        *,
        resumed: bool = False,
    ) -> None:
        self.state = state
        self.targets = _targets(channels)
        self.version_clock = version_clock
        #: channel keys still owed their first result after a resume
        self.force: set[ChannelKey] | None = set(state.emitted) if resumed else None

    def on_movement(self, m: Movement, now_ms: int | None = None) -> Applied:
        """Apply one movement; returns the availability records it changed.

        `now_ms`: the version clock's reading, if the caller read it once for a whole batch.
        """
        st = self.state
        st.sku = m.sku
        raw = m.raw
        replayed = raw.replayed if raw.headers else False
        if replayed and st.replayed_ids and m.source_id in st.replayed_ids:
            return Applied([], duplicate=True)  # a dead letter replayed again
        cell = st.cells.get(m.warehouse)
        if cell is None:
            cell = st.cells[m.warehouse] = Cell()
        atp, incoming = cell.on_hand - cell.on_hold - cell.reserved, cell.incoming
        late = apply_movement(cell, m)
        if late is not None:
            return Applied([], dead_letter(m.raw, Reason.LATE_SUPERSEDED, late, m.source_id))
        if replayed:
            if st.replayed_ids is None:
                st.replayed_ids = set()  # rare: an empty set per sku would cost 216 bytes
            st.replayed_ids.add(m.source_id)
        # A channel's base reads the cells' ATP and incoming, clamped at 0. A movement that
        # changes neither (a PICK, a snapshot, a PO for channels without incoming: a fifth of
        # them) cannot change what a channel key already emitted: skip those keys.
        after = cell.on_hand - cell.on_hold - cell.reserved
        same_atp = after == atp or (after <= 0 and atp <= 0)
        same_incoming = cell.incoming == incoming or (cell.incoming <= 0 and incoming <= 0)
        emitted, force = st.emitted, self.force
        out = []
        blocks: dict[str, dict[str, Any]] = {}
        for target in self.targets.get(m.warehouse, ()):
            if (same_atp and (same_incoming or not target.channel.include_incoming)
                    and target.key in emitted and not (force and target.key in force)):
                continue
            record = self._project(target, m, blocks, now_ms)
            if record is not None:
                out.append(record)
        return _tuple_new(Applied, (out, None, False))

    def _project(self, target: _Target, m: Movement, blocks: dict[str, dict[str, Any]],
                 now_ms: int | None) -> dict[str, Any] | None:
        # The hot path (2-3 calls per movement): `channel_available` and `Cell.atp`/`drift` are
        # inlined here, and one movement's records share each warehouse's block (records are
        # never changed once built); tests/test_availability.py proves the records equal the
        # plain formulas.
        st = self.state
        channel = target.channel
        key = target.key
        location = target.location
        cells = st.cells
        whs = target.warehouses
        base = 0
        incoming = channel.include_incoming
        for wh in whs:
            c = cells.get(wh)
            if c is not None:
                atp = c.on_hand - c.on_hold - c.reserved
                if atp > 0:
                    base += atp
                if incoming and c.incoming > 0:
                    base += c.incoming
        after_share = base * target.num // target.den
        available = after_share - channel.buffer_units
        if available < 0:
            available = 0
        elif available > channel.max_qty:
            available = channel.max_qty
        if available < channel.min_qty:
            available = 0
        emitted = st.emitted
        last = emitted.get(key)
        force = self.force
        forced = force is not None and key in force
        if last is not None and last[0] == available and not forced:
            return None  # the common case: checked before any record is built
        if forced:
            force.discard(key)  # type: ignore[union-attr]
        prev_version = last[1] if last else 0
        if self.version_clock is None:
            version = prev_version + 1
        else:
            if now_ms is None:
                now_ms = self.version_clock()
            version = max(prev_version + 1, now_ms * 1000)
        emitted[key] = (available, version)
        as_of = 0
        basis = []
        for wh in whs:
            c = cells.get(wh)
            if c is None:
                continue
            if c.as_of > as_of:
                as_of = c.as_of
            block = blocks.get(wh)
            if block is None:
                on_hand, book = c.on_hand, c.erp_book
                atp = on_hand - c.on_hold - c.reserved
                block = blocks[wh] = {
                    "warehouse": wh, "on_hand": on_hand, "on_hold": c.on_hold,
                    "reserved": c.reserved, "incoming": c.incoming, "atp": atp if atp > 0 else 0,
                    "erp_book": book, "drift": None if book is None else book - on_hand,
                }
            basis.append(block)
        return {
            "channel": channel.id,
            "sku": st.sku,
            "location": location,
            "available": available,
            "previous": last[0] if last else None,
            "version": version,
            "as_of": as_of,
            "source": m.source,
            "source_id": m.source_id,
            "warehouses": basis,
            "base": base,
            "share_pct": float(channel.share_pct),
            "after_share": after_share,
            "buffer_units": channel.buffer_units,
            "max_qty": channel.max_qty,
            "min_qty": channel.min_qty,
            "include_incoming": channel.include_incoming,
        }
