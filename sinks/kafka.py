"""Kafka plumbing: the Bytewax source and sink atpflow runs on, topic creation,
and the small checked producer and to-the-end reader the CLI commands share.

Source. `KafkaRawSource` wraps Bytewax's own `KafkaSource` rather than
re-implementing it: the stock source already does what recovery needs (one
Kafka partition per Bytewax partition, spread over workers, assigned with
`assign()` so no group join, the next offset as resume state, partition EOF
when not tailing, errors raised, the `bytewax_kafka_consumer_lag` metric), and
keeping its partition names (`"<partition>-<topic>"`) and resume state (an int
offset) keeps recovery snapshots readable by `atpflow lag`. The wrapper adds
what it lacks: `RawRecord` items (UTF-8 key, headers, timestamp),
`auto.offset.reset=earliest` (its default would skip to the end when a
resume offset has expired), and a partition listing that never names a
single topic in a metadata request (Tansu auto-creates the topic it is asked
about, without configs).

Sink. `KafkaOutputSink` is our own, on confluent-kafka: the stock `KafkaSink`
ignores `partition`, registers no delivery callback (a failed delivery goes
unreported and the record is lost) and is a `DynamicSink` (any worker writes
any key). Ours is a `FixedPartitionedSink` routed by the record key, so every
record of a key is written by one sink partition, in order, through an
idempotent producer (`acks=all`). `write_batch` queues and goes on; the
partition's snapshot, which Bytewax takes at the end of each epoch before it
commits the epoch, flushes and raises if any delivery failed (a failure heard
of earlier raises at the next batch): a failed write stops the dataflow, and
recovery replays it from the last committed epoch instead of dropping it.

Metrics. The source sets `atpflow_consumer_lag_messages` per partition and
the sink, after each successful flush, counts `atpflow_records_out_total`,
observes the two latency histograms (up to the hand-off to the producer) and
moves `atpflow_event_time_lag_seconds`
(see `_RawPartition` and `_observe_stats` for how, and why cheaply).

Partitioning. Records are explicitly partitioned with murmur2 of the key,
exactly like the Java client's default partitioner (and librdkafka's
`murmur2_random`), so that every client agrees where a key lives. We compute
it ourselves instead of trusting the `partitioner` setting because
librdkafka's default is `consistent_random` (CRC32, which disagrees with Java)
and a `kafka.extra` override could silently change it.
"""

from __future__ import annotations

import logging
import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from itertools import compress, repeat
from operator import attrgetter, eq
from typing import Any

from bytewax import operators as op
from bytewax.connectors.kafka import KafkaSource, KafkaSourceMessage, _KafkaSourcePartition
from bytewax.dataflow import Stream
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from dataflows.config import Config, KafkaConfig
from operators import metrics
from operators.records import Output, RawRecord
from schemas import codec

try:
    from sinks import _kafka  # the compiled per-record loops (setup.py builds them; optional)
except ImportError:
    _kafka = None  # type: ignore[assignment]

_tuple_new = tuple.__new__

__all__ = [
    "BrokerUnavailable",
    "CheckedProducer",
    "DeliveryError",
    "KafkaOutputSink",
    "KafkaRawSource",
    "MissingTopicError",
    "TopicSpec",
    "check_connection",
    "consumer_settings",
    "create_topics",
    "existing_topics",
    "iter_records",
    "kafka_output",
    "key_partition",
    "murmur2",
    "require_topics",
    "replay_marker_topic",
    "to_raw",
    "topic_specs",
]

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
#: Retention of the event topics (inputs, milestones).
EVENT_RETENTION_MS = 7 * DAY_MS
#: Dead letters wait for a human: keep them longer than the inputs.
DEAD_LETTER_RETENTION_MS = 30 * DAY_MS


class BrokerUnavailable(ConnectionError):
    """No broker answered a metadata request in time."""


class MissingTopicError(RuntimeError):
    """A topic we read or write does not exist (we never auto-create)."""


class DeliveryError(RuntimeError):
    """At least one produced record was not acknowledged by the cluster."""


SettingsLike = KafkaConfig | Mapping[str, Any]


def _settings(kafka: SettingsLike) -> dict[str, Any]:
    if isinstance(kafka, KafkaConfig):
        return kafka.client_settings()
    return dict(kafka)


