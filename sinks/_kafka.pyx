# cython: language_level=3, boundscheck=False, wraparound=False
"""The per-record loops of sinks/kafka.py, compiled (built at install by setup.py; optional).

Twins of Python code there, which stays the reference (tests/test_kafka_compiled.py compares
them):

- `records(msgs, ...)`: `_RawPartition._read`'s loop, consumed messages to `RawRecord`s;
- `murmur2(data)`: `kafka.murmur2`, Kafka's partitioner hash;
- `group(outs, parts, route)`: `KafkaOutputSink.group`;
- `write(batches, ...)`: `_OutputPartition.write_batch`'s loop: each output's value encoded
  unless it is bytes already, routed by the murmur2 of its key and queued; with the per-topic
  figures `_written_stats` computes, gathered in the same pass;
- `bucket_counts(bounds, now_ms, stamps)`: `_observe_many`'s histogram bucket counts.

A key is hashed from its UTF-8 in place, and handed to `produce` as the str (confluent-kafka
encodes it to the same UTF-8): no bytes object per record.
"""

from cpython.dict cimport PyDict_GetItem
from cpython.mem cimport PyMem_Calloc, PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject
from libc.stdint cimport uint32_t

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, KafkaError

from operators.records import Output, RawRecord

cdef object _tuple_new = tuple.__new__
cdef int _EOF = KafkaError._PARTITION_EOF
cdef int _NO_TIMESTAMP = TIMESTAMP_NOT_AVAILABLE

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL
    bint PyUnicode_CheckExact(object o)
    bint PyBytes_CheckExact(object o)
    char* PyBytes_AS_STRING(object o)
    Py_ssize_t PyBytes_GET_SIZE(object o)
    object PyUnicode_DecodeUTF8(const char* s, Py_ssize_t size, const char* errors)


def records(msgs, str topic, object partition, list batch, object header_pairs):
    """`_RawPartition._read`'s loop: `RawRecord`s of `msgs` appended to `batch`, up to a
    partition EOF; returns (offset of the last record or None, EOF seen). An error other than
    EOF raises as the reference does; `header_pairs` converts headers (rare: replays)."""
    last = None
    for msg in msgs:
        err = msg.error()
        if err is not None:
            if err.code() == _EOF:
                return last, True
            raise RuntimeError(f"error consuming from Kafka topic `{topic!r}`: {err}")
        last = msg.offset()
        key = msg.key()
        if key is not None and not PyUnicode_CheckExact(key):
            # Keys are UTF-8 by contract; a broken one must still reach the dead-letter path.
            key = PyUnicode_DecodeUTF8(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key), "replace") \
                if PyBytes_CheckExact(key) else key.decode("utf-8", errors="replace")
        ts = msg.timestamp()
        stamp = None if not ts or (<tuple?>ts)[0] == _NO_TIMESTAMP else (<tuple>ts)[1]
        headers = msg.headers()
        batch.append(_tuple_new(RawRecord, (
            topic, partition, last, key, msg.value(), stamp,
            header_pairs(headers) if headers else ())))
    return last, False


cdef inline uint32_t _murmur2(const unsigned char* data, Py_ssize_t length) noexcept:
    """Kafka's murmur2 (the Java client's `Utils.murmur2`), unsigned."""
    cdef uint32_t m = 0x5BD1E995
    cdef uint32_t h = 0x9747B28C ^ <uint32_t>length
    cdef uint32_t k
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t end = length - (length & 3)
    while i < end:
        k = (<uint32_t>data[i] | <uint32_t>data[i + 1] << 8 | <uint32_t>data[i + 2] << 16
             | <uint32_t>data[i + 3] << 24)
        k *= m
        k ^= k >> 24
        k *= m
        h *= m
        h ^= k
        i += 4
    cdef Py_ssize_t rest = length & 3
    if rest == 3:
        h ^= <uint32_t>data[end + 2] << 16
    if rest >= 2:
        h ^= <uint32_t>data[end + 1] << 8
    if rest >= 1:
        h ^= data[end]
        h *= m
    h ^= h >> 13
    h *= m
    h ^= h >> 15
    return h


cdef inline long _route(str key) except -1:
    """The positive murmur2 of `key`'s UTF-8, as `kafka._key_route` gives it."""
    cdef Py_ssize_t n
    cdef const char* p = PyUnicode_AsUTF8AndSize(key, &n)
    return _murmur2(<const unsigned char*>p, n) & 0x7FFFFFFF


