# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled twin of the order step's common case (built at install by setup.py; optional).

`_OrderShard.on_batch` (operators/steps.py) runs each chunk through `Batch.rest`, which
applies the records of the common case itself and hands every other record back, in order,
to the Python loop. The common case is a record that `Sequencer.on_record`'s fused branch
applies at once and that `Normaliser.on_record` turns straight into a `Movement`:

- sequencing: not replayed, valid, the stream's next number, nothing buffered or waiting,
  no `extra` ids, an id hash not in the ring, an event time within bounds;
- normalising: the item code's state has an item and nothing parked, the location is known,
  and `to_movement` accepts the quantity (active item, known unit, whole base units, sign
  and size rules).

Every check reads only; the state changes (new stream state, memory slot, `next_seq`,
`d.identity`, the live gap table) are made once all of them passed. A check that fails or
raises leaves the record untouched for the Python code, which then decides (or raises)
exactly as it would have. The state stays the Python dataclasses, changed through their
attributes, so snapshots keep their format. The Python units remain the reference:
tests/test_order_compiled.py drives both paths with random arrivals and compares results,
state and metrics.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.object cimport PyObject
from cpython.set cimport PySet_Contains
from libc.string cimport memcmp, memcpy, memset

cdef extern from "Python.h":
    long long PyLong_AsLongLongAndOverflow(object o, int* overflow)
    bint PyLong_CheckExact(object o)
    bint PyFloat_CheckExact(object o)
    bint PyBytes_CheckExact(object o)
    bint PyByteArray_CheckExact(object o)
    bint PyUnicode_CheckExact(object o)
    object PyObject_GenericGetDict(object o, void* context)
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL

# BLAKE2b and CRC-32 in C (operators/_hashes.pxd); `id_hash` and `shard` below expose them so
# that tests compare them with hashlib and zlib.
from operators._hashes cimport atp_blake2b, atp_crc_init, atp_shard

atp_crc_init()

import sys
from decimal import Decimal

from operators.decode import Decoded
from operators.models import ErpInventoryDocument, WmsInventoryTransaction
from operators.normalise import MAX_QTY, SIGNED_KINDS, Movement
from operators.records import REPLAYED_HEADER, RawRecord
from operators.sequencing import (
    DIGEST_BYTES, EMPTY_SLOT, ID_BYTES, MEMORY_WINDOW, MIN_EVENT_TIME_MS, SLOT_BYTES,
    SequencerState,
)

# The ring's layout as C constants; a change in operators/sequencing.py must show here.
cdef enum:
    ID_LEN = 5
    DIGEST_LEN = 5
    SLOT_LEN = 10
    WINDOW = 64
assert (ID_BYTES, DIGEST_BYTES, SLOT_BYTES, MEMORY_WINDOW) == (ID_LEN, DIGEST_LEN, SLOT_LEN, WINDOW)
assert EMPTY_SLOT == bytes(SLOT_LEN)

cdef long long MIN_T = MIN_EVENT_TIME_MS
cdef long long MAX_Q = MAX_QTY
#: below this magnitude an int converts to a double exactly, so C compares like Python
cdef long long EXACT_DOUBLE = 1LL << 53
cdef object _tuple_new = tuple.__new__


cdef inline bint _i64(object o, long long* out):
    """An exact int that fits 64 bits, as a C value (False: anything else)."""
    cdef int overflow = 0
    if not PyLong_CheckExact(o):
        return False
    out[0] = PyLong_AsLongLongAndOverflow(o, &overflow)
    return overflow == 0


cdef inline object _get(dict table, object key):
    """`table.get(key)` for a key whose hash and equality cannot raise (a str). On a model's
    `__dict__`, a field (None if missing: never a value the common case takes)."""
    cdef PyObject* v = PyDict_GetItem(table, key)
    return None if v is NULL else <object>v


cdef inline int _id_hash(str rid, unsigned char* out) except -1:
    """`sequencing.id_hash` into `out`: BLAKE2b-40 of the id's UTF-8 (raises like `str.encode`;
    a non-ASCII id keeps its UTF-8 form cached, as CPython does for any str asked for it)."""
    cdef Py_ssize_t n
    cdef const char* p = PyUnicode_AsUTF8AndSize(rid, &n)
    atp_blake2b(<const unsigned char*>p, n, out, ID_LEN)
    return 0


def id_hash(str rid) -> bytes:
    """The compiled `operators.sequencing.id_hash` (for tests)."""
    cdef unsigned char out[ID_LEN]
    _id_hash(rid, out)
    return PyBytes_FromStringAndSize(<char*>out, ID_LEN)


def shard(str key not None, list names not None):
    """`names[zlib.crc32(key.encode()) % len(names)]`: `operators.steps.shard_of` compiled."""
    return atp_shard(key, names)