# -- partitioning ------------------------------------------------------------


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (the Java client's `Utils.murmur2`), as an unsigned 32-bit int."""
    m, r = 0x5BD1E995, 24
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    end = length - (length & 3)
    for i in range(0, end, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    rest = length & 3
    if rest == 3:
        h ^= data[end + 2] << 16
    if rest >= 2:
        h ^= data[end + 1] << 8
    if rest >= 1:
        h ^= data[end]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


#: the compiled twin when built (tests/test_kafka_compiled.py compares them)
_murmur2 = _kafka.murmur2 if _kafka is not None else murmur2


@lru_cache(maxsize=65536)
def _key_route(key: str) -> tuple[bytes, int]:
    """A key's bytes and positive murmur2 hash. Keys repeat a lot (one per sku / stream):
    caching skips the pure-Python loop where the compiled one is not built."""
    kbytes = key.encode("utf-8")
    return kbytes, _murmur2(kbytes) & 0x7FFFFFFF


def key_partition(key: bytes, partitions: int) -> int:
    """The partition the Java client (and librdkafka's murmur2_random) picks for `key`."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


# -- admin -------------------------------------------------------------------


def check_connection(kafka: SettingsLike, timeout: float = 10.0) -> AdminClient:
    """An admin client whose broker answered a metadata request, or `BrokerUnavailable`."""
    settings = _settings(kafka)
    address = settings.get("bootstrap.servers", "?")
    # librdkafka would print a 'Connection refused' line per retry: our message says it once.
    admin = AdminClient({**settings, "log_level": 0})
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        msg = (
            f"no Kafka broker answered at {address} within {timeout:g} s "
            f"({exc.args[0].str() if exc.args else exc}); "
            "check kafka.bootstrap_servers or --bootstrap"
        )
        raise BrokerUnavailable(msg) from None
    return admin


def existing_topics(admin: AdminClient, timeout: float = 10.0) -> dict[str, int]:
    """Topic -> partition count, from one metadata request for *all* topics.

    Never ask about one topic by name: Tansu creates a topic it is asked about
    (with no configs, which breaks clients that read them).
    """
    md = admin.list_topics(timeout=timeout)
    return {
        name: len(t.partitions)
        for name, t in md.topics.items()
        if t.error is None and not name.startswith("__")
    }


def require_topics(
    admin: AdminClient, topics: Iterable[str], timeout: float = 10.0
) -> dict[str, int]:
    """Partition counts of `topics`, or `MissingTopicError` naming the missing ones."""
    known = existing_topics(admin, timeout)
    wanted = list(dict.fromkeys(topics))
    missing = [t for t in wanted if t not in known]
    if missing:
        msg = f"topic(s) not found: {', '.join(missing)} (create them: atpflow topics create)"
        raise MissingTopicError(msg)
    return {t: known[t] for t in wanted}


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]


def replay_marker_topic(config: Config) -> str:
    """Compacted topic remembering which dead letters were replayed (see commands_kafka)."""
    return f"{config.topics.dead_letter}.replayed"


def _channel_ids(config: Config, channels: Any) -> list[str]:
    if channels is None:
        channels = config.channels
    if hasattr(channels, "channels"):  # a Channels model
        channels = channels.channels
    return [c if isinstance(c, str) else c.id for c in channels]


def topic_specs(config: Config, channels: Any = None) -> list[TopicSpec]:
    """Every topic atpflow reads or writes, with explicit configs.

    Explicit configs on every topic: Tansu reports none for a topic created
    without them, and clients that read `retention.ms` then crash.
    """
    k, t = config.kafka, config.topics
    base = {}
    if k.replication_factor > 1:
        # With acks=all, a write needs two in-sync copies before it counts.
        base["min.insync.replicas"] = str(min(2, k.replication_factor))

    def delete(ms: int) -> dict[str, str]:
        return {**base, "cleanup.policy": "delete", "retention.ms": str(ms)}

    # Latest value per key is all that matters; retention.ms is set so it is readable.
    compact = {**base, "cleanup.policy": "compact", "retention.ms": "-1"}
    specs = [
        TopicSpec(t.wms_transactions, k.partitions, delete(EVENT_RETENTION_MS)),
        TopicSpec(t.erp_documents, k.partitions, delete(EVENT_RETENTION_MS)),
        # One partition: the item master is small and read whole by every worker's lookups.
        TopicSpec(t.items, 1, dict(compact)),
        TopicSpec(t.fulfillment_events, k.partitions, delete(EVENT_RETENTION_MS)),
        TopicSpec(t.carrier_events, k.partitions, delete(EVENT_RETENTION_MS)),
    ]
    specs += [
        TopicSpec(t.availability(cid), k.partitions, dict(compact))
        for cid in _channel_ids(config, channels)
    ]
    specs += [
        TopicSpec(t.milestones, k.partitions, delete(EVENT_RETENTION_MS)),
        TopicSpec(t.dead_letter, k.partitions, delete(DEAD_LETTER_RETENTION_MS)),
        TopicSpec(replay_marker_topic(config), 1, dict(compact)),
    ]
    return specs


def create_topics(
    config: Config, channels: Any = None, *, timeout: float = 10.0
) -> tuple[list[str], list[str]]:
    """Create every missing topic; returns `(created, existed)`. Safe to run again.

    `channels`: a `Channels` model, channel objects or ids; default the config's.
    Existing topics are left as they are (their configs are not changed).
    """
    admin = check_connection(config.kafka, timeout)
    specs = topic_specs(config, channels)
    known = existing_topics(admin, timeout)
    existed = [s.name for s in specs if s.name in known]
    todo = [s for s in specs if s.name not in known]
    created: list[str] = []
    if todo:
        futures = admin.create_topics(
            [
                NewTopic(s.name, s.partitions, config.kafka.replication_factor, config=s.config)
                for s in todo
            ],
            operation_timeout=timeout,
            request_timeout=timeout,
        )
        for name, fut in futures.items():
            try:
                fut.result()
                created.append(name)
            except KafkaException as exc:
                # Someone else created it between our listing and our request.
                if exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    existed.append(name)
                else:
                    raise
    order = {s.name: i for i, s in enumerate(specs)}
    return sorted(created, key=order.__getitem__), sorted(existed, key=order.__getitem__)


# -- records -----------------------------------------------------------------


def _key_str(key: bytes | str | None) -> str | None:
    if key is None or isinstance(key, str):
        return key
    # Keys are UTF-8 by contract; a broken one must still reach the dead-letter path.
    return key.decode("utf-8", errors="replace")


def _timestamp(ts: tuple[int, int] | None) -> int | None:
    if not ts or ts[0] == TIMESTAMP_NOT_AVAILABLE:
        return None
    return ts[1]


def _header_pairs(raw: Any) -> tuple[tuple[str, bytes], ...]:
    if not raw:
        return ()
    pairs = raw.items() if isinstance(raw, dict) else raw
    return tuple(
        (str(k), v if isinstance(v, bytes) else str(v or "").encode("utf-8")) for k, v in pairs
    )


def to_raw(msg: Message | KafkaSourceMessage[Any, Any]) -> RawRecord:
    """A consumed record (confluent-kafka or Bytewax message) as a `RawRecord`."""
    if isinstance(msg, KafkaSourceMessage):
        return RawRecord(
            topic=msg.topic or "",
            partition=msg.partition,
            offset=msg.offset,
            key=_key_str(msg.key),
            value=msg.value,
            timestamp=_timestamp(msg.timestamp),
            headers=_header_pairs(msg.headers),
        )
    return RawRecord(
        topic=msg.topic() or "",
        partition=msg.partition(),
        offset=msg.offset(),
        key=_key_str(msg.key()),
        value=msg.value(),
        timestamp=_timestamp(msg.timestamp()),
        headers=_header_pairs(msg.headers()),
    )


# -- source ------------------------------------------------------------------


#: Seconds between two updates of a partition's consumer-lag gauge.
LAG_UPDATE_INTERVAL = 0.5


class _RawPartition(StatefulSourcePartition[RawRecord, int | None]):
    """The stock partition, its messages converted to `RawRecord`, exporting its lag.

    `atpflow_consumer_lag_messages{topic,partition}` is the high watermark minus the
    next offset this partition will read, from what the consumer already knows, never
    a request to the broker:

    - the high watermark is `get_watermark_offsets(cached=True)`: the value carried by
      the last fetch response, kept by librdkafka's fetcher thread (which keeps
      fetching while we are idle, so the value follows new records). On Tansu the
      fetch response carries the true end; it is only the ListOffsets answer (an
      uncached `get_watermark_offsets`, what `atpflow lag` has to work around) that
      reports the start of the last batch. On Kafka both agree.
    - the next offset is the stock partition's resume state (`snapshot()`); before the
      first record it is `OFFSET_BEGINNING`, and the next offset is the low watermark.

    Not the statistics callback: Bytewax's partition installs its own `stats_cb` (for
    `bytewax_kafka_consumer_lag`) over any we pass, and the per-partition
    `consumer_lag` there is -1 anyway, since Bytewax never commits offsets.

    The gauge moves at most every `LAG_UPDATE_INTERVAL` seconds (one clock read per
    `next_batch` otherwise), and is clamped at 0. One worker owns a partition, so
    `set()` on its label set is safe.
    """

    def __init__(
        self, inner: StatefulSourcePartition[Any, int | None], topic: str, partition: int,
        metadata_timeout: float = 10.0,
    ) -> None:
        self._inner = inner
        self._metadata_timeout = metadata_timeout
        #: `_fetch_at_once` still to do: at the first batch, once Bytewax has built every
        #: partition and their consumers have connected side by side
        self._cold = True
        # The stock partition's consumer (Bytewax 0.21.1 keeps it as `_consumer`); if a
        # later version renames it, the lag gauge stays unset rather than break reading.
        self._consumer: Consumer | None = getattr(inner, "_consumer", None)
        self._tp = TopicPartition(topic, partition)
        # Created at the first known value: no series rather than a made-up 0.
        self._lag: Any = None
        self._lag_due = 0.0
        #: read the stock partition's consumer ourselves (see `_read`)
        self._direct = isinstance(inner, _KafkaSourcePartition) and self._consumer is not None

    def next_batch(self) -> list[RawRecord]:
        if self._cold:
            self._cold = False
            _fetch_at_once(self._inner, self._tp.topic, self._tp.partition, self._metadata_timeout)
        batch = self._read() if self._direct else [to_raw(m) for m in self._inner.next_batch()]
        now = time.monotonic()
        if now >= self._lag_due:
            self._lag_due = now + LAG_UPDATE_INTERVAL
            self._update_lag()
        return batch

    def _read(self) -> list[RawRecord]:
        """The stock `next_batch` of bytewax 0.21.1 (pinned), building `RawRecord`s directly.

        Same consumer, batch size, offsets (its resume state), partition EOF and errors; it
        skips the `KafkaSourceMessage` the stock one builds per record only for us to convert
        it (~2 us a record). tests/test_kafka_io.py compares both ways on the same records.
        """
        inner: Any = self._inner
        if inner._eof:
            raise StopIteration
        topic, partition = self._tp.topic, self._tp.partition
        batch: list[RawRecord] = []
        msgs = inner._consumer.consume(inner._batch_size, 0.001)
        if _kafka is not None:  # the loop below, compiled
            last, inner._eof = _kafka.records(msgs, topic, partition, batch, _header_pairs)
            if last is not None:
                inner._offset = last + 1
            return batch
        last = None
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    inner._eof = True  # the stock partition ends at the next call
                    break
                msg_text = f"error consuming from Kafka topic `{topic!r}`: {err}"
                raise RuntimeError(msg_text)
            last = msg.offset()
            # tuple.__new__: a RawRecord without its NamedTuple's Python-level __new__
            batch.append(_tuple_new(RawRecord, (
                topic, partition, last, _key_str(msg.key()), msg.value(),
                _timestamp(msg.timestamp()), _header_pairs(msg.headers()),
            )))
        if last is not None:
            inner._offset = last + 1  # resume after it, as the stock partition does
        return batch

    def _update_lag(self) -> None:
        if self._consumer is None:
            return
        try:
            low, high = self._consumer.get_watermark_offsets(self._tp, cached=True)
        except KafkaException:
            return
        if high < 0 or low < 0:  # no fetch response yet (OFFSET_INVALID)
            return
        position = self._inner.snapshot()
        if position is None or position < 0:  # nothing read yet: starts at the beginning
            position = low
        if self._lag is None:
            self._lag = metrics.CONSUMER_LAG.labels(self._tp.topic, str(self._tp.partition))
        self._lag.set(max(0, high - position))

    def next_awake(self) -> datetime | None:
        return self._inner.next_awake()

    def snapshot(self) -> int | None:
        return self._inner.snapshot()

    def close(self) -> None:
        self._inner.close()


class KafkaRawSource(FixedPartitionedSource[RawRecord, int | None]):
    """Every partition of `topics` as `RawRecord`s, offsets kept in Bytewax's recovery.

    `stop_at_eof=False` (live) tails forever; `stop_at_eof=True` ends each
    partition at its end (`enable.partition.eof`), for tests and one-off runs.
    Consumer errors raise (the dataflow stops), never pass silently.
    """

    def __init__(
        self,
        kafka: SettingsLike,
        topics: Sequence[str],
        *,
        stop_at_eof: bool = False,
        batch_size: int = 1000,
        add_config: Mapping[str, Any] | None = None,
        metadata_timeout: float = 10.0,
    ) -> None:
        if isinstance(topics, str) or not topics:
            msg = "topics must be a non-empty list of topic names"
            raise ValueError(msg)
        self.topics = list(topics)
        self.stop_at_eof = stop_at_eof
        self._metadata_timeout = metadata_timeout
        settings = {
            # Tansu answers a fetch only when this expires (or data arrives): keep it short.
            "fetch.wait.max.ms": 100,
            # One consumer per partition, each prefetching up to 100,000 records / 64 MiB by
            # default: on a backlog that held ~400 MiB of input in memory. A few seconds of
            # input per partition is plenty for a job that applies ~10,000 records/s.
            "queued.min.messages": 10_000,
            "queued.max.messages.kbytes": 8192,
            **_settings(kafka),
            **(add_config or {}),
            # Never skip data when a resume offset is out of range.
            "auto.offset.reset": "earliest",
        }
        # Admin requests get the connection settings only (consumer ones would warn).
        self._admin_settings = _settings(kafka)
        self._inner = KafkaSource(
            brokers=str(settings["bootstrap.servers"]).split(","),
            topics=self.topics,
            tail=not stop_at_eof,
            add_config=settings,
            batch_size=batch_size,
            raise_on_errors=True,
        )

    def list_parts(self) -> list[str]:
        admin = AdminClient(self._admin_settings)
        counts = require_topics(admin, self.topics, self._metadata_timeout)
        return [f"{i}-{topic}" for topic in self.topics for i in range(counts[topic])]

    def build_part(
        self, step_id: str, for_part: str, resume_state: int | None
    ) -> _RawPartition:
        idx, topic = for_part.split("-", 1)
        return _RawPartition(self._inner.build_part(step_id, for_part, resume_state), topic,
                             int(idx), self._metadata_timeout)


def _fetch_at_once(inner: Any, topic: str, partition: int, timeout: float) -> None:
    """Make the stock partition's consumer start fetching now rather than in 500 ms.

    The stock partition assigns its partition right after creating the consumer, before
    librdkafka knows the partition's leader; asked for a logical offset (the beginning, on a
    first start), librdkafka then retries the offset query on a fixed 500 ms timer, even
    once the leader is known. With the metadata fetched first, the same assignment again
    queries at once: the first records arrived after 0.06 s instead of 0.5 s here.
    """
    consumer = getattr(inner, "_consumer", None)
    offset = getattr(inner, "_offset", None)
    if not isinstance(consumer, Consumer) or not isinstance(offset, int):
        return  # not the stock partition of bytewax 0.21.1: leave it as it is
    consumer.list_topics(topic, timeout=timeout)
    consumer.assign([TopicPartition(topic, partition, offset)])


# -- checked producer --------------------------------------------------------


class CheckedProducer:
    """An idempotent producer that remembers every failed delivery.

    `flush()` waits for every outstanding record and raises `DeliveryError` if
    any failed (or if the producer hit a fatal error): callers decide when a
    batch counts as written, and nothing fails silently.
    """

    #: Correctness settings, applied last so no config can weaken them.
    REQUIRED = {"enable.idempotence": True, "acks": "all"}

    def __init__(
        self,
        kafka: SettingsLike,
        *,
        add_config: Mapping[str, Any] | None = None,
        metadata_timeout: float = 10.0,
        flush_timeout: float | None = None,
    ) -> None:
        settings = {
            "linger.ms": 5,
            # Used only for null keys (explicit partitions otherwise); Java-compatible.
            "partitioner": "murmur2_random",
            **_settings(kafka),
            **(add_config or {}),
            **self.REQUIRED,
            "error_cb": self._on_error,
        }
        self._metadata_timeout = metadata_timeout
        # None: wait as long as librdkafka's message.timeout.ms lets a record live,
        # after which it reports the record as failed.
        self._flush_timeout = flush_timeout
        self._partitions: dict[str, int] = {}
        self._failures: list[str] = []
        self._failed = 0
        self._fatal: str | None = None
        self._producer = Producer(settings)

    def _on_error(self, err: KafkaError) -> None:
        # Transport errors are retried by librdkafka; a fatal one ends the producer.
        if err.fatal():
            self._fatal = err.str()
        else:
            log.debug("kafka producer: %s", err.str())

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._failed += 1
            if len(self._failures) < 5:
                self._failures.append(
                    f"{msg.topic()}[{msg.partition()}] key={_key_str(msg.key())!r}: {err.str()}"
                )

    def partition_count(self, topic: str) -> int:
        if topic not in self._partitions:
            admin_view = self._producer.list_topics(timeout=self._metadata_timeout)
            for name, meta in admin_view.topics.items():
                if meta.error is None and meta.partitions:
                    self._partitions[name] = len(meta.partitions)
            if topic not in self._partitions:
                msg = f"topic {topic!r} does not exist (create it: atpflow topics create)"
                raise MissingTopicError(msg)
        return self._partitions[topic]

    def send(
        self,
        topic: str,
        key: str | None,
        value: bytes | None,
        *,
        headers: Sequence[tuple[str, bytes]] = (),
        partition: int | None = None,
        timestamp: int | None = None,
        on_delivery: Callable[[KafkaError | None, Message], None] | None = None,
    ) -> None:
        """Queue one record; `partition` defaults to murmur2 of the key."""
        if partition is None:
            kbytes, partition = self._route(topic, key)
        else:
            kbytes = key.encode("utf-8") if key is not None else None
        kwargs: dict[str, Any] = {"key": kbytes, "value": value, "partition": partition}
        if headers:
            kwargs["headers"] = list(headers)
        if timestamp:
            kwargs["timestamp"] = timestamp
        if on_delivery is None:
            kwargs["on_delivery"] = self._on_delivery
        else:
            def both(err: KafkaError | None, msg: Message) -> None:
                self._on_delivery(err, msg)
                on_delivery(err, msg)
            kwargs["on_delivery"] = both
        while True:
            try:
                self._producer.produce(topic, **kwargs)
                return
            except BufferError:
                # The local queue is full: serve delivery reports until there is room.
                self._producer.poll(0.1)

    def _route(self, topic: str, key: str | None) -> tuple[bytes | None, int]:
        """The key's bytes and its murmur2 partition (-1, librdkafka's choice, for no key)."""
        if key is None:
            return None, -1
        kbytes, h = _key_route(key)
        return kbytes, h % (self._partitions.get(topic) or self.partition_count(topic))

    def send_plain(self, topic: str, key: str | None, value: bytes | None) -> None:
        """`send` with no headers, timestamp or callback of its own: the sinks' hot path."""
        kbytes, partition = self._route(topic, key)
        try:
            self._producer.produce(topic, value, kbytes, partition, self._on_delivery)
        except BufferError:
            self.send(topic, key, value)  # the queue is full: `send` waits for room

    def send_outputs(self, batches: list[list[Output]],
                     encoders: dict[str, Callable[[Any], bytes]]) -> Stats:
        """Queue every output of `batches`, its value Avro-encoded with `codec(schema)` (cached
        in `encoders`) unless it is bytes already; returns their `_written_stats`."""
        if _kafka is not None:
            return _kafka.write(batches, self._producer.produce, self.send,  # type: ignore[no-any-return]
                                  self._partitions, self.partition_count, self._on_delivery,
                                  encoders, codec)
        written = []
        for outs in batches:
            for out in outs:
                value = out.value
                if value is not None and value.__class__ is not bytes:
                    encode = encoders.get(out.schema)
                    if encode is None:
                        encode = encoders[out.schema] = codec(out.schema).encode
                    value = encode(value)
                self.send_plain(out.topic, out.key, value)
            written += outs
        return _written_stats(written)

    def flush(self) -> None:
        """Wait for every queued record; `DeliveryError` if any was not delivered."""
        if self._flush_timeout is None:
            left = self._producer.flush()
        else:
            left = self._producer.flush(self._flush_timeout)
        self._raise_problems(left)

    def check(self) -> None:
        """Serve the delivery reports that arrived; `DeliveryError` if any record failed so far.

        Does not wait: a sink that flushes only at checkpoints still stops at the first
        failure it hears of."""
        self._producer.poll(0)
        self._raise_problems(0)

    def _raise_problems(self, left: int) -> None:
        problems = []
        if self._fatal:
            problems.append(f"fatal producer error: {self._fatal}")
        if left:
            problems.append(f"{left} record(s) still unacknowledged after {self._flush_timeout} s")
        if self._failed:
            problems.append(f"{self._failed} record(s) failed: " + "; ".join(self._failures))
        if problems:
            self._failures, self._failed = [], 0
            raise DeliveryError("Kafka delivery failed: " + " | ".join(problems))

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> CheckedProducer:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()


