"""The sink's compiled loops (sinks/_kafka.pyx) equal the Python reference in sinks/kafka.py.

Both take the same random outputs: the same hash per key, the same groups per sink partition,
the same records queued (topic, value, key, partition, in order) and the same per-topic figures
for the metrics. The producer here only records what it is asked to queue: the loops are the
subject; tests/test_kafka_io.py and the live tests write through a real broker, and compare the
compiled source loop and histogram counts with their references there.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.records import Output
from schemas import codec

# Imported, not skipped when missing: a failed build must fail here (setup.sh builds it).
from sinks import _kafka, kafka
from sinks.kafka import CheckedProducer, KafkaOutputSink, _written_stats, murmur2


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=80))
def test_compiled_murmur2_equals_python(data: bytes) -> None:
    assert _kafka.murmur2(data) == murmur2(data)


_keys = st.one_of(st.none(), st.sampled_from(["", "SKU-1", "SKU-2|ATL1", "é-ü-ß", "x" * 70]),
                  st.text(max_size=12))
_outputs = st.lists(st.builds(
    Output,
    topic=st.sampled_from(["t1", "t2", "dead"]),
    key=_keys,
    schema=st.just("DeadLetter"),
    value=st.one_of(st.none(), st.binary(max_size=5), st.builds(
        lambda n, source: {"reason": "INVALID_RECORD", "detail": f"d{n}", "topic": "in",
                           "partition": n, "offset": n, "key": None, "value": None,
                           "source_id": None, "gap": None, **({"source": source} if source else {})},
        st.integers(0, 9), st.sampled_from([None, "wms", "erp"]))),
    input_ts=st.one_of(st.none(), st.integers(0, 10**13)),
    event_time=st.one_of(st.none(), st.integers(-5, 10**13)),
    source=st.one_of(st.none(), st.sampled_from(["wms", "erp", "carrier"])),
), max_size=40)


@settings(max_examples=300, deadline=None)
@given(outs=_outputs, parts=st.integers(1, 7))
def test_compiled_group_equals_python(outs: list[Output], parts: int) -> None:
    sink = KafkaOutputSink({"bootstrap.servers": "127.0.0.1:9"}, parts=parts)
    compiled = sink.group(outs)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kafka, "_kafka", None)
        assert compiled == sink.group(outs)


class _Recorder:
    """Stands in for confluent-kafka's producer: what was queued, the queue full once."""

    def __init__(self, full_at: int | None) -> None:
        self.queued: list[tuple[Any, ...]] = []
        self.full_at = full_at

    def produce(self, topic: str, value: Any = None, key: Any = None, partition: int = -1,
                on_delivery: Any = None, **_: Any) -> None:
        if len(self.queued) == self.full_at:
            self.full_at = None
            raise BufferError("Local: Queue full")
        # confluent-kafka queues a str key as its UTF-8
        self.queued.append((topic, value, key.encode() if isinstance(key, str) else key,
                            partition))

    def poll(self, timeout: float) -> int:
        return 0


@settings(max_examples=300, deadline=None)
@given(batches=st.lists(_outputs, max_size=4), full_at=st.one_of(st.none(), st.integers(0, 30)))
def test_compiled_write_equals_python(batches: list[list[Output]], full_at: int | None) -> None:
    results = []
    for compiled in (True, False):
        producer = CheckedProducer({"bootstrap.servers": "127.0.0.1:9"})
        producer._producer = recorder = _Recorder(full_at)  # type: ignore[assignment]
        producer._partitions.update({"t1": 3, "t2": 1, "dead": 5})
        with pytest.MonkeyPatch.context() as mp:
            if not compiled:
                mp.setattr(kafka, "_kafka", None)
            stats = producer.send_outputs(batches, {})
        results.append((recorder.queued, stats))
    assert results[0] == results[1]
    # and the figures are those of every output written
    assert results[0][1] == _written_stats([o for outs in batches for o in outs])


def test_write_encodes_values_that_are_not_bytes_yet_and_asks_for_unknown_topics() -> None:
    producer = CheckedProducer({"bootstrap.servers": "127.0.0.1:9"})
    producer._producer = recorder = _Recorder(None)  # type: ignore[assignment]
    asked = []

    def partition_count(topic: str) -> int:
        asked.append(topic)
        producer._partitions[topic] = 4
        return 4

    producer.partition_count = partition_count  # type: ignore[method-assign]
    letter = {"reason": "INVALID_RECORD", "detail": "x", "topic": "in", "partition": 0,
              "offset": 1, "key": None, "value": None, "source_id": None, "gap": None}
    stats = producer.send_outputs(
        [[Output("new", "k", "DeadLetter", letter, 5, 9, "wms"),
          Output("new", "k", "DeadLetter", b"as is", None, None, None)]], {})
    assert asked == ["new"]
    assert recorder.queued == [
        ("new", codec("DeadLetter").encode(letter), b"k", (murmur2(b"k") & 0x7FFFFFFF) % 4),
        ("new", b"as is", b"k", (murmur2(b"k") & 0x7FFFFFFF) % 4),
    ]
    assert stats == {"new": [2, [5], [9], {"wms": 9}]}