def murmur2(bytes data) -> int:
    """`sinks.kafka.murmur2` compiled."""
    return _murmur2(<const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))


def group(list outs, long parts, object route):
    """`KafkaOutputSink.group`: `[(route key, [outputs])]` per sink partition, in order of first
    appearance. `route(key)` is the reference's `(bytes, hash)` for a key that is not a str."""
    cdef dict groups = {}
    cdef PyObject* found
    cdef long part
    for out in outs:
        key = out.key or ""
        part = (_route(key) if PyUnicode_CheckExact(key) else route(key)[1]) % parts
        found = PyDict_GetItem(groups, part)
        if found is NULL:
            groups[part] = (key, [out])
        else:
            ((<tuple>found)[1]).append(out)
    return list(groups.values())


def write(list batches, object produce, object send, dict partitions, object partition_count,
          object on_delivery, dict encoders, object codec):
    """Queue every `Output` of `batches` as `_OutputPartition.write_batch` does; returns
    `_written_stats` of them.

    `produce` is the confluent-kafka producer's, `send` the `CheckedProducer.send` that waits
    for room when the local queue is full, `partitions` its topic -> partition count cache
    (`partition_count(topic)` fills it), `encoders` schema -> encode, made with `codec`.
    """
    cdef dict stats = {}
    cdef PyObject* found
    cdef list entry, stamps, times
    cdef dict newest
    cdef object count_obj
    cdef long partition
    for outs in batches:
        for out in <list?>outs:
            if type(out) is not Output:
                raise TypeError(f"expected an Output, got {type(out).__name__}")
            topic, key, schema, record, input_ts, event_time, source = <tuple>out
            value = record
            if value is not None and not PyBytes_CheckExact(value):
                found = PyDict_GetItem(encoders, schema)
                if found is NULL:
                    encode = codec(schema).encode
                    encoders[schema] = encode
                else:
                    encode = <object>found
                value = encode(value)
            if key is None:
                partition = -1  # librdkafka's partitioner picks
            else:
                found = PyDict_GetItem(partitions, topic)
                count_obj = <object>found if found is not NULL else None
                if not count_obj:
                    count_obj = partition_count(topic)
                partition = _route(key) % <long>count_obj
            try:
                produce(topic, value, key, partition, on_delivery)
            except BufferError:
                send(topic, key, value)  # the queue is full: `send` waits for room

            # the figures, as `_written_stats` computes them
            found = PyDict_GetItem(stats, topic)
            if found is NULL:
                entry = [0, [], [], {}]
                stats[topic] = entry
            else:
                entry = <list>found
            entry[0] += 1
            if input_ts is not None:
                (<list>entry[1]).append(input_ts)
            if event_time is None:
                continue
            (<list>entry[2]).append(event_time)
            if source is None and isinstance(record, dict):
                source = (<dict>record).get("source")
            if not isinstance(source, str):
                continue
            newest = <dict>entry[3]
            found = PyDict_GetItem(newest, source)
            if event_time > (<object>found if found is not NULL else -1):
                newest[source] = event_time
    return stats


def bucket_counts(bounds, double now_ms, list stamps):
    """How many of `(now_ms - ts) / 1000` for `ts` in `stamps` fall in each bucket of upper
    `bounds` (ascending, the last +Inf): the first bound at or above the value, as
    prometheus-client's `Histogram.observe` picks it. `_observe_many`'s counting, in one pass."""
    cdef Py_ssize_t n = len(bounds), i, lo, hi
    cdef double* upper = <double*>PyMem_Malloc(n * sizeof(double))
    cdef list counts = [0] * n
    cdef long* tally = <long*>PyMem_Calloc(n, sizeof(long))
    cdef double value
    if upper == NULL or tally == NULL:
        PyMem_Free(upper)
        PyMem_Free(tally)
        raise MemoryError()
    try:
        for i in range(n):
            upper[i] = bounds[i]
        for ts in stamps:
            value = (now_ms - <double>ts) / 1000
            lo, hi = 0, n  # the first bound >= value
            while lo < hi:
                i = (lo + hi) // 2
                if value <= upper[i]:
                    hi = i
                else:
                    lo = i + 1
            if lo < n:
                tally[lo] += 1
        for i in range(n):
            counts[i] = tally[i]
        return counts
    finally:
        PyMem_Free(upper)
        PyMem_Free(tally)