# -- sink ----------------------------------------------------------------------


def _observe_many(histogram: Any, now_ms: float, stamps: list[int]) -> None:
    """`observe((now_ms - ts) / 1000)` for every stamp, in bulk.

    A value goes to the first bucket whose bound is >= it (the last is +Inf), as `observe()`
    does: counted in one pass by the compiled `_kafka.bucket_counts`, else the stamps are
    sorted in C, newest first (smallest value first), and each bucket's count is one bisect
    on the values; either way no Python call per record. prometheus-client has no bulk observe: this
    uses the child's `_upper_bounds`, `_buckets` and `_sum` (stable since 0.4; 0.26 here)
    and falls back to `observe()` per value if those ever change.
    """
    if not stamps:
        return
    try:
        bounds, buckets, total = histogram._upper_bounds, histogram._buckets, histogram._sum
    except AttributeError:
        for ts in stamps:
            histogram.observe((now_ms - ts) / 1000)
        return
    if _kafka is not None:  # the same counts in one pass in C
        for bucket, count in zip(buckets, _kafka.bucket_counts(bounds, now_ms, stamps), strict=True):
            if count:
                bucket.inc(count)
    else:
        ordered = sorted(stamps, reverse=True)

        def value(ts: float) -> float:
            return (now_ms - ts) / 1000

        below = 0
        for bound, bucket in zip(bounds, buckets, strict=True):
            upto = bisect_right(ordered, bound, key=value)
            if upto > below:
                bucket.inc(upto - below)
                below = upto
    n = len(stamps)
    total.inc(n * (now_ms - sum(stamps) / n) / 1000)


