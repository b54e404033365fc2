# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled twin of the decode-and-sort step's common case (built at install by setup.py; optional).

`operators.steps.sort_batch` hands each batch to `sort_batch` below, which decodes and sorts
the records of the common case itself: a `RawRecord` with `bytes` for value, of a movement
topic (its schema `WmsInventoryTransaction` or `ErpInventoryDocument`, not the item-master
topic), that the compiled reader decodes (`schemas._avro.read_flat`) and whose fields keep the
model's rules (`schemas._avro.construct`). For those it does what `decode`, `stream_key`,
`code_key` and `shard_of` do, with the payload digest and the shard's CRC-32 in C.

Every other record (a tombstone, another topic, the item master, bytes the compiled reader
leaves to fastavro, a record pydantic must validate, anything of an unexpected type) goes
alone through the Python reference, `sort_batch([raw], ...)`, and its result is merged in
place, so chunks, dead letters and item-master records come out in the same order as the
Python code puts them. tests/test_sort_compiled.py compares both on random batches.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_DECREF, Py_INCREF

from operators._hashes cimport atp_blake2b, atp_crc_init, atp_shard
from schemas._avro cimport construct, read_flat

cdef extern from "Python.h":
    bint PyUnicode_CheckExact(object o)
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL
    PyObject* PyType_GenericAlloc(PyTypeObject* cls, Py_ssize_t n) except NULL
    ctypedef struct PyMemberDescrObject:
        PyMemberDef* d_member

cdef extern from "structmember.h":
    ctypedef struct PyMemberDef:
        int type
        Py_ssize_t offset
        int flags
    enum:
        T_OBJECT_EX
        READONLY

atp_crc_init()

from types import MemberDescriptorType

from operators.decode import _QUICK, Decoded, digest
from operators.records import RawRecord
from schemas import codec

cdef enum:
    DIGEST_LEN = 8  # operators.decode.digest: BLAKE2b-64
if len(digest(b"")) != DIGEST_LEN:
    raise ImportError("operators.decode.digest is no longer BLAKE2b-64: operators/_sort.pyx must follow")

# `Decoded` is a slots dataclass whose __init__ (a Python function) was a tenth of the work
# left per record; a Decoded is built instead as its slots' descriptors would build it, each
# value written at its slot's offset. The checks below fail the import if the layout is not
# that (and with it tests/test_sort_compiled.py; steps.sort_batch then runs Python).
_FIELDS = ("raw", "rec", "digest", "invalid", "stream", "code", "identity")
cdef enum:
    NFIELDS = 7
cdef Py_ssize_t _OFFSETS[NFIELDS]


cdef int _offsets() except -1:
    cdef PyMemberDef* member
    if Decoded.__slots__ != _FIELDS or Decoded.__dictoffset__:
        raise ImportError(f"Decoded's fields are not {_FIELDS}: operators/_sort.pyx must follow")
    for i, name in enumerate(_FIELDS):
        descr = Decoded.__dict__[name]
        if type(descr) is not MemberDescriptorType:
            raise ImportError(f"Decoded.{name} is not a slot")
        member = (<PyMemberDescrObject*><PyObject*>descr).d_member
        if member.type != T_OBJECT_EX or member.flags & READONLY:
            raise ImportError(f"Decoded.{name} is not a writable object slot")
        _OFFSETS[i] = member.offset
    return 0


_offsets()


cdef object _new_decoded(object raw, object rec, bytes digest, str stream, str code):
    """`Decoded(raw, rec, digest, None, stream, code)`."""
    # what object.__new__ does for a Python class: zeroed memory, every slot empty
    cdef PyObject* d = PyType_GenericAlloc(<PyTypeObject*>Decoded, 0)
    _put(d, 0, raw)  # in the order of _FIELDS
    _put(d, 1, rec)
    _put(d, 2, digest)
    _put(d, 3, None)  # invalid
    _put(d, 4, stream)
    _put(d, 5, code)
    _put(d, 6, b"")  # identity, set by the sequencer
    out = <object>d
    Py_DECREF(out)  # the cast took a reference; tp_alloc's own is the one returned
    return out


cdef inline void _put(PyObject* d, int field, object value):
    Py_INCREF(value)
    (<PyObject**>((<char*>d) + _OFFSETS[field]))[0] = <PyObject*>value


