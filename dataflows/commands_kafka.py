"""The Kafka-facing `atpflow` commands: topics, publish, record, dead-letters, lag.

`dataflows.cli` calls `register(subparsers, parents=[common])`. Every handler
takes the parsed args and returns an exit code: 0 done, 1 failed (a delivery,
a missing topic, a bad fixture line), 2 cannot start (bad config, no broker
answering within `--connect-timeout`, default 10 s).
"""

from __future__ import annotations

import argparse
import base64
import functools
import io
import json
import pickle
import re
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import NewTopic

from dataflows.config import Config, ConfigError, load_config
from dataflows.fixtures import FixtureError, read_fixture, record_line, topic_schemas, write_line
from operators.records import REPLAYED_HEADER, RawRecord
from schemas import DecodeError, codec
from sinks.kafka import (
    BrokerUnavailable,
    CheckedProducer,
    DeliveryError,
    MissingTopicError,
    TopicSpec,
    check_connection,
    consumer_settings,
    create_topics,
    existing_topics,
    iter_records,
    replay_marker_topic,
    require_topics,
    topic_specs,
)

__all__ = [
    "DeadLetterEntry",
    "LagRow",
    "check_brokers",
    "compute_lag",
    "end_offsets",
    "flow_input_topics",
    "flow_recovery_dirs",
    "stored_steps",
    "group_positions",
    "main",
    "parse_since",
    "read_dead_letters",
    "recovery_positions",
    "register",
    "replay_dead_letters",
    "replayed_markers",
]

Handler = Callable[[argparse.Namespace], int]
CONNECT_TIMEOUT = 10.0


def check_brokers(config: Config, timeout: float = CONNECT_TIMEOUT) -> None:
    """Raise `BrokerUnavailable` (naming the address) unless a broker answers in time."""
    check_connection(config.kafka, timeout)


# -- shared plumbing -----------------------------------------------------------


def _err(args: argparse.Namespace, message: str) -> None:
    print(f"atpflow {args.kafka_command}: {message}", file=sys.stderr)


def _load(args: argparse.Namespace) -> Config:
    overrides = {"kafka.bootstrap_servers": args.bootstrap} if args.bootstrap else None
    return load_config(getattr(args, "config", None), overrides=overrides)


#: Errors that end a started command with exit code 1 and a one-line message.
_FAILURES = (MissingTopicError, DeliveryError, FixtureError, KafkaException, OSError)


def _command(fn: Callable[[argparse.Namespace, Config], int]) -> Handler:
    """Config, broker check and the exit-code policy around one command."""

    @functools.wraps(fn)
    def run(args: argparse.Namespace) -> int:
        try:
            config = _load(args)
        except ConfigError as exc:
            _err(args, str(exc))
            return 2
        try:
            check_brokers(config, args.connect_timeout)
            return fn(args, config)
        except BrokerUnavailable as exc:
            _err(args, str(exc))
            return 2
        except _FAILURES as exc:
            _err(args, str(exc))
            return 1
        except KeyboardInterrupt:
            _err(args, "interrupted")
            return 130

    return run


