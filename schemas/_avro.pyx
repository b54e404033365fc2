# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled Avro for the per-record hot path (built at install by setup.py; optional).

Three functions, each a faster twin of a Python call on a fixed family of schemas:

- `read_flat(data, plan)`: a record of strings, longs, enums, `[null, string]`,
  `[null, long]` and bytes decimals (every upstream movement schema). It accepts only a
  complete, canonical encoding and returns `None` for anything else (a short read, an
  unknown enum index, bytes left over, invalid UTF-8, a varint beyond 64 bits): the
  caller then asks fastavro, whose answer (a record or the error) stands. So on any input
  it either equals fastavro's result or defers to it.
- `encode_availability(record)`: `AvailabilityRecord` as fastavro writes it. A value of
  an unexpected type raises `TypeError`/`OverflowError`/`KeyError`, and the caller falls
  back to fastavro (which writes it or raises its own error).
- `construct(model, codes, positive, fields)`: `operators.decode.quick_model`'s rule check
  and model construction (tests/test_decode.py runs its tests on both).

tests/test_avro_compiled.py proves the codec against fastavro on generated records and
mutated bytes. Any change to the schemas' field lists must be mirrored here (the tests
fail otherwise).
"""

from cpython.long cimport PyLong_Check
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject, PyTypeObject
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int64_t, uint64_t

from schemas._writer cimport (
    STACK, Buf, put_byte, put_long, put_str, release, reserve, start, take,
)

cdef extern from "Python.h":
    int PyObject_GenericSetAttr(object o, object name, object value) except -1
    int PyObject_GenericSetDict(object o, object value, void* context) except -1
    int PyFloat_Pack8(double x, char* p, int le) except -1
    bint PyType_Check(object o)

from decimal import Context

# -- reading ------------------------------------------------------------------------------

STRING, LONG, ENUM, OPT_STRING, OPT_LONG, DECIMAL = range(6)
cdef enum:
    MAX_DECIMALS = 4096


cdef class Field:
    """One field of a flat record: its name, kind and what the kind needs."""

    cdef readonly str name
    cdef readonly int kind
    cdef tuple symbols
    cdef object context
    cdef int scale
    #: unscaled value -> its Decimal: making one costs more than the rest of a record, and a
    #: feed repeats few quantities. Decimals are immutable, so records may share them.
    cdef readonly dict decimals

    def __init__(self, str name, int kind, tuple symbols=(), int precision=0, int scale=0):
        self.name = name
        self.kind = kind
        self.symbols = symbols
        # fastavro's own recipe: a context with the schema's precision, then scaleb.
        self.context = Context(prec=precision) if kind == DECIMAL else None
        self.scale = scale
        self.decimals = {}

    cdef object decimal(self, object unscaled):
        cdef PyObject* known = PyDict_GetItem(self.decimals, unscaled)
        if known is not NULL:
            return <object>known
        value = self.context.create_decimal(unscaled).scaleb(-self.scale, self.context)
        if len(self.decimals) >= MAX_DECIMALS:
            self.decimals.clear()  # bounded: a cache, not state
        self.decimals[unscaled] = value
        return value


cdef inline bint _varint(const unsigned char* p, Py_ssize_t n, Py_ssize_t* pos, int64_t* out):
    """Zig-zag varint at pos; False if short or beyond 64 bits (left to fastavro)."""
    cdef uint64_t acc = 0
    cdef int shift = 0
    cdef unsigned char b
    while True:
        if pos[0] >= n:
            return False
        b = p[pos[0]]
        pos[0] += 1
        if shift == 63 and b > 1:
            return False  # the 10th byte holds one bit of a 64-bit value, and ends it
        acc |= (<uint64_t>(b & 0x7F)) << shift
        if not (b & 0x80):
            break
        shift += 7
    out[0] = <int64_t>((acc >> 1) ^ (<uint64_t>0 - (acc & 1)))
    return True


cdef inline int64_t _signed_be(const unsigned char* p, Py_ssize_t n):
    """`int.from_bytes(p[:n], "big", signed=True)` for n <= 8, without the slice and the call."""
    if n == 0:
        return 0
    cdef uint64_t acc = <uint64_t>(<int64_t>(<signed char>p[0]))  # the sign, extended
    cdef Py_ssize_t i
    for i in range(1, n):
        acc = (acc << 8) | p[i]
    return <int64_t>acc


cpdef dict read_flat(bytes data, list plan):
    """The record `data` holds, or None where fastavro must decide."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t pos = 0
    cdef int64_t v
    cdef Field f
    cdef int kind
    cdef dict out = {}
    for f in plan:
        kind = f.kind
        if kind == OPT_STRING or kind == OPT_LONG:
            if not _varint(p, n, &pos, &v):
                return None
            if v == 0:
                out[f.name] = None
                continue
            if v != 1:
                return None
            kind = STRING if kind == OPT_STRING else LONG
        if not _varint(p, n, &pos, &v):
            return None
        if kind == LONG:
            out[f.name] = v
        elif kind == STRING:
            if v < 0 or v > n - pos:
                return None
            try:
                out[f.name] = PyUnicode_DecodeUTF8(<const char*>(p + pos), <Py_ssize_t>v, NULL)
            except UnicodeDecodeError:
                return None
            pos += v
        elif kind == ENUM:
            if v < 0 or v >= len(f.symbols):
                return None
            out[f.name] = f.symbols[v]
        elif kind == DECIMAL:
            if v < 0 or v > n - pos:
                return None
            if v <= 8:
                out[f.name] = f.decimal(_signed_be(p + pos, v))
            else:
                unscaled = int.from_bytes(data[pos:pos + v], "big", signed=True)
                out[f.name] = f.context.create_decimal(unscaled).scaleb(-f.scale, f.context)
            pos += v
        else:
            return None
    if pos != n:
        return None
    return out


