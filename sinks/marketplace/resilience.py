"""Backoff and circuit breaking for the marketplace calls.

Backoff is exponential with full jitter (delay drawn uniformly from ``[0, min(cap, base * 2**n)]``),
so that workers that failed together do not retry together. A Retry-After from the API is a floor:
the marketplaces say when they will take us back (Shopify
https://shopify.dev/docs/api/usage/limits, Amazon
https://developer-docs.amazon.com/sp-api/docs/usage-plans-and-rate-limits).

The breaker is per endpoint and per process: an endpoint that keeps failing is left alone for
``open_seconds``, then one probe decides whether to close it again. While it is open, updates
stay in the backlog, which keeps only the newest value per key.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar

from ._metrics import metric
from .config import BreakerConfig, RetryConfig
from .errors import ApiUnavailableError, CircuitOpenError, DeadlineExceeded, TransientApiError

__all__ = [
    "BreakerRegistry",
    "BreakerState",
    "CallOutcome",
    "CircuitBreaker",
    "backoff_delay",
    "guarded_call",
]

T = TypeVar("T")


def backoff_delay(
    attempt: int,
    retry: RetryConfig,
    *,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 1)."""
    rand = rng or random
    ceiling = min(retry.max_delay_s, retry.base_delay_s * (2 ** max(0, attempt - 1)))
    delay = rand.uniform(0, ceiling)
    if retry_after is not None and retry_after > 0:
        # Honour the API's hint, plus a little jitter so the woken workers spread out.
        delay = max(delay, retry_after + rand.uniform(0, min(1.0, retry_after * 0.1)))
    return delay


class BreakerState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """A consecutive-failure breaker with one probe in half-open state. Thread-safe."""

    def __init__(
        self,
        channel: str,
        endpoint: str,
        config: BreakerConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.channel = channel
        self.endpoint = endpoint
        self._config = config
        self._clock = clock
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False

    @property
    def state(self) -> BreakerState:
        with self._lock:
            self._maybe_half_open()
            return self._state

    def before_call(self) -> None:
        """Raise `CircuitOpenError` unless a call may go out now."""
        with self._lock:
            self._maybe_half_open()
            if self._state is BreakerState.OPEN:
                remaining = self._opened_at + self._config.open_seconds - self._clock()
                raise CircuitOpenError(
                    f"circuit of {self.channel}/{self.endpoint} is open for {remaining:.1f}s more"
                )
            if self._state is BreakerState.HALF_OPEN:
                if self._probe_in_flight:
                    raise CircuitOpenError(f"circuit of {self.channel}/{self.endpoint} is probing")
                self._probe_in_flight = True

    def cancel_probe(self) -> None:
        """Forget a probe granted by `before_call` that was never sent."""
        with self._lock:
            self._probe_in_flight = False

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0
            self._probe_in_flight = False
            if self._state is not BreakerState.CLOSED:
                self._state = BreakerState.CLOSED
                self._publish()

    def record_failure(self) -> None:
        with self._lock:
            self._probe_in_flight = False
            self._failures += 1
            if (
                self._state is BreakerState.HALF_OPEN
                or self._failures >= self._config.failure_threshold
            ):
                self._state = BreakerState.OPEN
                self._opened_at = self._clock()
                self._publish()

    def _maybe_half_open(self) -> None:
        if (
            self._state is BreakerState.OPEN
            and self._clock() - self._opened_at >= self._config.open_seconds
        ):
            self._state = BreakerState.HALF_OPEN
            self._probe_in_flight = False
            self._publish()

    def _publish(self) -> None:
        # Half-open counts as open for alerting: the endpoint has not proven itself yet.
        metric("MARKETPLACE_CIRCUIT_OPEN").labels(
            channel=self.channel, operation=self.endpoint
        ).set(0 if self._state is BreakerState.CLOSED else 1)


class BreakerRegistry:
    """The breakers of one channel, created on first use per endpoint."""

    def __init__(
        self, channel: str, config: BreakerConfig, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._channel = channel
        self._config = config
        self._clock = clock
        self._breakers: dict[str, CircuitBreaker] = {}
        self._lock = threading.Lock()

    def get(self, endpoint: str) -> CircuitBreaker:
        with self._lock:
            breaker = self._breakers.get(endpoint)
            if breaker is None:
                breaker = CircuitBreaker(self._channel, endpoint, self._config, self._clock)
                self._breakers[endpoint] = breaker
            return breaker

    def states(self) -> dict[str, BreakerState]:
        with self._lock:
            breakers = list(self._breakers.items())
        return {name: b.state for name, b in breakers}


@dataclass(frozen=True, slots=True)
class CallOutcome(Generic[T]):
    """The end of `guarded_call`: a value, or why there is none (``stop``)."""

    value: T | None
    #: None on success; "deadline", "circuit_open", "unavailable" (stop the flush) or
    #: "exhausted" (every item of the call ran out of attempts; go on with the next call).
    stop: str | None


def guarded_call(
    fn: Callable[[], T],
    *,
    deadline: float,
    retry: RetryConfig,
    on_transient: Callable[[TransientApiError], int | None],
    on_deferred: Callable[[float], None],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> CallOutcome[T]:
    """Call ``fn`` until it returns, retrying transient failures with backoff, within ``deadline``.

    ``on_transient`` books a failed attempt and returns the attempt number that sizes the next
    backoff, or None when no item of the call has budget left. ``on_deferred`` is told the
    instant before which the items should not be retried when the backoff outlasts the deadline.
    Outages (`ApiUnavailableError`) are retried with backoff too but book no attempt.
    """
    outages = 0
    while True:
        if clock() >= deadline:
            return CallOutcome(None, "deadline")
        try:
            return CallOutcome(fn(), None)
        except CircuitOpenError:
            return CallOutcome(None, "circuit_open")
        except DeadlineExceeded:
            return CallOutcome(None, "deadline")
        except ApiUnavailableError:
            outages += 1
            delay = backoff_delay(outages, retry)
            if clock() + delay >= deadline:
                return CallOutcome(None, "unavailable")
        except TransientApiError as exc:
            attempt = on_transient(exc)
            if attempt is None:
                return CallOutcome(None, "exhausted")
            delay = backoff_delay(attempt, retry, retry_after=exc.retry_after)
            if clock() + delay >= deadline:
                on_deferred(clock() + delay)
                return CallOutcome(None, "deadline")
        sleep(delay)