def group(list results, list names, object shard_of, object dead):
    """`_OrderShard._finish`'s split of `results`: movements grouped by the shard of their
    sku, as `[(shard, [movements])]` in order of first appearance; the rest appended to `dead`.

    `names` are the shard names `shard_of` picks from; a sku that is not a str goes to
    `shard_of` itself (which raises as it would in Python).
    """
    cdef dict groups = {}
    cdef PyObject* g
    for r in results:
        if type(r) is not Movement:
            dead.append(r)
            continue
        sku = (<tuple>r)[0]
        where = atp_shard(sku, names) if PyUnicode_CheckExact(sku) else shard_of(sku)
        g = PyDict_GetItem(groups, where)
        if g is NULL:
            groups[where] = [r]
        else:
            (<list>g).append(r)
    return list(groups.items())


cdef inline bint _has_id(bytearray ring, const unsigned char* idh):
    """`IdMemory.has_id` on the ring: an id hash matches only at the start of a slot."""
    cdef const char* p = PyByteArray_AS_STRING(ring)
    cdef Py_ssize_t n = PyByteArray_GET_SIZE(ring), at = 0
    while at + ID_LEN <= n:
        if memcmp(p + at, idh, ID_LEN) == 0:
            return True
        at += SLOT_LEN
    return False


cdef inline bint _replayed(object headers) except -1:
    """`RawRecord.replayed`, for header tuples of (name, value) pairs; -1 (raises): others."""
    if not headers:
        return False
    for h in <tuple?>headers:
        if len(<tuple?>h) != 2:
            raise ValueError("not a header pair")
        if (<tuple>h)[0] == REPLAYED_HEADER:
            return True
    return False


