"""The fulfillment sink: report each shipped shipment to its selling channel, once.

Input: `FulfillmentRequest` values (or their dict form, see `FulfillmentRequest.from_mapping`),
one per shipment's SHIPPED milestone. `add` queues a request unless the same (order, shipment)
is queued or was pushed recently; `flush` pushes the queue in arrival order within a time budget,
with the same retry, backoff, circuit-breaking and dead-letter rules as the availability sink.
Repeats across restarts are harmless because the adapters' writes are idempotent (Shopify:
existing tracking number check plus an idempotency key; Amazon: the same packageReferenceId).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import redis

from ._metrics import metric
from .config import MarketplaceConfig, RetryConfig
from .errors import TransientApiError
from .factory import connect_channel
from .models import FulfillmentRequest, MarketplaceDeadLetter, PushResult, PushStatus
from .resilience import guarded_call
from .sink import DeadLetterCallback, FlushReport

__all__ = ["FulfillmentAdapter", "FulfillmentSink", "fulfillment_from_milestone"]

_log = logging.getLogger("atpflow.marketplace")


class FulfillmentAdapter(Protocol):
    channel: str
    fulfillment_operation: str

    def fulfill(self, request: FulfillmentRequest, deadline: float) -> PushResult: ...


def fulfillment_from_milestone(record: Mapping[str, Any]) -> FulfillmentRequest | None:
    """The push for a ``SHIPMENT``-level ``SHIPPED`` milestone record; None for any other."""
    if record.get("level") != "SHIPMENT" or record.get("milestone") != "SHIPPED":
        return None
    return FulfillmentRequest.from_mapping(record)


@dataclass(slots=True)
class _Job:
    request: FulfillmentRequest
    attempts: int = 0
    retry_at: float = 0.0


class FulfillmentSink:
    """Pushes one channel's shipment fulfillments. Not thread-safe: one per worker."""

    def __init__(
        self,
        channel: str,
        adapter: FulfillmentAdapter,
        *,
        retry: RetryConfig,
        flush_budget_s: float = 5.0,
        dead_letter: DeadLetterCallback | None = None,
        done_memory: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        closer: Callable[[], None] | None = None,
    ) -> None:
        self.channel = channel
        self.adapter = adapter
        self._retry = retry
        self._budget = flush_budget_s
        self._dead_letter = dead_letter
        self._done_memory = done_memory
        self._clock = clock
        self._sleep = sleep
        self._closer = closer
        self._queue: OrderedDict[str, _Job] = OrderedDict()
        self._done: OrderedDict[str, None] = OrderedDict()
        self.pushed = 0
        self.dead_letters = 0
        self.duplicates = 0

    @classmethod
    def from_config(
        cls,
        config: MarketplaceConfig,
        channel_id: str,
        *,
        redis_client: redis.Redis | None = None,
        dead_letter: DeadLetterCallback | None = None,
        http_client: httpx.Client | None = None,
    ) -> FulfillmentSink:
        channel = config.channel(channel_id)
        adapter, closer = connect_channel(channel_id, config, redis_client, http_client)
        return cls(
            channel_id,
            adapter,
            retry=channel.retry,
            flush_budget_s=channel.flush_budget_s,
            dead_letter=dead_letter,
            closer=closer,
        )

    def close(self) -> None:
        if self._closer is not None:
            self._closer()

    @property
    def idle(self) -> bool:
        return not self._queue

    @property
    def queued(self) -> int:
        return len(self._queue)

    def pending_requests(self) -> list[dict[str, Any]]:
        """The queued requests in input-dict form, for a state snapshot."""
        return [job.request.to_dict() for job in self._queue.values()]

    def add(self, item: FulfillmentRequest | Mapping[str, Any]) -> bool:
        """Queue one shipment; False when it is already queued or was pushed recently."""
        request = (
            item if isinstance(item, FulfillmentRequest) else FulfillmentRequest.from_mapping(item)
        )
        if request.channel != self.channel:
            raise ValueError(
                f"fulfillment of channel {request.channel!r} given to the {self.channel!r} sink"
            )
        if request.key in self._queue or request.key in self._done:
            self.duplicates += 1
            return False
        self._queue[request.key] = _Job(request)
        return True

    def flush(self, max_seconds: float | None = None) -> FlushReport:
        started = self._clock()
        deadline = started + (self._budget if max_seconds is None else max_seconds)
        report = FlushReport()
        before_pushed, before_dead = self.pushed, self.dead_letters
        for key in list(self._queue):
            job = self._queue.get(key)
            if job is None or job.retry_at > self._clock():
                continue
            stop = self._push(job, deadline)
            if stop:
                report.stopped = stop
                break
        report.pushed = self.pushed - before_pushed
        report.dead_lettered = self.dead_letters - before_dead
        report.remaining = len(self._queue)
        report.elapsed_s = self._clock() - started
        return report

    def drain(self, timeout: float) -> bool:
        end = self._clock() + timeout
        while self._queue and self._clock() < end:
            report = self.flush(min(self._budget, end - self._clock()))
            if self._queue and report.stopped:
                self._sleep(min(0.2, max(0.0, end - self._clock())))
            elif self._queue:
                self._sleep(0.02)
        return not self._queue

    def _push(self, job: _Job, deadline: float) -> str | None:
        operation = self.adapter.fulfillment_operation

        def on_transient(exc: TransientApiError) -> int | None:
            metric("MARKETPLACE_RETRIES").labels(channel=self.channel, operation=operation).inc()
            job.attempts += 1
            if job.attempts >= self._retry.max_attempts:
                self._finish_dead(
                    job, "RETRY_BUDGET_EXHAUSTED", exc.status, "TRANSIENT", exc.detail or str(exc)
                )
                return None
            return job.attempts

        def on_deferred(until: float) -> None:
            job.retry_at = until

        outcome = guarded_call(
            lambda: self.adapter.fulfill(job.request, deadline),
            deadline=deadline,
            retry=self._retry,
            on_transient=on_transient,
            on_deferred=on_deferred,
            clock=self._clock,
            sleep=self._sleep,
        )
        result = outcome.value
        if result is None:
            return None if outcome.stop == "exhausted" else outcome.stop
        if result.status is PushStatus.APPLIED or result.status is PushStatus.PENDING:
            self._finish_done(job)
        elif result.status is PushStatus.REJECTED:
            self._finish_dead(job, "REJECTED", result.http_status, result.code, result.detail)
        else:
            job.attempts += 1
            if job.attempts >= self._retry.max_attempts:
                self._finish_dead(
                    job, "RETRY_BUDGET_EXHAUSTED", result.http_status, result.code, result.detail
                )
        return None

    def _finish_done(self, job: _Job) -> None:
        self._queue.pop(job.request.key, None)
        self._done[job.request.key] = None
        while len(self._done) > self._done_memory:
            self._done.popitem(last=False)
        self.pushed += 1

    def _finish_dead(
        self, job: _Job, reason: str, status: int | None, code: str, response: str
    ) -> None:
        self._queue.pop(job.request.key, None)
        self.dead_letters += 1
        metric("MARKETPLACE_DEAD_LETTERS").labels(channel=self.channel).inc()
        request = job.request
        letter = MarketplaceDeadLetter(
            channel=self.channel,
            key=request.key,
            operation=self.adapter.fulfillment_operation,
            reason=reason,
            attempts=max(job.attempts, 1),
            http_status=status,
            code=code,
            response=response,
            at_ms=int(time.time() * 1000),
            extra={
                "channel_order_id": request.channel_order_id,
                "shipment_id": request.shipment_id,
                "carrier": request.carrier,
                "tracking_number": request.tracking_number,
                "lines": [{"sku": line.sku, "qty": line.qty} for line in request.lines],
            },
        )
        _log.warning(
            "dead letter %s/%s: %s %s (HTTP %s)", self.channel, request.key, reason, code, status
        )
        if self._dead_letter is not None:
            try:
                self._dead_letter(letter)
            except Exception:  # noqa: BLE001 - a broken callback must not stop the pushes
                _log.exception("dead-letter callback failed for %s/%s", self.channel, request.key)
