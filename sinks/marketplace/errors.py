"""Errors of the marketplace adapters, and the redaction that keeps secrets out of them.

The classes say what the caller should do, not what went wrong on the wire:

- `TransientApiError` (and `ThrottledError`): the API answered, but not now. Retry with backoff;
  each one burns an attempt of the update's retry budget.
- `ApiUnavailableError`: the API could not be reached or would not let us in (connection refused,
  reset, circuit open, credentials rejected). Keep the update in the backlog; burn no attempt.
- `DeadlineExceeded`: the flush's time budget ran out (waiting for the rate limit, backing off).
- Per-item permanent rejections are not exceptions: adapters return them as results, so one bad
  SKU in a batch of a hundred does not fail the other ninety-nine.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

__all__ = [
    "ApiAuthError",
    "ApiUnavailableError",
    "CircuitOpenError",
    "DeadlineExceeded",
    "MarketplaceError",
    "Redactor",
    "ThrottledError",
    "TransientApiError",
]

_MASK = "***"
#: Dead letters and errors carry at most this much of an API's answer.
MAX_DETAIL_CHARS = 2000


class MarketplaceError(Exception):
    """Base of every marketplace error. ``detail`` is already redacted."""

    def __init__(self, message: str, *, status: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


class TransientApiError(MarketplaceError):
    """The API answered with a failure worth retrying (5xx, read timeout, a retryable userError)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        detail: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, detail=detail)
        self.retry_after = retry_after


class ThrottledError(TransientApiError):
    """HTTP 429 or a GraphQL THROTTLED error; ``retry_after`` is the API's own hint when given."""


class ApiUnavailableError(MarketplaceError):
    """The API could not be reached: retry later, without spending the update's budget."""


class ApiAuthError(ApiUnavailableError):
    """Credentials were rejected. Treated as an outage: nothing is dead-lettered for it."""


class CircuitOpenError(ApiUnavailableError):
    """The endpoint's circuit breaker is open; no request was sent."""


class DeadlineExceeded(MarketplaceError):
    """The flush's time budget would run out before the call could be made."""


class Redactor:
    """Masks known secret values in any text before it leaves the adapter.

    Belt and braces: secrets are only ever put in request headers or form bodies, never in
    anything we log, but an API may echo a request back in an error answer.
    """

    __slots__ = ("_secrets",)

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Short strings would mask innocent text; real tokens are long.
        self._secrets: list[str] = sorted(
            {s for s in secrets if s and len(s) >= 6}, key=len, reverse=True
        )

    def add(self, secret: str) -> None:
        """Also mask ``secret`` from now on (an access token fetched at run time)."""
        if secret and len(secret) >= 6 and secret not in self._secrets:
            self._secrets.append(secret)
            self._secrets.sort(key=len, reverse=True)

    def text(self, value: str, limit: int = MAX_DETAIL_CHARS) -> str:
        """``value`` with every secret masked, cut to ``limit`` characters."""
        for secret in self._secrets:
            if secret in value:
                value = value.replace(secret, _MASK)
        if len(value) > limit:
            value = value[:limit] + "...(truncated)"
        return value

    def body(self, payload: Any, limit: int = MAX_DETAIL_CHARS) -> str:
        """A JSON rendering of an API answer (or its raw text), redacted and cut."""
        if isinstance(payload, bytes):
            payload = payload.decode("utf-8", errors="replace")
        if not isinstance(payload, str):
            payload = json.dumps(payload, sort_keys=True, default=str)
        return self.text(payload, limit)