# -- model construction -------------------------------------------------------------------

cdef tuple _NO_ARGS = ()


cpdef object construct(object model, tuple codes, tuple positive, dict fields):
    """`model` holding `fields` as pydantic's `model_construct` builds it, or None if a code
    is empty or a number below 1 (then pydantic validates and names the field)."""
    cdef str name
    for name in codes:
        if not fields[name]:
            return None
    for name in positive:
        if fields[name] < 1:
            return None
    if not PyType_Check(model):
        raise TypeError(f"not a model class: {model!r}")
    # `model.__new__(model)` without looking it up: the slot that call ends in
    rec = (<PyTypeObject*>model).tp_new(model, <PyObject*>_NO_ARGS, NULL)
    # The generic setters, as object.__setattr__ does: pydantic's own __setattr__ would
    # refuse a frozen model.
    PyObject_GenericSetDict(rec, fields, NULL)
    PyObject_GenericSetAttr(rec, "__pydantic_fields_set__", set(fields))
    PyObject_GenericSetAttr(rec, "__pydantic_extra__", None)
    PyObject_GenericSetAttr(rec, "__pydantic_private__", None)
    return rec


# -- writing ------------------------------------------------------------------------------

cdef inline int _int(Buf* b, object v) except -1:
    """A Python int as a long (a float would convert silently: fastavro decides those)."""
    if not PyLong_Check(v):
        raise TypeError(f"expected an int, got {type(v).__name__}")
    return put_long(b, v)


cdef int _opt_int(Buf* b, object v) except -1:
    if v is None:
        return put_byte(b, 0)
    put_byte(b, 2)
    return _int(b, v)


cdef object _get(dict d, str key):
    try:
        return d[key]
    except KeyError:
        raise KeyError(f"AvailabilityRecord field {key!r} is missing") from None


cdef int _block(Buf* b, dict w) except -1:
    put_str(b, _get(w, "warehouse"))
    _int(b, _get(w, "on_hand"))
    _int(b, _get(w, "on_hold"))
    _int(b, _get(w, "reserved"))
    _int(b, _get(w, "incoming"))
    _int(b, _get(w, "atp"))
    _opt_int(b, _get(w, "erp_book"))
    return _opt_int(b, _get(w, "drift"))


def encode_availability(dict r):
    """Schemaless Avro of an `AvailabilityRecord` (field order as in the .avsc file)."""
    cdef char stack[STACK]
    cdef Buf b
    start(&b, stack)
    cdef object share, flag, location
    cdef list warehouses
    try:
        put_str(&b, _get(r, "channel"))
        put_str(&b, _get(r, "sku"))
        location = _get(r, "location")
        if location is None:
            put_byte(&b, 0)
        else:
            put_byte(&b, 2)
            put_str(&b, location)
        _int(&b, _get(r, "available"))
        _opt_int(&b, _get(r, "previous"))
        _int(&b, _get(r, "version"))
        _int(&b, _get(r, "as_of"))
        put_str(&b, _get(r, "source"))
        put_str(&b, _get(r, "source_id"))
        warehouses = _get(r, "warehouses")
        if warehouses:
            put_long(&b, len(warehouses))
            for w in warehouses:
                _block(&b, w)
        put_byte(&b, 0)  # end of the array
        _int(&b, _get(r, "base"))
        share = _get(r, "share_pct")
        if type(share) is not float:
            raise TypeError("share_pct must be a float")
        reserve(&b, 8)
        PyFloat_Pack8(share, b.data + b.size, 1)
        b.size += 8
        _int(&b, _get(r, "after_share"))
        _int(&b, _get(r, "buffer_units"))
        _int(&b, _get(r, "max_qty"))
        _int(&b, _get(r, "min_qty"))
        flag = _get(r, "include_incoming")
        if flag is True:
            put_byte(&b, 1)
        elif flag is False:
            put_byte(&b, 0)
        else:
            raise TypeError("include_incoming must be a bool")
        return take(&b)
    finally:
        release(&b)
