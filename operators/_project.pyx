# cython: language_level=3, boundscheck=False, wraparound=False, overflowcheck=True
"""The project step's common case, compiled: a twin of `ProjectShard.one` (operators/steps.py)
with `Projector.on_movement`, `apply_movement` and `Projector._project` (operators/availability.py).

The common case is a movement for a sku and warehouse already seen, not replayed, not owed a
result after a resume, and not superseded; every other movement goes to `shard.one`, the Python
reference, before anything is changed. The state stays the Python dataclasses (recovery
snapshots pickle them). Quantities are C integers here: each is at most 10^9 (normalise
enforces it), so an unclamped sum cannot come near 2^63; `overflowcheck` raises rather than
wrap if one ever did. tests/test_project_compiled.py drives both paths and finds equal
outputs, state and counts.
"""

from operators import metrics
from operators.records import Output

cdef object _tuple_new = tuple.__new__
cdef frozenset _ON_HAND_PLUS = frozenset({"RECEIPT", "RETURN", "TRANSFER_IN", "ADJUST"})
cdef frozenset _ON_HAND_MINUS = frozenset({"SHIP", "TRANSFER_OUT"})
cdef frozenset _ON_HAND_KINDS = _ON_HAND_PLUS | _ON_HAND_MINUS | {"CYCLE_COUNT"}

# Movement fields (a NamedTuple): sku, warehouse, source, source_id, seq, kind, qty, event_time, raw
# RawRecord fields: topic, partition, offset, key, value, timestamp, headers