_newest_lock = threading.Lock()
#: Newest event time (epoch ms) written per source, shared by every sink partition of
#: the process; `atpflow_event_time_lag_seconds` is computed from it at scrape time.
_newest_event_ms: dict[str, int] = {}


def _event_time_lag(source: str) -> Callable[[], float]:
    def lag() -> float:
        return time.time() - _newest_event_ms[source] / 1000
    return lag


def _note_newest(newest: dict[str, int]) -> None:
    with _newest_lock:
        for source, ms in newest.items():
            known = _newest_event_ms.get(source)
            if known is None:
                _newest_event_ms[source] = ms
                # Evaluated at scrape time: a source that stops keeps ageing on the
                # dashboard, which a value set at write time would hide.
                metrics.EVENT_TIME_LAG.labels(source).set_function(_event_time_lag(source))
            elif ms > known:
                _newest_event_ms[source] = ms


def _source_of(out: Output) -> str | None:
    """The upstream source (wms, erp, ...) whose record caused `out`, when known."""
    source = out.source
    if source is None and isinstance(out.value, dict):
        source = out.value.get("source")  # AvailabilityRecord: wms or erp
    return source if isinstance(source, str) else None


#: per output topic: [records, their input timestamps, their event times, {source: newest
#: event time}], as `_written_stats` (or the compiled `_kafka.write`) gathers them
Stats = dict[str, list[Any]]