def _print_json(data: Any, out: IO[str] | None = None) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False), file=out or sys.stdout)


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [[str(h) for h in header]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for r in cells:
        # Numbers right-aligned, text left-aligned.
        padded = (c.rjust(w) if c.isdigit() else c.ljust(w) for c, w in zip(r, widths, strict=True))
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def _iso(ms: int | None) -> str:
    if ms is None:
        return "-"
    when = datetime.fromtimestamp(ms / 1000, UTC)
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


_AGO = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_since(text: str, now_ms: int | None = None) -> int:
    """`--since`: an ISO time (UTC if no zone), epoch milliseconds, or an age like 2h / 30m / 1d."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    m = _AGO.fullmatch(text)
    if m:
        return now_ms - int(float(m.group(1)) * _UNIT_MS[m.group(2)])
    if text.strip().isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        msg = f"{text!r} is not a time (use 2026-01-31T12:00:00Z, epoch ms, or an age like 2h)"
        raise argparse.ArgumentTypeError(msg) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


# -- topics create ---------------------------------------------------------------


def _cmd_topics_create(args: argparse.Namespace, config: Config) -> int:
    created, existed = create_topics(config, timeout=args.connect_timeout)
    specs = {s.name: s for s in topic_specs(config)}

    def describe(spec: TopicSpec) -> str:
        return f"{spec.partitions} partition(s), {spec.config['cleanup.policy']}"

    for name in created:
        print(f"created   {name}  ({describe(specs[name])})")
    for name in existed:
        print(f"existed   {name}")
    print(f"{len(created)} created, {len(existed)} already existed "
          f"on {config.kafka.bootstrap_servers}")
    return 0


# -- publish -------------------------------------------------------------------


def _cmd_publish(args: argparse.Namespace, config: Config) -> int:
    missing = [f for f in args.fixtures if not Path(f).exists()]
    if missing:
        _err(args, f"fixture not found: {', '.join(missing)}")
        return 2
    schemas = topic_schemas(config)
    # A first pass validates every line, so that a bad line sends nothing.
    topics = Counter(r.topic for r in read_fixture(args.fixtures, schemas))
    admin = check_connection(config.kafka, args.connect_timeout)
    require_topics(admin, topics, args.connect_timeout)
    with CheckedProducer(config.kafka) as producer:
        for raw in read_fixture(args.fixtures, schemas):
            producer.send(
                raw.topic, raw.key, raw.value, headers=raw.headers,
                # Recorded timestamps are off by default: on a real cluster, old
                # timestamps make the records eligible for deletion by retention.
                timestamp=raw.timestamp if args.keep_timestamps else None,
            )
    total = sum(topics.values())
    print(f"published {total} record(s) to {config.kafka.bootstrap_servers}")
    for topic, n in sorted(topics.items()):
        print(f"  {topic}: {n}")
    return 0


# -- record --------------------------------------------------------------------


@contextmanager
def _open_out(path: str) -> Iterator[IO[str]]:
    if path == "-":
        yield sys.stdout
        return
    with open(path, "w", encoding="utf-8") as fh:
        yield fh


def _cmd_record(args: argparse.Namespace, config: Config) -> int:
    schemas = topic_schemas(config)
    counts: Counter[str] = Counter()
    summary = sys.stderr if args.out == "-" else sys.stdout
    with _open_out(args.out) as fh:
        records = iter_records(
            config.kafka, args.topic, from_beginning=args.from_beginning, follow=args.follow,
            timeout=args.connect_timeout,
        )
        try:
            for raw in records:
                write_line(fh, record_line(raw, schemas.get(raw.topic)))
                counts[raw.topic] += 1
                if args.max is not None and sum(counts.values()) >= args.max:
                    break
        except KeyboardInterrupt:
            pass  # --follow ends with Ctrl-C: keep what was written
        finally:
            records.close()
    print(f"recorded {sum(counts.values())} record(s) to {args.out}", file=summary)
    for topic in args.topic:
        print(f"  {topic}: {counts[topic]}", file=summary)
    return 0


# -- dead letters --------------------------------------------------------------


@dataclass(slots=True)
class DeadLetterEntry:
    """One record of the dead-letter topic, decoded."""

    topic: str
    partition: int
    offset: int
    timestamp: int | None
    letter: dict[str, Any]
    replayed: bool = False

    @property
    def coords(self) -> str:
        """Where the dead letter itself is: the replayed header's value."""
        return f"{self.topic}/{self.partition}/{self.offset}"

    @property
    def identity(self) -> str:
        """The original record's coordinates: the same input dead-lettered twice
        (at-least-once recovery repeats outputs) is still one record to replay."""
        lt = self.letter
        if lt.get("partition") is None or lt.get("offset") is None:
            return f"dead-letter:{self.coords}"
        return f"{lt['topic']}/{lt['partition']}/{lt['offset']}"

    @property
    def reason(self) -> str:
        return str(self.letter.get("reason"))

    @property
    def source_topic(self) -> str:
        return str(self.letter.get("topic"))

    def as_json(self) -> dict[str, Any]:
        lt = self.letter
        value = lt.get("value")
        return {
            "dead_letter": self.coords,
            "timestamp": self.timestamp,
            "time": _iso(self.timestamp),
            "reason": lt.get("reason"),
            "detail": lt.get("detail"),
            "topic": lt.get("topic"),
            "partition": lt.get("partition"),
            "offset": lt.get("offset"),
            "key": lt.get("key"),
            "source_id": lt.get("source_id"),
            "gap": lt.get("gap"),
            "value_b64": base64.b64encode(value).decode() if value is not None else None,
            "replayed": self.replayed,
        }


def _undecodable_letter(raw: RawRecord, exc: Exception) -> dict[str, Any]:
    # A dead letter we cannot read is itself worth showing, never skipping.
    return {"reason": "(undecodable dead letter)", "detail": str(exc), "topic": "?",
            "partition": None, "offset": None, "key": raw.key, "value": None,
            "source_id": None, "gap": None}


def replayed_markers(config: Config, timeout: float = CONNECT_TIMEOUT) -> dict[str, dict[str, Any]]:
    """Identity -> marker of every dead letter already replayed (empty if no marker topic)."""
    topic = replay_marker_topic(config)
    admin = check_connection(config.kafka, timeout)
    if topic not in existing_topics(admin, timeout):
        return {}
    markers: dict[str, dict[str, Any]] = {}
    for raw in iter_records(config.kafka, [topic], timeout=timeout):
        if raw.key is None:
            continue
        markers[raw.key] = json.loads(raw.value) if raw.value else {}
    return markers


def read_dead_letters(
    config: Config,
    *,
    reasons: Iterable[str] = (),
    since_ms: int | None = None,
    timeout: float = CONNECT_TIMEOUT,
) -> tuple[list[DeadLetterEntry], int]:
    """The dead letters matching the filters, oldest first, and the topic's total."""
    wanted = set(reasons)
    dl = codec("DeadLetter")
    markers = replayed_markers(config, timeout)
    out: list[DeadLetterEntry] = []
    total = 0
    for raw in iter_records(config.kafka, [config.topics.dead_letter], timeout=timeout):
        total += 1
        try:
            letter = dl.decode(raw.value or b"")
        except DecodeError as exc:
            letter = _undecodable_letter(raw, exc)
        entry = DeadLetterEntry(
            raw.topic, raw.partition or 0, raw.offset or 0, raw.timestamp, letter
        )
        if wanted and entry.reason not in wanted:
            continue
        if since_ms is not None and entry.timestamp is not None and entry.timestamp < since_ms:
            continue
        entry.replayed = entry.identity in markers
        out.append(entry)
    out.sort(key=lambda e: (e.timestamp or 0, e.partition, e.offset))
    return out, total


def _dl_filters(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "reasons": args.reason or (),
        "since_ms": args.since,
        "timeout": args.connect_timeout,
    }


def _cmd_dl_list(args: argparse.Namespace, config: Config) -> int:
    entries, total = read_dead_letters(config, **_dl_filters(args))
    groups: Counter[tuple[str, str]] = Counter((e.reason, e.source_topic) for e in entries)
    replayed: Counter[tuple[str, str]] = Counter(
        (e.reason, e.source_topic) for e in entries if e.replayed
    )
    newest = entries[-args.limit:] if args.limit > 0 else []
    newest.reverse()
    if args.json:
        _print_json({
            "topic": config.topics.dead_letter,
            "total": total,
            "matching": len(entries),
            "by_reason": dict(Counter(e.reason for e in entries)),
            "by_topic": dict(Counter(e.source_topic for e in entries)),
            "counts": [
                {"reason": r, "topic": t, "count": n, "replayed": replayed[(r, t)]}
                for (r, t), n in sorted(groups.items())
            ],
            "newest": [e.as_json() for e in newest],
        })
        return 0
    print(f"{config.topics.dead_letter}: {total} dead letter(s), {len(entries)} matching")
    if groups:
        rows = [(r, t, n, replayed[(r, t)]) for (r, t), n in sorted(groups.items())]
        print(_table(rows, ("reason", "source topic", "count", "replayed")))
    if newest:
        print(f"\nnewest {len(newest)}:")
        for e in newest:
            lt = e.letter
            where = f"{lt.get('topic')}[{lt.get('partition')}]@{lt.get('offset')}"
            flag = "  (replayed)" if e.replayed else ""
            print(f"{_iso(e.timestamp)}  {e.reason}  {where}  key={lt.get('key')!r}"
                  f"  id={lt.get('source_id')}  at {e.coords}{flag}")
            print(f"    {lt.get('detail')}")
    return 0


@dataclass(slots=True)
class _ReplayResult:
    replayed: Counter[str] = field(default_factory=Counter)
    already: int = 0
    not_replayable: Counter[str] = field(default_factory=Counter)


def _ensure_marker_topic(config: Config, timeout: float) -> None:
    topic = replay_marker_topic(config)
    admin = check_connection(config.kafka, timeout)
    if topic in existing_topics(admin, timeout):
        return
    spec = next(s for s in topic_specs(config) if s.name == topic)
    futures = admin.create_topics(
        [NewTopic(spec.name, spec.partitions, config.kafka.replication_factor, config=spec.config)]
    )
    for fut in futures.values():
        try:
            fut.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


def _collect(
    into: list[tuple[DeadLetterEntry, Message]], entry: DeadLetterEntry
) -> Callable[[KafkaError | None, Message], None]:
    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is None:
            into.append((entry, msg))
    return on_delivery


def replay_dead_letters(
    config: Config,
    entries: Sequence[DeadLetterEntry],
    *,
    dry_run: bool = False,
    timeout: float = CONNECT_TIMEOUT,
) -> _ReplayResult:
    """Send each chosen dead letter's original record back, at most once.

    Memory of what was replayed lives in a compacted topic next to the dead
    letters (`<dead-letter topic>.replayed`, key = the original record's
    coordinates): it survives restarts, is shared by everyone who can reach
    the cluster (a local file is not), never expires (the inputs' retention
    would forget replayed copies), and is read in one small pass instead of
    scanning every input topic for the replayed header. Markers are written
    after the replayed records are acknowledged; a crash in between can send
    a record twice, which the dataflow absorbs (it applies a replayed record
    at most once).
    """
    inputs = set(config.topics.input_schemas)
    result = _ReplayResult()
    todo: list[DeadLetterEntry] = []
    seen: set[str] = set()
    for e in entries:
        lt = e.letter
        if lt.get("value") is None or lt.get("topic") not in inputs:
            # Sequence-gap alerts carry no record; non-input topics are not ours to feed.
            result.not_replayable[e.reason] += 1
        elif e.replayed or e.identity in seen:
            result.already += 1
        else:
            seen.add(e.identity)
            todo.append(e)
    if dry_run or not todo:
        for e in todo:
            result.replayed[e.source_topic] += 1
        return result
    _ensure_marker_topic(config, timeout)
    delivered: list[tuple[DeadLetterEntry, Message]] = []
    producer = CheckedProducer(config.kafka)
    try:
        for e in todo:
            lt = e.letter
            topic = lt["topic"]
            part = lt.get("partition")
            if part is None or not 0 <= part < producer.partition_count(topic):
                part = None  # the original partition is gone: murmur2 of the key
            producer.send(
                topic, lt.get("key"), lt["value"],
                headers=[(REPLAYED_HEADER, e.coords.encode("utf-8"))],
                partition=part,
                on_delivery=_collect(delivered, e),
            )
        producer.flush()
    finally:
        # Mark what did arrive, even when something else failed.
        if delivered:
            marker_topic = replay_marker_topic(config)
            now = int(time.time() * 1000)
            for e, msg in delivered:
                marker = {"dead_letter": e.coords, "reason": e.reason, "replayed_at": now,
                          "topic": msg.topic(), "partition": msg.partition(),
                          "offset": msg.offset()}
                producer.send(marker_topic, e.identity, json.dumps(marker).encode("utf-8"))
                result.replayed[e.source_topic] += 1
            producer.flush()
    return result


def _cmd_dl_replay(args: argparse.Namespace, config: Config) -> int:
    entries, _total = read_dead_letters(config, **_dl_filters(args))
    result = replay_dead_letters(config, entries, dry_run=args.dry_run,
                                 timeout=args.connect_timeout)
    verb = "would replay" if args.dry_run else "replayed"
    if args.json:
        _print_json({
            "dry_run": args.dry_run,
            "matching": len(entries),
            "replayed": sum(result.replayed.values()),
            "by_topic": dict(result.replayed),
            "already_replayed": result.already,
            "not_replayable": dict(result.not_replayable),
        })
        return 0
    print(f"{verb} {sum(result.replayed.values())} of {len(entries)} matching dead letter(s); "
          f"{result.already} already replayed, "
          f"{sum(result.not_replayable.values())} not replayable")
    for topic, n in sorted(result.replayed.items()):
        print(f"  {topic}: {n}")
    for reason, n in sorted(result.not_replayable.items()):
        print(f"  not replayable ({reason}, no original record or not an input topic): {n}")
    return 0


# -- lag -------------------------------------------------------------------------


class _IntsOnly(pickle.Unpickler):
    """Bytewax pickles the Kafka resume state (an int): refuse anything with globals."""

    def find_class(self, module: str, name: str) -> Any:
        msg = f"unexpected object {module}.{name} in a recovery snapshot"
        raise pickle.UnpicklingError(msg)


def _load_offset(blob: bytes | None) -> int | None:
    if blob is None:
        return None
    try:
        value = _IntsOnly(io.BytesIO(blob)).load()
    except Exception:  # noqa: BLE001 - not a Kafka source's snapshot
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


_STATE_KEY = re.compile(r"(\d+)-(.+)")


def recovery_positions(
    recovery_dir: str | Path, topics: Iterable[str]
) -> dict[tuple[str, int], int]:
    """Next offset per (topic, partition) from the newest snapshots of a recovery dir.

    Bytewax's Kafka source stores its next offset under the state key
    `<partition>-<topic>`; where several input steps read a topic, the
    lowest position (the most lag) wins. Negative offsets (not started) are
    left out.
    """
    wanted = set(topics)
    newest: dict[tuple[str, str], tuple[int, bytes | None]] = {}
    files = sorted(Path(recovery_dir).glob("part-*.sqlite3"))
    if not files:
        msg = f"no recovery partitions (part-*.sqlite3) in {recovery_dir}"
        raise FileNotFoundError(msg)
    for path in files:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = con.execute("SELECT step_id, state_key, snap_epoch, ser_change FROM snaps")
            for step, key, epoch, blob in rows:
                m = _STATE_KEY.fullmatch(key)
                if not m or m.group(2) not in wanted:
                    continue
                if (step, key) not in newest or newest[(step, key)][0] < epoch:
                    newest[(step, key)] = (epoch, blob)
        finally:
            con.close()
    out: dict[tuple[str, int], int] = {}
    for (_step, key), (_epoch, blob) in newest.items():
        offset = _load_offset(blob)
        m = _STATE_KEY.fullmatch(key)
        if offset is None or offset < 0 or m is None:
            continue
        tp = (m.group(2), int(m.group(1)))
        out[tp] = min(out.get(tp, offset), offset)
    return out


def stored_steps(recovery_dir: str | Path) -> set[str]:
    """The ids of the steps whose state a recovery store holds."""
    steps: set[str] = set()
    for path in sorted(Path(recovery_dir).glob("part-*.sqlite3")):
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            steps.update(row[0] for row in con.execute("SELECT DISTINCT step_id FROM snaps"))
        finally:
            con.close()
    return steps


def group_positions(config: Config, group: str, topics: Iterable[str],
                    timeout: float = CONNECT_TIMEOUT) -> dict[tuple[str, int], int]:
    """Committed offsets of a Kafka consumer group (for readers other than Bytewax)."""
    admin = check_connection(config.kafka, timeout)
    counts = require_topics(admin, topics, timeout)
    consumer = Consumer(consumer_settings(config.kafka, **{"group.id": group}))
    try:
        tps = [TopicPartition(t, p) for t, n in counts.items() for p in range(n)]
        committed = consumer.committed(tps, timeout=timeout)
    finally:
        consumer.close()
    return {(tp.topic, tp.partition): tp.offset for tp in committed if tp.offset >= 0}


def end_offsets(config: Config, topics: Iterable[str],
                timeout: float = CONNECT_TIMEOUT) -> dict[tuple[str, int], tuple[int, int]]:
    """(low, end) per partition; end is the true end even on Tansu.

    Tansu reports the start of its last batch as the high watermark: reading
    from there to partition EOF (one batch per partition) finds the real end.
    On Kafka the read meets EOF at once.
    """
    admin = check_connection(config.kafka, timeout)
    counts = require_topics(admin, topics, timeout)
    settings = consumer_settings(config.kafka)
    consumer = Consumer(settings)
    marks: dict[tuple[str, int], tuple[int, int]] = {}
    try:
        for t, n in counts.items():
            for p in range(n):
                low, high = consumer.get_watermark_offsets(TopicPartition(t, p), timeout=timeout)
                marks[(t, p)] = (low, high)
    finally:
        consumer.close()
    start = {tp: high for tp, (_low, high) in marks.items()}
    last: dict[tuple[str, int], int] = {}
    for raw in iter_records(config.kafka, list(counts), start=start, timeout=timeout):
        assert raw.partition is not None and raw.offset is not None
        last[(raw.topic, raw.partition)] = raw.offset
    return {
        tp: (low, max(high, last.get(tp, -1) + 1)) for tp, (low, high) in marks.items()
    }


@dataclass(frozen=True, slots=True)
class LagRow:
    topic: str
    partition: int
    end: int
    position: int | None
    lag: int
    #: The dataflow whose position this is (None: positions not tied to one flow).
    flow: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"flow": self.flow, "topic": self.topic, "partition": self.partition,
                "end": self.end, "position": self.position, "lag": self.lag}


