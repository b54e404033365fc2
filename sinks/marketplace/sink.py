"""The availability sink: coalesce records per key, push the backlog at each checkpoint.

Two-phase contract, as a Bytewax sink partition uses it:

- `MarketplaceSink.add` for every record (cheap, no I/O). Only a version newer than the one held
  for the key is taken; older ones (a replay after a crash) are ignored, so the backlog holds at
  most one value per key, the newest.
- `MarketplaceSink.flush` at the checkpoint. It pushes the backlog, drops to zero first (an
  oversell costs more than a late restock), then the largest decreases, then the rest; it stops
  when its time budget is spent, the endpoint's circuit opens or the API cannot be reached, and
  whatever is left stays in the backlog for the next flush. Nothing is lost while the API is down:
  an unreachable API burns no attempt, so only the newest value per key waits for it.

An update the API keeps answering with transient failures for ``retry.max_attempts`` attempts,
or refuses outright, goes to the dead-letter callback with the API's (redacted) answer; a newer
record of the same key supersedes it and is pushed as usual. Every ``readback_interval_s`` a flush
reads back a sample of pushed keys (settled Amazon submissions first), compares them with the
last record and re-queues any that drifted.

Amazon answers ACCEPTED for a queued, not yet applied submission: the key is then *pending*, and
no second submission for that seller SKU goes out until ``settle_s`` has passed.
"""

from __future__ import annotations

import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import redis

from ._metrics import metric
from .config import AmazonChannelConfig, MarketplaceConfig, RetryConfig
from .errors import MarketplaceError, TransientApiError
from .factory import connect_channel, redis_client_for
from .models import InventoryUpdate, MarketplaceDeadLetter, PushResult, PushStatus, record_key
from .resilience import backoff_delay, guarded_call

__all__ = [
    "DeadLetterCallback",
    "FlushReport",
    "InventoryAdapter",
    "MarketplaceSink",
    "MultiChannelSink",
]

_log = logging.getLogger("atpflow.marketplace")

DeadLetterCallback = Callable[[MarketplaceDeadLetter], None]


class InventoryAdapter(Protocol):
    """What the sink needs from a marketplace adapter."""

    channel: str
    max_batch: int
    inventory_operation: str

    def push(self, updates: Sequence[InventoryUpdate], deadline: float) -> list[PushResult]: ...

    def read(self, keys: Sequence[str], deadline: float) -> dict[str, int | None]: ...

    def remote_id(self, key: str) -> str | None: ...


@dataclass(slots=True)
class FlushReport:
    """What one flush did."""

    pushed: int = 0
    dead_lettered: int = 0
    drift_repairs: int = 0
    remaining: int = 0
    pending: int = 0
    #: Why the flush ended before the backlog was empty: "", "deadline", "circuit_open",
    #: "unavailable".
    stopped: str = ""
    elapsed_s: float = 0.0


@dataclass(slots=True)
class _KeyState:
    record: Mapping[str, Any] | None = None
    version: int = 0  # newest version taken by add()
    confirmed_version: int = 0  # newest version known applied (Amazon: settled)
    confirmed_qty: int | None = None  # the value we believe is live: the compare-and-swap value
    attempts: int = 0  # failed attempts of `version`
    retry_at: float = 0.0
    dead_version: int = 0
    dead_permanent: bool = False
    pending_version: int = 0  # Amazon ACCEPTED, not settled yet
    pending_qty: int | None = None
    pending_since: float = 0.0
    pending_remote: str | None = None


@dataclass(slots=True)
class _Stats:
    added: int = 0
    stale_ignored: int = 0
    pushed: int = 0
    accepted_pending: int = 0
    dead_letters: int = 0
    retries: int = 0
    drift_checks: int = 0
    drift_repairs: int = 0
    counters: dict[str, int] = field(default_factory=dict)