def _written_stats(values: list[Output]) -> Stats:
    """The figures `_observe_stats` needs of `values`, a few passes in C per topic (no Python
    call per record)."""
    stats: Stats = {}
    topics = list(map(_topic, values))
    for topic in set(topics):
        outs = list(compress(values, map(eq, topics, repeat(topic))))
        stamps = list(map(_input_ts, outs))
        if None in stamps:  # dead letters carry no input timestamp
            stamps = [ts for ts in stamps if ts is not None]
        times = list(map(_event_time, outs))
        sources = list(map(_source, outs))
        if None in times or None in sources:  # rare: a record with no event time, or whose
            # source is only in its value
            pairs = [(_source_of(out), et) for out, et in zip(outs, times, strict=True)
                     if et is not None]
            times = [et for _, et in pairs]
            sources = [source for source, _ in pairs]
        newest: dict[str, int] = {}
        for source in set(sources):
            if source is None:
                continue
            et = max(compress(times, map(eq, sources, repeat(source))))
            if et > -1:
                newest[source] = et
        stats[topic] = [len(outs), stamps, times, newest]
    return stats


def _observe_stats(stats: Stats, now_ms: float) -> None:
    """Metrics of a batch the cluster acknowledged, handed to the producer at `now_ms`: counts,
    latencies, event-time lag; per topic one counter increment and one bulk histogram
    observation per metric."""
    newest: dict[str, int] = {}
    for topic, (n, stamps, times, latest) in stats.items():
        # Children made when first used: no empty latency series for the dead-letter topic,
        # whose records carry no timestamps.
        metrics.child(metrics.RECORDS_OUT, topic).inc(n)
        if stamps:
            _observe_many(metrics.child(metrics.INPUT_TO_OUTPUT_LATENCY, topic), now_ms, stamps)
        if times:
            _observe_many(metrics.child(metrics.EVENT_TIME_TO_OUTPUT_LATENCY, topic), now_ms,
                          times)
        for source, et in latest.items():
            if et > newest.get(source, -1):
                newest[source] = et
    if newest:
        _note_newest(newest)


