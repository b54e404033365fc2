"""One guarded HTTP call: circuit breaker, shared rate limit, timeouts, metrics, classification.

Every adapter call goes through `ApiCaller.send`, which turns the wire's many failure modes into
the few classes of `errors` the sink acts on. Request headers (where the credentials are) are
never logged, never put into an exception and never returned.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Mapping
from typing import Any

import httpx

from ._metrics import metric
from .errors import (
    ApiUnavailableError,
    DeadlineExceeded,
    Redactor,
    ThrottledError,
    TransientApiError,
)
from .ratelimit import RedisRateLimiter
from .resilience import BreakerRegistry

__all__ = ["ApiCaller", "parse_retry_after"]

_log = logging.getLogger("atpflow.marketplace")


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class ApiCaller:
    """Sends requests for one channel; shared by that channel's adapters."""

    def __init__(
        self,
        channel: str,
        client: httpx.Client,
        limiter: RedisRateLimiter,
        breakers: BreakerRegistry,
        redactor: Redactor,
    ) -> None:
        self.channel = channel
        self.client = client
        self.limiter = limiter
        self.breakers = breakers
        self.redactor = redactor

    def send(
        self,
        operation: str,
        method: str,
        url: str,
        *,
        endpoint: str | None = None,
        cost: float = 1.0,
        deadline: float,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        data: Mapping[str, str] | None = None,
        rate_limited: bool = True,
    ) -> httpx.Response:
        """Send one request and return its response when the status is below 500 and not 429.

        ``operation`` names the metrics and the rate-limit bucket; ``endpoint`` the circuit
        breaker (several operations may share one endpoint, as Shopify's GraphQL ones do).
        Raises `ThrottledError` (429), `TransientApiError` (5xx, read timeout),
        `ApiUnavailableError` (cannot connect, connection dropped, circuit open) or
        `DeadlineExceeded` (the rate limit would wait past ``deadline``).
        """
        breaker = self.breakers.get(endpoint or operation)
        labels = {"channel": self.channel, "operation": operation}
        # An open circuit sends nothing, so it counts no request: the circuit gauge shows it.
        breaker.before_call()
        try:
            if rate_limited:
                self.limiter.acquire(operation, cost, deadline)
        except DeadlineExceeded:
            # A half-open probe that never went out is no verdict on the endpoint.
            breaker.cancel_probe()
            raise
        started = time.monotonic()
        try:
            response = self.client.request(
                method,
                url,
                headers=headers,
                json=json,
                params=params,
                data=data,
                timeout=self._timeout(deadline - started),
            )
        except httpx.TimeoutException as exc:
            breaker.record_failure()
            self._count(labels, "error", started)
            if isinstance(exc, (httpx.ConnectTimeout, httpx.PoolTimeout)):
                raise ApiUnavailableError(f"{operation}: connect timeout") from None
            # The request may have been applied: retrying is safe only because every write is
            # absolute or carries an idempotency key.
            raise TransientApiError(f"{operation}: read timeout") from None
        except httpx.TransportError as exc:
            breaker.record_failure()
            self._count(labels, "error", started)
            # The exception text can hold the URL but never headers; still, redact it.
            raise ApiUnavailableError(
                f"{operation}: {type(exc).__name__}: {self.redactor.text(str(exc), 300)}"
            ) from None
        self._count(labels, str(response.status_code), started)
        status = response.status_code
        if status == 429:
            # Throttling is the API working as designed, not a health problem.
            breaker.record_success()
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            metric("MARKETPLACE_THROTTLED").labels(**labels).inc()
            if retry_after:
                self.limiter.penalize(operation, retry_after)
            usage_plan = response.headers.get("x-amzn-ratelimit-limit")
            if usage_plan:
                # SP-API tells the rate it applies; a lower one caps every worker's bucket.
                try:
                    self.limiter.learn_rate(operation, float(usage_plan))
                except ValueError:
                    pass
            raise ThrottledError(
                f"{operation}: HTTP 429",
                status=status,
                detail=self.redactor.body(response.content),
                retry_after=retry_after,
            )
        if status >= 500:
            breaker.record_failure()
            raise TransientApiError(
                f"{operation}: HTTP {status}",
                status=status,
                detail=self.redactor.body(response.content),
                retry_after=parse_retry_after(response.headers.get("retry-after")),
            )
        breaker.record_success()
        return response

    def _timeout(self, remaining: float) -> httpx.Timeout:
        """The client's timeouts, cut to what is left of the flush.

        So a flush never outlives its budget by more than a moment, even against an API that hangs.
        """
        base = self.client.timeout
        cap = max(0.05, remaining)

        def cut(value: float | None) -> float:
            return cap if value is None else min(value, cap)

        return httpx.Timeout(
            connect=cut(base.connect),
            read=cut(base.read),
            write=cut(base.write),
            pool=cut(base.pool),
        )

    def _count(self, labels: dict[str, str], status: str, started: float) -> None:
        metric("MARKETPLACE_REQUESTS").labels(status=status, **labels).inc()
        metric("MARKETPLACE_REQUEST_LATENCY").labels(**labels).observe(time.monotonic() - started)