cdef class _MovementSchema:
    """What the common case needs of a movement schema: the reader's plan, `quick_model`'s
    rules, and the fields `stream_key` and `code_key` read (by the model's `source`)."""

    cdef list plan
    cdef object model
    cdef tuple codes, positive
    cdef bint erp
    cdef str place, item

    def __init__(self, str name):
        self.plan = codec(name)._plan
        self.model, self.codes, self.positive = _QUICK[name]
        self.erp = self.model.source == "erp"
        self.place, self.item = ("plant", "material") if self.erp else ("facility", "item")


cdef dict _MOVEMENTS = {name: _MovementSchema(name)
                        for name in ("WmsInventoryTransaction", "ErpInventoryDocument")}


def sort_batch(raws, schemas, items_topic, list names, object dead, object reference):
    """`reference(raws, schemas, items_topic)`, the Python `sort_batch`, with the common case
    compiled. `names` are the shard names `shard_of` picks from; `dead` is the empty
    `Letters` chunk to collect dead letters in."""
    if type(schemas) is not dict or not PyUnicode_CheckExact(items_topic):
        return reference(raws, schemas, items_topic)
    # topic -> movement schema, for the topics this batch may hold
    cdef dict movements = {}
    for topic, name in (<dict>schemas).items():
        if PyUnicode_CheckExact(topic) and PyUnicode_CheckExact(name) and name in _MOVEMENTS:
            movements[topic] = _MOVEMENTS[name]
    cdef dict groups = {}
    cdef list items = []
    for raw in raws:
        if _sort_common(raw, movements, <str>items_topic, names, groups):
            continue
        # `reference` on this record alone: `[(shard, [d])]`, `[Letters]`, `[d]` (an
        # item-master record) or `[]` (a topic it drops)
        for x in reference([raw], schemas, items_topic):
            if type(x) is tuple:
                for d in (<tuple>x)[1]:
                    _add(groups, (<tuple>x)[0], d)
            elif isinstance(x, list):
                dead.extend(x)
            else:
                items.append(x)
    out = list(groups.items())
    if dead:
        out.append(dead)
    out.extend(items)
    return out


cdef inline int _add(dict groups, object shard, object d) except -1:
    """`_group`: a chunk per shard, in order of first appearance."""
    cdef PyObject* g = PyDict_GetItem(groups, shard)
    if g is NULL:
        groups[shard] = [d]
    else:
        (<list>g).append(d)
    return 0


cdef bint _sort_common(object raw, dict movements, str items_topic, list names,
                       dict groups) except -1:
    """Decode and sort `raw` if it is the common case (True); else change nothing (False)."""
    if type(raw) is not RawRecord:
        return False
    topic, value = (<tuple>raw)[0], (<tuple>raw)[4]
    if not PyUnicode_CheckExact(topic) or type(value) is not bytes or topic == items_topic:
        return False
    cdef PyObject* found = PyDict_GetItem(movements, topic)
    if found is NULL:
        return False
    cdef _MovementSchema m = <_MovementSchema>found
    cdef dict fields = read_flat(value, m.plan)
    if fields is None:
        return False
    rec = construct(m.model, m.codes, m.positive, fields)
    if rec is None:
        return False
    place, item = fields[m.place], fields[m.item]
    if not (PyUnicode_CheckExact(place) and PyUnicode_CheckExact(item)):
        return False  # the f-strings of something else: left to the Python code

    # operators.normalise.stream_key and code_key
    cdef str stream, code
    if m.erp:
        stream, code = f"erp|{<str>place}|{<str>item}", f"erp|{<str>item}"
    else:
        stream, code = f"wms|{<str>place}|{<str>item}", f"wms|{<str>item}"
    _add(groups, atp_shard(code, names), _new_decoded(raw, rec, _digest(<bytes>value), stream, code))
    return True


cdef bytes _digest(bytes value):
    """`operators.decode.digest(value)`: BLAKE2b-64."""
    cdef bytes out = PyBytes_FromStringAndSize(NULL, DIGEST_LEN)
    atp_blake2b(<const unsigned char*>PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value),
                <unsigned char*>PyBytes_AS_STRING(out), DIGEST_LEN)
    return out


def payload_digest(bytes value not None):
    """The compiled `operators.decode.digest` (for tests)."""
    return _digest(value)


def shard(str key not None, list names not None):
    """The compiled `operators.steps.shard_of` (for tests)."""
    return atp_shard(key, names)