_topic = attrgetter("topic")
_input_ts = attrgetter("input_ts")
_event_time = attrgetter("event_time")
_source = attrgetter("source")


class _OutputPartition(StatefulSinkPartition[list[Output], None]):
    def __init__(self, producer: CheckedProducer) -> None:
        self._producer = producer
        self._encoders: dict[str, Callable[[Any], bytes]] = {}
        #: (hand-off time in epoch ms, figures) of the batches queued since the last checkpoint
        self._unconfirmed: list[tuple[float, Stats]] = []

    def write_batch(self, values: list[list[Output]]) -> None:
        stats = self._producer.send_outputs(values, self._encoders)
        # Queued, not yet acknowledged: the producer sends in the background while the
        # dataflow goes on (waiting for the cluster after every batch cost ~5 % of the
        # throughput). A failure heard of already stops the dataflow now.
        self._producer.check()
        self._unconfirmed.append((time.time() * 1000, stats))

    def snapshot(self) -> None:
        # Bytewax takes this snapshot at the end of every epoch, before it commits the epoch
        # to the recovery store: the epoch counts as written only once the cluster has every
        # record of it. A failure raises here, the dataflow stops before the commit, and
        # recovery re-sends from the last committed epoch; consumers ignore repeats by version.
        # Nothing to resume from: outputs after the last snapshot are re-sent.
        self._confirm()

    def close(self) -> None:
        self._confirm()

    def _confirm(self) -> None:
        """Wait for every queued record (`DeliveryError` if one failed), then count them."""
        self._producer.flush()
        # Counted once acknowledged; latencies up to the hand-off, not the checkpoint.
        for handed_ms, stats in self._unconfirmed:
            _observe_stats(stats, handed_ms)
        self._unconfirmed.clear()