cdef class Batch:
    """One `on_batch` call: the shard's tables, the clock's limit, and the results list."""

    cdef dict streams, codes, by_facility, by_plant
    #: stream -> gap deadline (live mode), else None
    cdef object gaps
    cdef list results
    cdef object limit
    cdef double limit_f
    cdef bint limit_is_float
    cdef object chunk
    cdef Py_ssize_t at, end
    # what the checks found, for the commit of the same record
    cdef object state, ring, seq_obj, digest, movement
    cdef long long seq
    cdef unsigned char idh[ID_LEN]

    def __init__(self, dict streams, dict codes, object gaps, object locations, object limit,
                 list results):
        """`limit` is `now * 1000 + max_clock_skew * 1000`, computed as the sequencer does."""
        self.streams, self.codes, self.gaps, self.results = streams, codes, gaps, results
        # `Locations.warehouse_for`'s two tables, read once per batch
        self.by_facility, self.by_plant = locations.by_facility, locations.by_plant
        self.limit = limit
        self.limit_is_float = PyFloat_CheckExact(limit)
        self.limit_f = PyFloat_AS_DOUBLE(limit) if self.limit_is_float else 0.0

    def rest(self, chunk):
        """Apply the common-case records of `chunk`; iterate over the others, in order.

        Lazy: a record is applied only once every record before it was handed back and
        handled, so the Python code and this one see the state in arrival order.
        """
        if type(chunk) is not list:
            return iter(chunk)
        self.chunk, self.at, self.end = chunk, 0, len(chunk)
        return self

    def __iter__(self):
        return self

    def __next__(self):
        cdef list chunk = self.chunk
        cdef object d
        while self.at < self.end:
            d = chunk[self.at]
            self.at += 1
            try:
                common = self._check(d)
            except Exception:
                common = False  # the Python code meets the same error and raises it
            if not common:
                return d
            self._commit(d)
        self.chunk = None
        raise StopIteration

    cdef bint _check(self, object d) except -1:
        """Is `d` the common case? Reads only; keeps what `_commit` needs."""
        if type(d) is not Decoded:
            return False
        raw = d.raw
        if type(raw) is not RawRecord or _replayed((<tuple>raw)[6]) or d.invalid:
            return False
        key, code, digest = d.stream, d.code, d.digest
        if not (PyUnicode_CheckExact(key) and key and PyUnicode_CheckExact(code)
                and PyBytes_CheckExact(digest) and PyBytes_GET_SIZE(digest) >= DIGEST_LEN):
            return False
        rec = d.rec
        cdef bint erp
        if type(rec) is WmsInventoryTransaction:
            erp = False
        elif type(rec) is ErpInventoryDocument:
            erp = True
        else:
            return False
        cdef dict f = PyObject_GenericGetDict(rec, NULL)
        if erp:
            rid, seq_obj, t_obj = _get(f, "doc_id"), _get(f, "change_seq"), _get(f, "posted_at")
        else:
            rid, seq_obj, t_obj = _get(f, "txn_id"), _get(f, "seq"), _get(f, "event_time")
        cdef long long seq, next_seq, t
        if not (PyUnicode_CheckExact(rid) and _i64(seq_obj, &seq) and _i64(t_obj, &t)):
            return False

        # -- sequencing: Sequencer.on_record's fused branch
        state = _get(self.streams, key)
        if state is None:
            next_seq, ring = 1, None  # a new stream's state
        else:
            memory = state.memory
            if (state.buffer is not None or state.gap_deadline is not None or memory.extra
                    or not _i64(state.next_seq, &next_seq)):
                return False
            ring = memory.ring
            if not PyByteArray_CheckExact(ring) or PyByteArray_GET_SIZE(ring) % SLOT_LEN:
                return False
        if seq != next_seq or t < MIN_T:
            return False
        if self.limit_is_float and -EXACT_DOUBLE <= t <= EXACT_DOUBLE:
            if not <double>t <= self.limit_f:  # (not >: a NaN limit takes nothing)
                return False
        elif not t_obj <= self.limit:
            return False
        _id_hash(rid, self.idh)
        if ring is not None and _has_id(<bytearray>ring, self.idh):
            return False

        # -- normalising: Normaliser.on_record and to_movement, when they make a Movement
        cs = _get(self.codes, code)
        if cs is None:
            return False
        item = cs.item
        if item is None or cs.parked:
            return False
        place = _get(f, "plant" if erp else "facility")
        if not PyUnicode_CheckExact(place):
            return False
        warehouse = _get(self.by_plant if erp else self.by_facility, place)
        if warehouse is None:
            return False
        cdef dict im = PyObject_GenericGetDict(item, NULL)
        factors = _get(im, "uom_factors")
        if not _get(im, "active") or type(factors) is not dict:
            return False
        if erp:
            kind, unit, qty_in = _get(f, "doc_type"), _get(f, "unit"), _get(f, "quantity")
        else:
            kind, unit, qty_in = _get(f, "txn_type"), _get(f, "uom"), _get(f, "qty")
        factor = (<dict>factors).get(unit)
        if factor is None:
            return False
        if type(qty_in) is Decimal:
            base = qty_in * factor
            if base != base.to_integral_value():
                return False
            qty_obj = int(base)
        elif PyLong_CheckExact(qty_in):
            qty_obj = qty_in * factor
        else:
            return False
        cdef long long qty
        if not _i64(qty_obj, &qty) or qty < -MAX_Q or qty > MAX_Q:
            return False
        if qty < 0 and (erp or not PySet_Contains(SIGNED_KINDS, kind)):
            return False

        self.state, self.ring, self.seq, self.seq_obj = state, ring, seq, seq_obj
        self.digest = digest
        self.movement = _tuple_new(Movement, (
            _get(im, "sku"), warehouse, "erp" if erp else "wms", rid, seq_obj, kind, qty_obj,
            t_obj, raw))
        return True

    cdef int _commit(self, object d) except -1:
        """Apply a record `_check` passed, as the fused branch and the normaliser would."""
        key = d.stream
        state = self.state
        if state is None:
            state = self.streams[key] = SequencerState()
            self.ring = state.memory.ring
        if not state.stream:
            state.stream, state.topic = key, sys.intern(d.raw.topic)
        cdef bytes entry = PyBytes_FromStringAndSize(NULL, SLOT_LEN)
        cdef char* e = PyBytes_AS_STRING(entry)
        memcpy(e, self.idh, ID_LEN)
        memcpy(e + ID_LEN, PyBytes_AS_STRING(self.digest), DIGEST_LEN)
        d.identity = entry
        # seq % WINDOW as Python takes it (non-negative) is seq & 63 in two's complement
        self._write(<bytearray>self.ring, self.seq & (WINDOW - 1), entry)
        state.next_seq = self.seq_obj + 1
        # gap_deadline was None already (checked), as the fused branch leaves it
        if self.gaps:
            self.gaps.pop(key, None)
        self.results.append(self.movement)
        self.state = self.ring = self.seq_obj = self.digest = self.movement = None
        return 0

    cdef int _write(self, bytearray ring, Py_ssize_t slot, bytes entry) except -1:
        """`IdMemory.write`: the ring grows (zero-filled) up to a slot written for the first time."""
        cdef Py_ssize_t at = slot * SLOT_LEN, n = PyByteArray_GET_SIZE(ring)
        if at >= n:
            if entry == EMPTY_SLOT:
                return 0
            PyByteArray_Resize(ring, at + SLOT_LEN)
            memset(PyByteArray_AS_STRING(ring) + n, 0, at - n)
        memcpy(PyByteArray_AS_STRING(ring) + at, PyBytes_AS_STRING(entry), SLOT_LEN)
        return 0