def compute_lag(
    config: Config,
    topics: Sequence[str],
    *,
    recovery_dir: str | Path | None = None,
    group: str | None = None,
    timeout: float = CONNECT_TIMEOUT,
    flow: str | None = None,
) -> tuple[list[LagRow], str]:
    """Lag per partition and a description of where positions came from.

    Without positions (no recovery dir, no group), lag is everything in the
    partition (end minus its first offset).
    """
    ends = end_offsets(config, topics, timeout)
    positions: dict[tuple[str, int], int] = {}
    if group:
        positions = group_positions(config, group, topics, timeout)
        source = f"committed offsets of consumer group {group}"
    elif recovery_dir:
        positions = recovery_positions(recovery_dir, topics)
        source = f"recovery snapshots in {recovery_dir}"
    else:
        source = "none (no recovery dir or group): end offsets only"
    rows = []
    for (t, p), (low, end) in sorted(ends.items()):
        pos = positions.get((t, p))
        rows.append(LagRow(t, p, end, pos, max(0, end - (low if pos is None else pos)), flow))
    return rows, source


#: The live dataflows, as `atpflow run --flow` names them.
LAG_FLOWS = ("availability", "milestones")


def flow_input_topics(config: Config, flow: str) -> list[str]:
    """The topics a live dataflow reads."""
    if flow == "availability":
        from dataflows.availability import input_topics
    else:
        from dataflows.milestones import input_topics
    return input_topics(config)