class KafkaOutputSink(FixedPartitionedSink[list[Output], None]):
    """Writes `Output`s: Avro-encoded, keyed, murmur2-partitioned, delivery-checked.

    Items are `(route_key, [Output])` as `group()` makes them, one per sink partition
    that a batch of outputs goes to: all records of a key go to one sink partition
    (one worker, one producer) and stay in order. `kafka_output()` writes a stream
    of single `Output`s. `parts` sink partitions spread the writing over workers
    (default: `kafka.partitions`); each owns one producer and flushes at each checkpoint (epoch).
    """

    def __init__(
        self,
        kafka: SettingsLike,
        *,
        parts: int | None = None,
        add_config: Mapping[str, Any] | None = None,
        metadata_timeout: float = 10.0,
        flush_timeout: float | None = None,
    ) -> None:
        if parts is None:
            parts = kafka.partitions if isinstance(kafka, KafkaConfig) else 1
        if parts < 1:
            msg = "parts must be at least 1"
            raise ValueError(msg)
        self._settings = _settings(kafka)
        self._parts = parts
        self._add_config = dict(add_config or {})
        self._metadata_timeout = metadata_timeout
        self._flush_timeout = flush_timeout
        self._spare: list[CheckedProducer] = []

    def _new_producer(self) -> CheckedProducer:
        # Failures only: `flush()` still waits for every record, and a success report would
        # cost a Message object and a Python call per output for nothing.
        add_config = {**self._add_config, "delivery.report.only.error": True}
        return CheckedProducer(self._settings, add_config=add_config,
                               metadata_timeout=self._metadata_timeout,
                               flush_timeout=self._flush_timeout)

    def list_parts(self) -> list[str]:
        # Zero-padded so that the sorted order is the numeric order.
        parts = [f"kafka-out-{i:04d}" for i in range(self._parts)]
        # Called at start-up, while parts are built on their first item: a producer made
        # only then waits ~0.5 s for its idempotent producer id on its first flush, a stall
        # right after the first outputs. Made now, they have their ids by then.
        if not self._spare:
            self._spare = [self._new_producer() for _ in parts]
        return parts

    def part_fn(self, item_key: str) -> int:
        # Stable across processes and runs (unlike hash()); non-negative.
        return _key_route(item_key)[1]

    def group(self, outs: list[Output]) -> list[tuple[str, list[Output]]]:
        """`outs` as one `(route key, outputs)` item per sink partition their keys go to.

        Bytewax sends an item to partition `part_fn(route key) % parts`; each group's route
        key is one of its own records' keys, so every record lands where its key routes.
        """
        parts = self._parts
        if _kafka is not None:
            return _kafka.group(outs, parts, _key_route)  # type: ignore[no-any-return]
        groups: dict[int, tuple[str, list[Output]]] = {}
        for out in outs:
            key = out.key or ""
            part = _key_route(key)[1] % parts
            group = groups.get(part)
            if group is None:
                groups[part] = (key, [out])
            else:
                group[1].append(out)
        return list(groups.values())

    def build_part(
        self, step_id: str, for_part: str, resume_state: None
    ) -> _OutputPartition:
        return _OutputPartition(self._spare.pop() if self._spare else self._new_producer())