def project(shard, list movements, now_ms, list out, late, applied, duplicates):
    """`shard.one(m, now_ms, out, late, applied, duplicates)` for each of `movements`."""
    cdef dict states = shard.states
    cdef dict targets = shard.projector.targets
    cdef dict topics = shard.topics
    cdef object resumed = shard.resumed
    cdef dict forced = shard.forced
    cdef bint clocked = shard.projector.version_clock is not None
    cdef long long now_version = now_ms * 1000 if clocked else 0
    cdef tuple m, raw, target, last
    cdef dict cells, emitted, blocks, block, record
    cdef list basis
    cdef str sku, wh, source, kind, loc, w
    cdef long long qty, seq, event_time
    cdef long long on_hand, on_hold, reserved, incoming, atp, after, incoming_after
    cdef long long wms_seq, count_seq, snapshot_seq, as_of, base, version
    cdef long long prev_version, c_atp, c_incoming, c_on_hand
    cdef bint wms, same_atp, same_incoming, with_incoming
    cdef object state, cell, c, channel, key, book, after_share, available, mo, to
    one = shard.one
    for mo in movements:
        # NamedTuples are tuples: read their fields by position, without a type check
        m = <tuple>mo
        sku, wh = m[0], m[1]
        raw = <tuple>m[8]
        if raw[6] or (resumed and sku in resumed) or (forced and sku in forced):
            one(mo, now_ms, out, late, applied, duplicates)  # replayed, or owed after a resume
            continue
        state = states.get(sku)
        cell = None if state is None else (<dict>state.cells).get(wh)
        if cell is None:
            one(mo, now_ms, out, late, applied, duplicates)  # a new sku or warehouse
            continue
        source, kind = m[2], m[5]
        seq, qty, event_time = m[4], m[6], m[7]
        wms = source == "wms"
        wms_seq, count_seq, snapshot_seq = cell.wms_seq, cell.count_seq, cell.snapshot_seq
        if wms:
            if ((kind in _ON_HAND_KINDS and seq < count_seq)
                    or (kind == "CYCLE_COUNT" and seq < wms_seq)):
                one(mo, now_ms, out, late, applied, duplicates)  # superseded: a dead letter
                continue
        elif kind == "STOCK_SNAPSHOT" and seq < snapshot_seq:
            one(mo, now_ms, out, late, applied, duplicates)
            continue

        # apply_movement
        state.sku = sku
        on_hand, on_hold, reserved, incoming = cell.on_hand, cell.on_hold, cell.reserved, cell.incoming
        atp = on_hand - on_hold - reserved
        incoming_after = incoming
        if wms:
            if seq > wms_seq:
                cell.wms_seq = seq
            if kind in _ON_HAND_PLUS:
                on_hand += qty
                cell.on_hand = on_hand
            elif kind in _ON_HAND_MINUS:
                on_hand -= qty
                cell.on_hand = on_hand
            elif kind == "CYCLE_COUNT":
                on_hand = qty
                cell.on_hand = on_hand
                cell.count_seq = seq
            elif kind == "HOLD":
                on_hold += qty
                cell.on_hold = on_hold
            elif kind == "RELEASE_HOLD":
                on_hold -= qty
                cell.on_hold = on_hold
        elif kind == "STOCK_SNAPSHOT":
            cell.erp_book = qty
            cell.snapshot_seq = seq
        elif kind == "SO_ALLOCATION":
            reserved += qty
            cell.reserved = reserved
        elif kind == "SO_DEALLOCATION" or kind == "GOODS_ISSUE":
            reserved -= qty
            cell.reserved = reserved
        elif kind == "PO_CONFIRMED":
            incoming_after += qty
            cell.incoming = incoming_after
        elif kind == "PO_RECEIVED":
            incoming_after -= qty
            cell.incoming = incoming_after
        if event_time > <long long>cell.as_of:
            cell.as_of = event_time
        applied[source] = applied.get(source, 0) + 1

        # Projector.on_movement: the keys this movement can change
        after = on_hand - on_hold - reserved
        same_atp = after == atp or (after <= 0 and atp <= 0)
        same_incoming = incoming_after == incoming or (incoming_after <= 0 and incoming <= 0)
        cells, emitted = state.cells, state.emitted
        blocks = None
        for to in targets.get(wh, ()):
            target = <tuple>to
            key, channel = target[0], target[3]
            with_incoming = channel.include_incoming
            if same_atp and (same_incoming or not with_incoming) and key in emitted:
                continue
            # Projector._project
            base = 0
            for w in target[2]:
                c = cells.get(w)
                if c is not None:
                    c_atp = <long long>c.on_hand - <long long>c.on_hold - <long long>c.reserved
                    if c_atp > 0:
                        base += c_atp
                    if with_incoming:
                        c_incoming = c.incoming
                        if c_incoming > 0:
                            base += c_incoming
            # The channel's rule on Python ints: its limits are unbounded in channels.yaml.
            after_share = base * target[4] // target[5]
            available = after_share - channel.buffer_units
            if available < 0:
                available = 0
            elif available > channel.max_qty:
                available = channel.max_qty
            if available < channel.min_qty:
                available = 0
            last = emitted.get(key)
            if last is not None and last[0] == available:
                continue
            prev_version = last[1] if last is not None else 0
            if clocked:
                version = prev_version + 1 if prev_version + 1 > now_version else now_version
            else:
                version = prev_version + 1
            emitted[key] = (available, version)
            as_of = 0
            basis = []
            if blocks is None:
                blocks = {}
            for w in target[2]:
                c = cells.get(w)
                if c is None:
                    continue
                if <long long>c.as_of > as_of:
                    as_of = c.as_of
                block = blocks.get(w)
                if block is None:
                    c_on_hand, book = c.on_hand, c.erp_book
                    c_atp = c_on_hand - <long long>c.on_hold - <long long>c.reserved
                    block = blocks[w] = {
                        "warehouse": w, "on_hand": c_on_hand, "on_hold": c.on_hold,
                        "reserved": c.reserved, "incoming": c.incoming,
                        "atp": c_atp if c_atp > 0 else 0,
                        "erp_book": book, "drift": None if book is None else book - c_on_hand,
                    }
                basis.append(block)
            loc = target[1]
            record = {
                "channel": channel.id,
                "sku": sku,
                "location": loc,
                "available": available,
                "previous": last[0] if last is not None else None,
                "version": version,
                "as_of": as_of,
                "source": source,
                "source_id": m[3],
                "warehouses": basis,
                "base": base,
                "share_pct": float(channel.share_pct),
                "after_share": after_share,
                "buffer_units": channel.buffer_units,
                "max_qty": channel.max_qty,
                "min_qty": channel.min_qty,
                "include_incoming": with_incoming,
            }
            out.append(_tuple_new(Output, (
                topics[channel.id], sku if loc is None else sku + "|" + loc,
                "AvailabilityRecord", record, raw[5], m[7], source)))
        if kind == "STOCK_SNAPSHOT":
            book = cell.erp_book
            if book is not None:
                metrics.ATP_DRIFT.observe(book - cell.on_hand)
