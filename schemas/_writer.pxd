# cython: language_level=3
"""Avro's binary primitives into a growable C buffer, shared by the compiled writers
(schemas/_avro.pyx, operators/_project.pyx): inline, so each module compiles its own copy.

A `Buf` starts on the caller's stack (`STACK` bytes: a record needs ~150) and moves to the
heap if it outgrows it; `release` frees the heap copy.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcpy

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL


cdef struct Buf:
    char* data
    Py_ssize_t size
    Py_ssize_t cap
    bint heap


cdef enum:
    STACK = 1024


cdef inline void start(Buf* b, char* stack):
    b.data = stack
    b.size = 0
    b.cap = STACK
    b.heap = False


cdef inline void release(Buf* b):
    if b.heap:
        PyMem_Free(b.data)
        b.heap = False


cdef inline bytes take(Buf* b):
    return PyBytes_FromStringAndSize(b.data, b.size)


cdef inline int reserve(Buf* b, Py_ssize_t more) except -1:
    cdef Py_ssize_t cap
    cdef char* grown
    if b.size + more <= b.cap:
        return 0
    cap = max(b.cap * 2, b.size + more)
    if b.heap:
        grown = <char*>PyMem_Realloc(b.data, cap)
    else:
        grown = <char*>PyMem_Malloc(cap)
        if grown != NULL:
            memcpy(grown, b.data, b.size)
    if grown == NULL:
        raise MemoryError()
    b.data = grown
    b.cap = cap
    b.heap = True
    return 0


cdef inline int put_long(Buf* b, int64_t v) except -1:
    """A zig-zag varint."""
    cdef uint64_t n = (<uint64_t>v << 1) ^ <uint64_t>(v >> 63)
    if b.size + 10 > b.cap:
        reserve(b, 10)
    while n > 0x7F:
        b.data[b.size] = <char>((n & 0x7F) | 0x80)
        b.size += 1
        n >>= 7
    b.data[b.size] = <char>n
    b.size += 1
    return 0


cdef inline int put_byte(Buf* b, char c) except -1:
    if b.size + 1 > b.cap:
        reserve(b, 1)
    b.data[b.size] = c
    b.size += 1
    return 0


cdef inline int put_raw(Buf* b, const char* p, Py_ssize_t n) except -1:
    """Bytes as they are (already encoded)."""
    reserve(b, n)
    memcpy(b.data + b.size, p, n)
    b.size += n
    return 0


cdef inline int put_str(Buf* b, object s) except -1:
    """A string: its UTF-8 length, then the UTF-8 (raises like `str.encode` on surrogates)."""
    cdef Py_ssize_t size
    cdef const char* utf8 = PyUnicode_AsUTF8AndSize(s, &size)
    put_long(b, size)
    return put_raw(b, utf8, size)