def kafka_output(step_id: str, up: Stream[Output], sink: KafkaOutputSink) -> None:
    """Write a stream of `Output`s with `sink`, routed by key.

    Order per key holds when `up` emits each key's records from one worker in
    order (true downstream of a stateful step keyed by the same key): Bytewax
    keeps the order between one pair of workers.
    """
    op.output(step_id, op.flat_map_batch(f"{step_id}_route", up, sink.group), sink)


# -- reading to the end --------------------------------------------------------


def consumer_settings(kafka: SettingsLike, **extra: Any) -> dict[str, Any]:
    """Settings for an `assign()` consumer that reads to the end of each partition."""
    return {
        **_settings(kafka),
        "group.id": "atpflow-cli",  # required by librdkafka; never joined (assign only)
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": 100,
        **extra,
    }


def iter_records(
    kafka: SettingsLike,
    topics: Sequence[str],
    *,
    from_beginning: bool = True,
    follow: bool = False,
    start: Mapping[tuple[str, int], int] | None = None,
    timeout: float = 10.0,
    poll_interval: float = 0.2,
) -> Generator[RawRecord, None, None]:
    """Records of every partition of `topics`, until each partition's end.

    The end is the partition-EOF event, not the high watermark (Tansu reports
    the start of its last batch as the watermark). `follow=True` keeps reading
    until the caller stops iterating. `start` overrides the start offset of
    some (topic, partition)s.
    """
    settings = consumer_settings(kafka)
    counts = require_topics(AdminClient(_settings(kafka)), topics, timeout)
    first = OFFSET_BEGINNING if from_beginning else OFFSET_END
    tps = [
        TopicPartition(t, p, (start or {}).get((t, p), first))
        for t in counts
        for p in range(counts[t])
    ]
    consumer = Consumer(settings)
    try:
        # Leaders known before assign(): otherwise librdkafka waits a fixed 500 ms
        # before its first offset query (the whole cost of a small read).
        consumer.list_topics(timeout=timeout)
        consumer.assign(tps)
        pending = {(tp.topic, tp.partition) for tp in tps}
        while follow or pending:
            msg = consumer.poll(poll_interval)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    pending.discard((msg.topic(), msg.partition()))
                    continue
                raise KafkaException(err)
            yield to_raw(msg)
    finally:
        consumer.close()
