# cython: language_level=3, boundscheck=False, wraparound=False, overflowcheck=True
"""The project step's common case, compiled: a twin of `ProjectShard.one` (operators/steps.py)
with `Projector.on_movement`, `apply_movement` and `Projector._project` (operators/availability.py).

The common case is a movement that is not replayed, not for a sku owed a result after a
resume, and not superseded; every other movement goes to `shard.one`, the Python
reference, before anything is changed. The state stays the Python dataclasses (recovery
snapshots pickle them). Quantities are C integers here: each is at most 10^9 (normalise
enforces it), so an unclamped sum cannot come near 2^63; `overflowcheck` raises rather than
wrap if one ever did. tests/test_project_compiled.py drives both paths and finds equal
outputs, state and counts.
"""

from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject
from libc.stdint cimport int64_t

from schemas._writer cimport (
    STACK, Buf, put_byte, put_long, put_raw, put_str, release, reserve, start, take,
)

cdef extern from "Python.h":
    long long PyLong_AsLongLongAndOverflow(object o, int* overflow) except? -1
    bint PyLong_CheckExact(object o)
    bint PyUnicode_CheckExact(object o)
    int PyFloat_Pack8(double x, char* p, int le) except -1

from operators import metrics
from operators.availability import Cell, SkuState
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
    cdef dict plans = shard.plans
    cdef bint clocked = shard.projector.version_clock is not None
    cdef long long now_version = now_ms * 1000 if clocked else 0
    cdef tuple m, raw, target, last
    cdef dict cells, emitted, blocks, block
    cdef list basis
    cdef str sku, wh, source, kind, loc, w
    cdef long long qty, seq, event_time
    cdef long long on_hand, on_hold, reserved, incoming, atp, after, incoming_after
    cdef long long wms_seq, count_seq, snapshot_seq, as_of, base, version
    cdef long long prev_version, c_atp, c_incoming, c_on_hand
    cdef bint wms, same_atp, same_incoming, with_incoming
    cdef object state, cell, c, channel, key, book, after_share, available, mo, to, plan, value
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
        if state is None:
            state = states[sku] = SkuState()  # as `shard._projector` makes it
        cell = (<dict>state.cells).get(wh)
        if cell is None:
            cell = state.cells[wh] = Cell()  # as `Projector.on_movement` makes it
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
            value = None
            if plans is not None:
                plan = plans.get(key)
                if plan is not None:
                    value = _encoded(<tuple>plan, sku, available,
                                     last[0] if last is not None else None, version, target[2],
                                     cells, source, m[3], base, after_share)
            if value is None:
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
                value = {
                    "channel": channel.id,
                    "sku": sku,
                    "location": target[1],
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
            loc = target[1]
            out.append(_tuple_new(Output, (
                topics[channel.id], sku if loc is None else sku + "|" + loc,
                "AvailabilityRecord", value, raw[5], m[7], source)))
        if kind == "STOCK_SNAPSHOT":
            book = cell.erp_book
            if book is not None:
                metrics.ATP_DRIFT.observe(book - cell.on_hand)


# -- records as Avro ----------------------------------------------------------------------
#
# In the live job an availability record goes to Kafka only, Avro-encoded (sinks/kafka.py):
# with `shard.plans` set, a record is written here straight from the cells, as
# schemas/_avro.pyx's `encode_availability` would write the dict the reference builds, and
# never built as a dict. A value that does not fit a long takes the dict path (whose
# encoding then decides, as it always did).


cdef inline bint _i64(object o, int64_t* out) except -1:
    """An exact int that fits 64 bits, as a C value (False: anything else)."""
    cdef int overflow = 0
    if not PyLong_CheckExact(o):
        return False
    out[0] = PyLong_AsLongLongAndOverflow(o, &overflow)
    return overflow == 0


def plans(dict targets):
    """Per channel key of `targets` (`Projector.targets`), the constant parts of its records'
    encoding, or None for a channel whose numbers do not fit a long (its records stay dicts)."""
    cdef dict out = {}
    for group in targets.values():
        for target in group:
            key = (<tuple>target)[0]
            if key not in out:
                out[key] = _plan(<tuple>target)
    return out


cdef object _plan(tuple target):
    """(channel, location, share_pct, limits + include_incoming) as encoded bytes."""
    cdef char stack[STACK]
    cdef Buf b
    cdef int64_t v
    cdef list parts = []
    channel, loc = target[3], target[1]
    flag = channel.include_incoming
    if flag is not True and flag is not False:
        return None
    start(&b, stack)
    try:
        put_str(&b, channel.id)
        parts.append(take(&b))
        b.size = 0
        if loc is None:
            put_byte(&b, 0)
        else:
            put_byte(&b, 2)
            put_str(&b, loc)
        parts.append(take(&b))
        b.size = 0
        reserve(&b, 8)
        PyFloat_Pack8(float(channel.share_pct), b.data, 1)
        b.size = 8
        parts.append(take(&b))
        b.size = 0
        for limit in (channel.buffer_units, channel.max_qty, channel.min_qty):
            if not _i64(limit, &v):
                return None
            put_long(&b, v)
        put_byte(&b, 1 if flag else 0)
        parts.append(take(&b))
        return tuple(parts)
    finally:
        release(&b)


cdef inline int _put(Buf* b, bytes part) except -1:
    return put_raw(b, part, len(part))


cdef object _encoded(tuple plan, str sku, object available, object previous, long long version,
                     tuple whs, dict cells, str source, object source_id, long long base,
                     object after_share):
    """The record `_project` builds as a dict, as Avro bytes; None if a number does not fit."""
    cdef int64_t avail, prev = 0, after, as_of = 0, on_hand, on_hold, reserved, atp, book
    cdef Py_ssize_t n = 0
    cdef char stack[STACK]
    cdef Buf b
    cdef PyObject* found
    if not (_i64(available, &avail) and _i64(after_share, &after)):
        return None
    if previous is not None and not _i64(previous, &prev):
        return None
    if not PyUnicode_CheckExact(source_id):
        return None
    start(&b, stack)
    try:
        for w in whs:
            found = PyDict_GetItem(cells, w)
            if found is not NULL:
                n += 1
                if <int64_t>(<object>found).as_of > as_of:
                    as_of = (<object>found).as_of
        _put(&b, <bytes>plan[0])
        put_str(&b, sku)
        _put(&b, <bytes>plan[1])
        put_long(&b, avail)
        if previous is None:
            put_byte(&b, 0)
        else:
            put_byte(&b, 2)
            put_long(&b, prev)
        put_long(&b, version)
        put_long(&b, as_of)
        put_str(&b, source)
        put_str(&b, source_id)
        if n:
            put_long(&b, n)
            for w in whs:
                found = PyDict_GetItem(cells, w)
                if found is NULL:
                    continue
                c = <object>found
                put_str(&b, w)
                on_hand, on_hold, reserved = c.on_hand, c.on_hold, c.reserved
                put_long(&b, on_hand)
                put_long(&b, on_hold)
                put_long(&b, reserved)
                put_long(&b, c.incoming)
                atp = on_hand - on_hold - reserved
                put_long(&b, atp if atp > 0 else 0)
                book_obj = c.erp_book
                if book_obj is None:
                    put_byte(&b, 0)
                    put_byte(&b, 0)
                else:
                    book = book_obj
                    put_byte(&b, 2)
                    put_long(&b, book)
                    put_byte(&b, 2)
                    put_long(&b, book - on_hand)
        put_byte(&b, 0)  # end of the array
        put_long(&b, base)
        _put(&b, <bytes>plan[2])
        put_long(&b, after)
        _put(&b, <bytes>plan[3])
        return take(&b)
    except OverflowError:
        return None  # a cell beyond a long: the dict path, whose encoding decides
    finally:
        release(&b)