class MarketplaceSink:
    """Pushes one channel's availability records to its marketplace.

    Not thread-safe: one per worker.
    """

    def __init__(
        self,
        channel: str,
        adapter: InventoryAdapter,
        *,
        retry: RetryConfig,
        flush_budget_s: float = 5.0,
        settle_s: float = 0.0,
        readback_interval_s: float = 60.0,
        readback_sample: int = 20,
        dead_letter: DeadLetterCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        closer: Callable[[], None] | None = None,
    ) -> None:
        self.channel = channel
        self.adapter = adapter
        self._retry = retry
        self._budget = flush_budget_s
        self._settle = settle_s
        self._readback_interval = readback_interval_s
        self._readback_sample = readback_sample
        self._dead_letter = dead_letter
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 - sampling, not crypto
        self._closer = closer
        self._states: dict[str, _KeyState] = {}
        self._backlog: set[str] = set()
        self._inflight: dict[str, str] = {}  # remote id -> key, Amazon submissions not settled
        self._verify: OrderedDict[str, None] = OrderedDict()  # settled keys to read back first
        self._last_readback = clock()
        self.stats = _Stats()

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        config: MarketplaceConfig,
        channel_id: str,
        *,
        redis_client: redis.Redis | None = None,
        dead_letter: DeadLetterCallback | None = None,
        http_client: httpx.Client | None = None,
    ) -> MarketplaceSink:
        """The sink of one configured channel, with its adapter, limiter and breakers."""
        channel = config.channel(channel_id)
        adapter, closer = connect_channel(channel_id, config, redis_client, http_client)
        return cls(
            channel_id,
            adapter,
            retry=channel.retry,
            flush_budget_s=channel.flush_budget_s,
            settle_s=channel.settle_s if isinstance(channel, AmazonChannelConfig) else 0.0,
            readback_interval_s=channel.readback_interval_s,
            readback_sample=channel.readback_sample,
            dead_letter=dead_letter,
            closer=closer,
        )

    def close(self) -> None:
        """Release the HTTP connections (the backlog is kept; see `snapshot`)."""
        if self._closer is not None:
            self._closer()

    # -- phase one: add ------------------------------------------------------------------------

    def add(self, record: Mapping[str, Any]) -> bool:
        """Take one availability record; return False when it is not newer than the key's last."""
        if record.get("channel") != self.channel:
            raise ValueError(
                f"record of channel {record.get('channel')!r} given to the {self.channel!r} sink"
            )
        key = record_key(record)
        version = int(record["version"])
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = _KeyState()
        if version <= state.version:
            self.stats.stale_ignored += 1
            return False
        state.record = record
        state.version = version
        # A new version supersedes a dead letter and starts with a fresh budget.
        state.attempts = 0
        state.retry_at = 0.0
        state.dead_permanent = False
        self._backlog.add(key)
        self.stats.added += 1
        return True

    def add_many(self, records: Iterable[Mapping[str, Any]]) -> int:
        """`add` each record; return how many were taken."""
        return sum(1 for record in records if self.add(record))

    # -- phase two: flush ----------------------------------------------------------------------

    def flush(self, max_seconds: float | None = None) -> FlushReport:
        """Push the backlog within ``max_seconds`` (default: the channel's ``flush_budget_s``)."""
        started = self._clock()
        deadline = started + (self._budget if max_seconds is None else max_seconds)
        report = FlushReport()
        before_dead = self.stats.dead_letters
        before_pushed = self.stats.pushed + self.stats.accepted_pending
        self._settle_pending(started)
        for chunk in self._chunks(self._due(started)):
            stop = self._push_chunk(chunk, deadline)
            if stop:
                report.stopped = stop
                break
        if (
            not report.stopped
            and self._readback_sample > 0
            and self._clock() - self._last_readback >= self._readback_interval
            and self._clock() < deadline
        ):
            report.drift_repairs = self.reconcile(deadline=deadline)
        report.pushed = self.stats.pushed + self.stats.accepted_pending - before_pushed
        report.dead_lettered = self.stats.dead_letters - before_dead
        report.remaining = len(self._backlog)
        report.pending = len(self._inflight)
        report.elapsed_s = self._clock() - started
        self._publish_backlog()
        return report

    def drain(self, timeout: float) -> bool:
        """Flush until nothing is left to push or pending, or ``timeout`` passes.

        For shutdown and tests; a dataflow calls `flush` once per checkpoint.
        """
        end = self._clock() + timeout
        while True:
            remaining = end - self._clock()
            if remaining <= 0:
                return self.idle
            report = self.flush(min(self._budget, remaining))
            if self.idle:
                return True
            if report.pushed == 0 and report.dead_lettered == 0:
                self._sleep(min(self._next_wake(), max(0.0, end - self._clock())))

    @property
    def idle(self) -> bool:
        """Nothing waiting to be pushed and no submission waiting to settle."""
        return not self._backlog and not self._inflight

    @property
    def backlog_size(self) -> int:
        return len(self._backlog)

    def last_record(self, key: str) -> Mapping[str, Any] | None:
        state = self._states.get(key)
        return state.record if state else None

    # -- read-back -----------------------------------------------------------------------------

    def reconcile(self, sample: int | None = None, *, deadline: float | None = None) -> int:
        """Read back a sample of pushed keys; re-queue those whose live value drifted.

        Returns the number of repairs queued. Errors end the sample quietly: read-back is a
        safety net, it must never hold up the pushes.
        """
        now = self._clock()
        self._last_readback = now
        deadline = deadline if deadline is not None else now + self._budget
        want = self._readback_sample if sample is None else sample
        chosen = self._readback_candidates(want)
        if not chosen:
            return 0
        try:
            live = self.adapter.read(chosen, deadline)
        except MarketplaceError as exc:
            _log.info("read-back of %s stopped: %s", self.channel, exc)
            return 0
        repairs = 0
        for key in chosen:
            self._verify.pop(key, None)
            value = live.get(key)
            state = self._states[key]
            if value is None or state.record is None or key in self._backlog:
                continue
            self.stats.drift_checks += 1
            state.confirmed_qty = value
            if value != int(state.record["available"]):
                repairs += 1
                self.stats.drift_repairs += 1
                metric("MARKETPLACE_DRIFT_REPAIRS").labels(channel=self.channel).inc()
                _log.info(
                    "drift on %s/%s: live %s, last record %s",
                    self.channel,
                    key,
                    value,
                    state.record["available"],
                )
                state.attempts = 0
                state.retry_at = 0.0
                state.dead_permanent = False
                self._backlog.add(key)
        return repairs

    def _readback_candidates(self, want: int) -> list[str]:
        chosen: list[str] = []
        for key in list(self._verify):
            if len(chosen) >= want:
                break
            if self._checkable(key):
                chosen.append(key)
            else:
                self._verify.pop(key, None)
        if len(chosen) < want:
            pool = [k for k in self._states if k not in self._verify and self._checkable(k)]
            chosen.extend(self._rng.sample(pool, min(len(pool), want - len(chosen))))
        return chosen

    def _checkable(self, key: str) -> bool:
        state = self._states.get(key)
        return (
            state is not None
            and state.record is not None
            and key not in self._backlog
            and state.pending_version == 0
            and not state.dead_permanent
            and (state.confirmed_version > 0 or state.dead_version > 0)
        )

    # -- snapshot ------------------------------------------------------------------------------

    def snapshot(self) -> list[Mapping[str, Any]]:
        """The records not known to be applied yet (backlog and pending), for a state snapshot."""
        keys = set(self._backlog) | set(self._inflight.values())
        return [self._states[k].record for k in sorted(keys) if self._states[k].record is not None]  # type: ignore[misc]

    def restore(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Re-add the records of a `snapshot` after a restart."""
        self.add_many(records)

    # -- internals -----------------------------------------------------------------------------

    def _settle_pending(self, now: float) -> None:
        for remote, key in list(self._inflight.items()):
            state = self._states[key]
            if now - state.pending_since < self._settle:
                continue
            del self._inflight[remote]
            if state.pending_version > state.confirmed_version:
                state.confirmed_version = state.pending_version
                state.confirmed_qty = state.pending_qty
            state.pending_version = 0
            state.pending_qty = None
            state.pending_remote = None
            if state.version == state.confirmed_version and state.record is not None:
                state.record = _slim(state.record)
            # ACCEPTED is a promise, not a result: verify it at the next read-back.
            self._verify[key] = None

    def _due(self, now: float) -> list[str]:
        due = []
        for key in self._backlog:
            state = self._states[key]
            if state.retry_at > now:
                continue
            remote = self.adapter.remote_id(key)
            if remote is not None and remote in self._inflight:
                continue
            due.append(key)

        def priority(key: str) -> tuple[bool, int, str]:
            state = self._states[key]
            target = int(state.record["available"])  # type: ignore[index]
            return (target != 0, target - (state.confirmed_qty or 0), key)

        due.sort(key=priority)
        return due

    def _chunks(self, keys: list[str]) -> Iterable[list[str]]:
        size = max(1, self.adapter.max_batch)
        for start in range(0, len(keys), size):
            yield keys[start : start + size]

    def _push_chunk(self, keys: list[str], deadline: float) -> str | None:
        live: list[InventoryUpdate] = [
            InventoryUpdate(
                k,
                self._states[k].version,
                int(self._states[k].record["available"]),  # type: ignore[index]
                self._states[k].confirmed_qty,
            )
            for k in keys
        ]

        def on_transient(exc: TransientApiError) -> int | None:
            nonlocal live
            metric("MARKETPLACE_RETRIES").labels(
                channel=self.channel, operation=self.adapter.inventory_operation
            ).inc()
            self.stats.retries += 1
            keep = []
            for update in live:
                state = self._states[update.key]
                state.attempts += 1
                if state.attempts >= self._retry.max_attempts:
                    self._to_dead_letter(
                        update.key,
                        "RETRY_BUDGET_EXHAUSTED",
                        exc.status,
                        "TRANSIENT",
                        exc.detail or str(exc),
                        permanent=False,
                    )
                else:
                    keep.append(update)
            live = keep
            return max((self._states[u.key].attempts for u in live), default=None)

        def on_deferred(until: float) -> None:
            for update in live:
                self._states[update.key].retry_at = until

        outcome = guarded_call(
            lambda: self.adapter.push(live, deadline),
            deadline=deadline,
            retry=self._retry,
            on_transient=on_transient,
            on_deferred=on_deferred,
            clock=self._clock,
            sleep=self._sleep,
        )
        if outcome.value is not None:
            for result in outcome.value:
                self._apply(result)
            return None
        return None if outcome.stop == "exhausted" else outcome.stop

    def _apply(self, result: PushResult) -> None:
        state = self._states[result.key]
        if result.version != state.version:
            return  # superseded meanwhile; the newer version is still in the backlog
        now = self._clock()
        if result.status is PushStatus.APPLIED:
            state.confirmed_version = result.version
            state.confirmed_qty = int(state.record["available"])  # type: ignore[index]
            state.record = _slim(state.record)  # type: ignore[arg-type]
            state.attempts = 0
            self._backlog.discard(result.key)
            self.stats.pushed += 1
        elif result.status is PushStatus.PENDING:
            remote = self.adapter.remote_id(result.key) or result.key
            state.pending_version = result.version
            state.pending_qty = int(state.record["available"])  # type: ignore[index]
            state.pending_since = now
            state.pending_remote = remote
            state.attempts = 0
            self._inflight[remote] = result.key
            self._backlog.discard(result.key)
            self.stats.accepted_pending += 1
        elif result.status is PushStatus.REJECTED:
            self._to_dead_letter(
                result.key,
                "REJECTED",
                result.http_status,
                result.code,
                result.detail,
                permanent=True,
            )
        else:  # RETRY: a per-item transient outcome
            state.attempts += 1
            self.stats.retries += 1
            if state.attempts >= self._retry.max_attempts:
                self._to_dead_letter(
                    result.key,
                    "RETRY_BUDGET_EXHAUSTED",
                    result.http_status,
                    result.code,
                    result.detail,
                    permanent=False,
                )
            else:
                state.retry_at = now + backoff_delay(state.attempts, self._retry, rng=self._rng)

    def _to_dead_letter(
        self,
        key: str,
        reason: str,
        http_status: int | None,
        code: str,
        response: str,
        *,
        permanent: bool,
    ) -> None:
        state = self._states[key]
        letter = MarketplaceDeadLetter(
            channel=self.channel,
            key=key,
            operation=self.adapter.inventory_operation,
            reason=reason,
            attempts=max(state.attempts, 1),
            http_status=http_status,
            code=code,
            response=response,
            version=state.version,
            record=state.record,
            at_ms=int(time.time() * 1000),
        )
        state.dead_version = state.version
        state.dead_permanent = permanent
        state.attempts = 0
        self._backlog.discard(key)
        self.stats.dead_letters += 1
        metric("MARKETPLACE_DEAD_LETTERS").labels(channel=self.channel).inc()
        _log.warning(
            "dead letter %s/%s v%s: %s %s (HTTP %s)",
            self.channel,
            key,
            state.version,
            reason,
            code,
            http_status,
        )
        if self._dead_letter is not None:
            try:
                self._dead_letter(letter)
            except Exception:  # noqa: BLE001 - a broken callback must not stop the pushes
                _log.exception("dead-letter callback failed for %s/%s", self.channel, key)

    def _next_wake(self) -> float:
        """Seconds until something can move: a retry comes due or a submission settles."""
        now = self._clock()
        times = [self._states[k].retry_at for k in self._backlog if self._states[k].retry_at > now]
        times += [self._states[k].pending_since + self._settle for k in self._inflight.values()]
        if not times:
            return 0.05
        return min(max(0.01, min(times) - now), 1.0)

    def _publish_backlog(self) -> None:
        metric("MARKETPLACE_BACKLOG_KEYS").labels(channel=self.channel).set(len(self._backlog))


#: What a confirmed key keeps of its record: enough for read-back and a later dead letter.
_SLIM_FIELDS = (
    "channel",
    "sku",
    "location",
    "available",
    "version",
    "as_of",
    "source",
    "source_id",
)


def _slim(record: Mapping[str, Any]) -> Mapping[str, Any]:
    """The record without its bulky parts (warehouses, ...): memory stays small per key."""
    return {name: record.get(name) for name in _SLIM_FIELDS}


class MultiChannelSink:
    """Routes records to the sink of their channel; channels without a sink are skipped."""

    def __init__(self, sinks: Mapping[str, MarketplaceSink]) -> None:
        self.sinks = dict(sinks)

    @classmethod
    def from_config(
        cls,
        config: MarketplaceConfig,
        *,
        redis_client: redis.Redis | None = None,
        dead_letter: DeadLetterCallback | None = None,
    ) -> MultiChannelSink:
        client = redis_client or redis_client_for(config)
        return cls(
            {
                channel_id: MarketplaceSink.from_config(
                    config, channel_id, redis_client=client, dead_letter=dead_letter
                )
                for channel_id in config.channels
            }
        )

    def add(self, record: Mapping[str, Any]) -> bool:
        sink = self.sinks.get(str(record.get("channel")))
        return sink.add(record) if sink is not None else False

    def flush(self, max_seconds: float | None = None) -> dict[str, FlushReport]:
        """Flush every channel; ``max_seconds`` is shared out evenly between them."""
        if not self.sinks:
            return {}
        share = None if max_seconds is None else max_seconds / len(self.sinks)
        return {channel: sink.flush(share) for channel, sink in self.sinks.items()}

    def close(self) -> None:
        for sink in self.sinks.values():
            sink.close()
