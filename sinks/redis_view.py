"""The Redis view of channel availability: the current record per key, and ATP per warehouse.

Layout (``{p}`` is the configured prefix, default ``atpflow``):

- ``{p}:avail:{channel}:{key}``: hash of the key's current record: ``available``, ``version``,
  ``as_of``, ``sku``, ``location``, ``previous``, ``source``, ``source_id``, ``updated_ms``;
- ``{p}:atp:{channel}:{sku}``: hash, per warehouse ``{wh}`` the JSON of that warehouse's cell
  (``on_hand``, ``on_hold``, ``reserved``, ``incoming``, ``atp``, ...) and ``{wh}:v`` the version of
  the record it came from. Within a channel each warehouse belongs to exactly one key, so those
  versions are comparable;
- ``{p}:avail-index:{channel}:{sku}``: set of the sku's keys in the channel (``sku`` or
  ``sku|warehouse``), so a lookup by sku finds its per-location keys;
- ``{p}:channels``: set of the channels written.

Every record is written by one Lua script that compares versions first, so an older version never
overwrites a newer one, whatever the order of writers, retries or replays; records are sent in
pipelined batches. Versions are compared as decimal strings (length, then text), so they stay
exact beyond 2^53. `RedisViewWriter` keeps the newest record per key until Redis has taken it:
a Redis that goes away and comes back loses nothing, the next flush writes what is pending.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

__all__ = ["RedisViewWriter", "ViewFlushReport", "ViewKeys"]

_log = logging.getLogger("atpflow.redis_view")

# KEYS: avail hash, atp hash, sku index set, channels set.
# ARGV: version, available, as_of, channel, sku, location, key, previous, source, source_id,
#       updated_ms, then pairs (warehouse, cell json).
_WRITE = """
local function newer(a, b)
  if #a ~= #b then return #a > #b end
  return a > b
end
local version = ARGV[1]
local cur = redis.call('HGET', KEYS[1], 'version')
if cur and not newer(version, cur) then return 0 end
redis.call('HSET', KEYS[1], 'version', version, 'available', ARGV[2], 'as_of', ARGV[3],
  'channel', ARGV[4], 'sku', ARGV[5], 'location', ARGV[6], 'key', ARGV[7], 'previous', ARGV[8],
  'source', ARGV[9], 'source_id', ARGV[10], 'updated_ms', ARGV[11])
for i = 12, #ARGV, 2 do
  local wh = ARGV[i]
  local old = redis.call('HGET', KEYS[2], wh .. ':v')
  if (not old) or newer(version, old) then
    redis.call('HSET', KEYS[2], wh, ARGV[i + 1], wh .. ':v', version)
  end