def _has_parts(path: Path) -> bool:
    return path.is_dir() and any(path.glob("part-*.sqlite3"))


def flow_recovery_dirs(root: str | Path, flow: str = "all") -> list[tuple[str | None, Path]]:
    """Where each flow's recovery partitions are under `root`.

    `atpflow run` gives every flow its own store, `<recovery.dir>/<flow>`; a
    directory that holds `part-*.sqlite3` itself is one store (flow unknown).
    Raises `FileNotFoundError` when nothing is found.
    """
    root = Path(root)
    if _has_parts(root):
        return [(None, root)]
    flows = LAG_FLOWS if flow == "all" else (flow,)
    found: list[tuple[str | None, Path]] = [(f, root / f) for f in flows if _has_parts(root / f)]
    if not found:
        where = root if flow == "all" else root / flow
        msg = (f"no recovery partitions (part-*.sqlite3) in {where}"
               + ("" if flow != "all" else f" nor in its {'/'.join(LAG_FLOWS)} subdirectories"))
        raise FileNotFoundError(msg)
    return found


def _cmd_lag(args: argparse.Namespace, config: Config) -> int:
    recovery = args.recovery or (None if args.group else config.recovery.dir)
    rows: list[LagRow] = []
    sources: list[str] = []
    try:
        if recovery is None:
            flows = LAG_FLOWS if args.flow == "all" else (args.flow,)
            topics = args.topic or list(dict.fromkeys(
                t for f in flows for t in flow_input_topics(config, f)))
            rows, source = compute_lag(config, topics, group=args.group,
                                       timeout=args.connect_timeout)
            sources.append(source)
        else:
            # Each flow keeps its own positions (both read ref.items): one set of rows each.
            for flow, where in flow_recovery_dirs(recovery, args.flow):
                if args.topic:
                    topics = args.topic
                elif flow is None:
                    topics = list(config.topics.input_schemas)
                else:
                    topics = flow_input_topics(config, flow)
                part, source = compute_lag(config, topics, recovery_dir=where, flow=flow,
                                           timeout=args.connect_timeout)
                rows += part
                sources.append(source)
    except FileNotFoundError as exc:
        _err(args, str(exc))
        return 2
    total = sum(r.lag for r in rows)
    source = "; ".join(sources)
    if args.json:
        _print_json({"positions": source, "total_lag": total,
                     "partitions": [r.as_json() for r in rows]})
        return 0
    if any(r.flow for r in rows):
        print(_table([(r.flow, r.topic, r.partition, r.end, r.position, r.lag) for r in rows],
                     ("flow", "topic", "partition", "end", "position", "lag")))
    else:
        print(_table([(r.topic, r.partition, r.end, r.position, r.lag) for r in rows],
                     ("topic", "partition", "end", "position", "lag")))
    print(f"total lag: {total}  (positions: {source})")
    return 0


