"""Recorded fixtures: JSON Lines files, one Kafka record a line (DOMAIN.md).

    {"topic": "...", "key": "...", "value": {...plain JSON...}}
    {"topic": "...", "key": "...", "value_b64": "...raw bytes...", "partition": 0, "offset": 7,
     "timestamp": 1767225600000, "headers": {"name": "utf-8 text"}}

Both directions stream line by line: fixtures can be bigger than memory.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import orjson

from dataflows.config import Config
from operators.records import RawRecord
from schemas import DecodeError, codec, from_json, to_json

__all__ = [
    "FixtureError",
    "read_fixture",
    "read_fixtures",
    "record_line",
    "topic_schemas",
    "write_line",
]

PathLike = str | Path


class FixtureError(ValueError):
    """A fixture line that cannot become a record; names the file and line."""


def topic_schemas(config: Config) -> dict[str, str]:
    """Topic -> Avro schema name for every topic atpflow reads or writes."""
    t = config.topics
    out = dict(t.input_schemas)
    for channel in config.channels.channels:
        out[t.availability(channel.id)] = "AvailabilityRecord"
    out[t.milestones] = "ShipmentMilestone"
    out[t.dead_letter] = "DeadLetter"
    return out


def _paths(paths: PathLike | Iterable[PathLike]) -> list[Path]:
    if isinstance(paths, str | Path):
        return [Path(paths)]
    return [Path(p) for p in paths]


def _headers(raw: Any, where: str) -> tuple[tuple[str, bytes], ...]:
    if raw is None:
        return ()
    # An object is the documented form; a list of pairs keeps repeated names.
    pairs = raw.items() if isinstance(raw, dict) else raw
    try:
        return tuple((str(k), str(v).encode("utf-8")) for k, v in pairs)
    except (TypeError, ValueError) as exc:
        msg = f"{where}: headers must be an object of strings"
        raise FixtureError(msg) from exc


def _value(line: dict[str, Any], schemas: Mapping[str, str], where: str) -> bytes | None:
    topic = line["topic"]
    if "value_b64" in line:
        try:
            return base64.b64decode(line["value_b64"], validate=True)
        except (ValueError, TypeError) as exc:
            msg = f"{where}: value_b64 is not base64"
            raise FixtureError(msg) from exc
    value = line.get("value")
    if value is None:
        return None  # a tombstone
    schema = schemas.get(topic)
    if schema is None:
        msg = f"{where}: no schema known for topic {topic!r} (use value_b64 for raw bytes)"
        raise FixtureError(msg)
    try:
        return codec(schema).encode(from_json(schema, value))
    except Exception as exc:  # fastavro raises many types for a bad value
        msg = f"{where}: value does not fit {schema}: {type(exc).__name__}: {exc}"
        raise FixtureError(msg[:500]) from exc


def _int_or_none(line: dict[str, Any], name: str, where: str) -> int | None:
    value = line.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        msg = f"{where}: {name} must be an integer"
        raise FixtureError(msg)
    return value


def read_fixture(
    paths: PathLike | Iterable[PathLike], topic_schemas: Mapping[str, str]
) -> Iterator[RawRecord]:
    """The records of one or more fixture files, in file and line order.

    `value` is Avro-encoded with the topic's schema; `value_b64` is taken as
    raw bytes. A line without `partition`/`offset` gets partition 0 and, as
    offset, its index among that topic's lines across all the files given.
    """
    index: dict[str, int] = {}
    for path in _paths(paths):
        with open(path, encoding="utf-8") as fh:
            for lineno, text in enumerate(fh, 1):
                if not text.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    line = orjson.loads(text)
                except orjson.JSONDecodeError as exc:
                    msg = f"{where}: not JSON: {exc}"
                    raise FixtureError(msg) from exc
                if not isinstance(line, dict) or not isinstance(line.get("topic"), str):
                    msg = f"{where}: each line must be an object with a 'topic'"
                    raise FixtureError(msg)
                topic = line["topic"]
                nth = index.get(topic, 0)
                index[topic] = nth + 1
                partition = _int_or_none(line, "partition", where)
                offset = _int_or_none(line, "offset", where)
                key = line.get("key")
                yield RawRecord(
                    topic=topic,
                    partition=0 if partition is None else partition,
                    offset=nth if offset is None else offset,
                    key=None if key is None else str(key),
                    value=_value(line, topic_schemas, where),
                    timestamp=_int_or_none(line, "timestamp", where),
                    headers=_headers(line.get("headers"), where),
                )


#: The name `dataflows.replay` imports (it reads several files at once).
read_fixtures = read_fixture


def record_line(raw: RawRecord, schema: str | None) -> dict[str, Any]:
    """One record as a fixture line: `value` as plain JSON, or `value_b64` if it does not decode."""
    line: dict[str, Any] = {"topic": raw.topic, "key": raw.key}
    if raw.value is None:
        line["value"] = None
    else:
        decoded = None
        if schema is not None:
            try:
                decoded = to_json(schema, codec(schema).decode(raw.value))
            except DecodeError:
                decoded = None
        if decoded is None:
            line["value_b64"] = base64.b64encode(raw.value).decode("ascii")
        else:
            line["value"] = decoded
    if raw.partition is not None:
        line["partition"] = raw.partition
    if raw.offset is not None:
        line["offset"] = raw.offset
    if raw.timestamp is not None:
        line["timestamp"] = raw.timestamp
    if raw.headers:
        # Header values are text in practice (ours are); undecodable bytes are escaped.
        line["headers"] = {
            k: v.decode("utf-8", errors="backslashreplace") for k, v in raw.headers
        }
    return line


def write_line(fh: IO[str], line: Mapping[str, Any]) -> None:
    """Append one fixture line (compact JSON, UTF-8 kept readable)."""
    fh.write(json.dumps(line, ensure_ascii=False, separators=(", ", ": ")))
    fh.write("\n")