end
redis.call('SADD', KEYS[3], ARGV[7])
redis.call('SADD', KEYS[4], ARGV[4])
return 1
"""


@dataclass(frozen=True, slots=True)
class ViewKeys:
    """The Redis key names of the view (shared by the writer and `sinks.serve`)."""

    prefix: str = "atpflow"

    def avail(self, channel: str, key: str) -> str:
        return f"{self.prefix}:avail:{channel}:{key}"

    def atp(self, channel: str, sku: str) -> str:
        return f"{self.prefix}:atp:{channel}:{sku}"

    def index(self, channel: str, sku: str) -> str:
        return f"{self.prefix}:avail-index:{channel}:{sku}"

    def channels(self) -> str:
        return f"{self.prefix}:channels"


@dataclass(slots=True)
class ViewFlushReport:
    written: int = 0
    #: Records Redis already held a newer (or the same) version of.
    stale: int = 0
    errors: int = 0
    pending: int = 0


def _metric_errors(count: int) -> None:
    try:
        from operators.metrics import REDIS_WRITE_ERRORS
    except ImportError:
        return
    REDIS_WRITE_ERRORS.inc(count)


def _version_text(value: Any) -> str:
    version = int(value)
    if version < 0:
        raise ValueError("a version is never negative")
    return str(version)


class RedisViewWriter:
    """Writes availability records to the Redis view. Not thread-safe: one per worker.

    `add` keeps the newest record per (channel, key); `flush` writes them all. Records that could
    not be written (Redis down, a timeout) stay pending for the next flush, unless a newer one of
    the same key replaces them meanwhile.
    """

    def __init__(
        self, client: redis.Redis, *, prefix: str = "atpflow", batch_size: int = 500
    ) -> None:
        self.keys = ViewKeys(prefix)
        self._redis = client
        self._batch = batch_size
        self._script = client.register_script(_WRITE)
        self._pending: dict[tuple[str, str], Mapping[str, Any]] = {}
        self.error_count = 0

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "atpflow", **kwargs: Any) -> RedisViewWriter:
        # Fail fast: a flush that cannot reach Redis keeps its records pending and returns.
        client = redis.Redis.from_url(
            url,
            socket_timeout=2,
            socket_connect_timeout=1,
            retry=Retry(ExponentialBackoff(cap=0.2), 1),
        )
        return cls(client, prefix=prefix, **kwargs)

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def pending_records(self) -> list[Mapping[str, Any]]:
        """The records not written yet (for a state snapshot)."""
        return list(self._pending.values())

    def add(self, record: Mapping[str, Any]) -> bool:
        """Queue a record; False when a newer (or the same) version of its key is already queued."""
        location = record.get("location")
        key = f"{record['sku']}|{location}" if location else str(record["sku"])
        slot = (str(record["channel"]), key)
        queued = self._pending.get(slot)
        if queued is not None and int(queued["version"]) >= int(record["version"]):
            return False
        self._pending[slot] = record
        return True

    def add_many(self, records: Iterable[Mapping[str, Any]]) -> int:
        return sum(1 for record in records if self.add(record))

    def flush(self) -> ViewFlushReport:
        """Write every pending record, in pipelined batches of one script call each."""
        report = ViewFlushReport()
        slots = list(self._pending.items())
        for start in range(0, len(slots), self._batch):
            batch = slots[start : start + self._batch]
            try:
                pipe = self._redis.pipeline(transaction=False)
                for (channel, key), record in batch:
                    keys, args = self._call(channel, key, record)
                    self._script(keys=keys, args=args, client=pipe)
                results = pipe.execute(raise_on_error=False)
            except redis.RedisError as exc:
                # Redis is away: everything not yet written stays pending for the next flush.
                report.errors += len(slots) - start
                _log.warning(
                    "Redis view flush failed (%s); %d records stay pending",
                    type(exc).__name__,
                    len(slots) - start,
                )
                break
            for ((channel, key), record), result in zip(batch, results, strict=True):
                if isinstance(result, Exception):
                    report.errors += 1
                    _log.warning(
                        "Redis view write of %s/%s failed: %s", channel, key, type(result).__name__
                    )
                    continue
                if int(result) == 1:
                    report.written += 1
                else:
                    report.stale += 1
                if self._pending.get((channel, key)) is record:
                    del self._pending[(channel, key)]
        if report.errors:
            self.error_count += report.errors
            _metric_errors(report.errors)
        report.pending = len(self._pending)
        return report

    def _call(
        self, channel: str, key: str, record: Mapping[str, Any]
    ) -> tuple[list[str], list[str]]:
        sku = str(record["sku"])
        location = record.get("location")
        previous = record.get("previous")
        args = [
            _version_text(record["version"]),
            str(int(record["available"])),
            str(int(record.get("as_of") or 0)),
            channel,
            sku,
            "" if location is None else str(location),
            key,
            "" if previous is None else str(int(previous)),
            str(record.get("source") or ""),
            str(record.get("source_id") or ""),
            str(int(time.time() * 1000)),
        ]
        for cell in record.get("warehouses") or ():
            args.append(str(cell["warehouse"]))
            args.append(json.dumps(dict(cell), separators=(",", ":"), sort_keys=True))
        keys = [
            self.keys.avail(channel, key),
            self.keys.atp(channel, sku),
            self.keys.index(channel, sku),
            self.keys.channels(),
        ]
        return keys, args