# -- registration ----------------------------------------------------------------


def _has_option(parents: Sequence[argparse.ArgumentParser], option: str) -> bool:
    # argparse has no public way to list a parser's options; _actions is stable.
    return any(option in a.option_strings for p in parents for a in p._actions)


def _own_parent(parents: Sequence[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Options every Kafka command takes, minus those the caller's parents already give."""
    own = argparse.ArgumentParser(add_help=False)
    if not _has_option(parents, "--config"):
        own.add_argument("--config", default=None,
                         help="config file (default: the bundled config/atpflow.yaml)")
    if not _has_option(parents, "--bootstrap"):
        own.add_argument("--bootstrap", metavar="HOST:PORT",
                         help="Kafka bootstrap servers (overrides the config)")
    own.add_argument("--connect-timeout", type=float, default=CONNECT_TIMEOUT, metavar="SECONDS",
                     help="give up (exit 2) when no broker answers within this (default 10)")
    return own


def _leaf(
    sub: Any,
    name: str,
    parents: list[argparse.ArgumentParser],
    command: str,
    handler: Callable[[argparse.Namespace, Config], int],
    **kw: Any,
) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(name, parents=parents, **kw)
    p.set_defaults(func=_command(handler), kafka_command=command)
    return p


def _dl_filter_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reason", action="append", metavar="REASON",
                   help="only this reason (repeatable), e.g. UNKNOWN_ITEM")
    p.add_argument("--since", metavar="TIME", type=parse_since,
                   help="only dead letters written since TIME: ISO time (UTC if no zone), "
                        "epoch ms, or an age such as 2h, 30m, 1d")


def register(
    subparsers: Any, parents: Sequence[argparse.ArgumentParser] = ()
) -> None:
    """Add `topics`, `publish`, `record`, `dead-letters` and `lag` to an `atpflow` parser.

    Each leaf sets `func` (args -> exit code). `parents` (e.g. the shared
    `--config`/`--bootstrap` parser) are added to every leaf; options they
    already define are not defined again.
    """
    base = [*parents, _own_parent(parents)]

    topics = subparsers.add_parser("topics", help="manage atpflow's Kafka topics")
    tsub = topics.add_subparsers(dest="topics_command", required=True)
    _leaf(tsub, "create", base, "topics create", _cmd_topics_create,
          help="create every input and output topic that is missing (safe to repeat)",
          description="Create the input topics, availability.<channel> per channel, "
                      "shipment.milestones, the dead-letter topic and its replay markers, with "
                      "explicit configs (compacted: ref.items, availability.*). Existing topics "
                      "are reported and left unchanged.")

    p = _leaf(subparsers, "publish", base, "publish", _cmd_publish,
              help="produce fixture records to their topics (Avro, keys and headers kept)")
    p.add_argument("fixtures", nargs="+", metavar="FIXTURE", help="JSON Lines fixture file(s)")
    p.add_argument("--keep-timestamps", action="store_true",
                   help="send the fixture's timestamps (off by default: retention would "
                        "delete old-timestamped records on a real cluster)")

    p = _leaf(subparsers, "record", base, "record", _cmd_record,
              help="write topics' records to a fixture file")
    p.add_argument("--topic", action="append", required=True, metavar="TOPIC",
                   help="topic to record (repeatable)")
    p.add_argument("--from-beginning", action="store_true",
                   help="start at each partition's first record (default: its end, so "
                        "without --follow nothing is recorded)")
    p.add_argument("--follow", action="store_true",
                   help="keep recording new records until Ctrl-C or --max")
    p.add_argument("--max", type=int, metavar="N", help="stop after N records")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="fixture file to write ('-': stdout)")

    dl = subparsers.add_parser("dead-letters", help="inspect and replay dead letters")
    dsub = dl.add_subparsers(dest="dead_letters_command", required=True)
    p = _leaf(dsub, "list", base, "dead-letters list", _cmd_dl_list,
              help="counts by reason and source topic, and the newest entries")
    _dl_filter_args(p)
    p.add_argument("--limit", type=int, default=10, metavar="N",
                   help="newest entries to show (default 10)")
    p.add_argument("--json", action="store_true")
    p = _leaf(dsub, "replay", base, "dead-letters replay", _cmd_dl_replay,
              help="send chosen dead letters' records back to their topics, each at most once",
              description=f"Each chosen dead letter's original key and value goes back to its "
                          f"original topic (and partition) with header {REPLAYED_HEADER}="
                          f"<dead-letter topic>/<partition>/<offset>. What was replayed is "
                          f"remembered in the compacted topic <dead-letter topic>.replayed, so "
                          f"running it again sends nothing twice.")
    _dl_filter_args(p)
    p.add_argument("--dry-run", action="store_true", help="count, send nothing")
    p.add_argument("--json", action="store_true")

    p = _leaf(subparsers, "lag", base, "lag", _cmd_lag,
              help="lag per topic and partition",
              description="Lag = end offset minus the dataflow's position. Bytewax keeps its "
                          "offsets in its recovery store, not in Kafka: positions come from the "
                          "newest snapshots in the recovery dir (--recovery, default the "
                          "config's recovery.dir, where `atpflow run` keeps one store per flow "
                          "in <dir>/<flow>), or from a consumer group's committed offsets "
                          "(--group); with neither, lag is the whole partition. Positions move "
                          "at each snapshot (recovery.snapshot_interval). Tansu reports "
                          "the start of its last batch as the high watermark, so the end is "
                          "found by reading that last batch to partition EOF.")
    p.add_argument("--flow", choices=[*LAG_FLOWS, "all"], default="all",
                   help="whose positions (and default topics): availability, milestones or "
                        "all (default: every flow with recovery partitions)")
    p.add_argument("--topic", action="append", metavar="TOPIC",
                   help="topic (repeatable; default: the input topics)")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--recovery", metavar="DIR", help="Bytewax recovery dir (part-*.sqlite3)")
    who.add_argument("--group", metavar="GROUP", help="a consumer group's committed offsets")
    p.add_argument("--json", action="store_true")


def main(argv: Sequence[str] | None = None) -> int:
    """Run these commands alone (`python -m dataflows.commands_kafka ...`)."""
    parser = argparse.ArgumentParser(prog="atpflow")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
