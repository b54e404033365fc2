"""An emulator of the Amazon Selling Partner API subset atpflow uses, with its LWA token endpoint.

- ``POST /auth/o2/token``: the refresh_token grant (form-encoded ``grant_type``, ``refresh_token``,
  ``client_id``, ``client_secret``) answers ``{access_token, token_type: "bearer", expires_in}``;
  wrong credentials answer 400/401 with ``error``/``error_description`` as LWA does.
- Every SP-API call needs a current ``x-amz-access-token`` (else 403 ``Unauthorized``) and
  ``marketplaceIds`` where the operation requires it.
- A token bucket per operation (rate per second, burst), by default the documented usage plans:
  patchListingsItem and getListingsItem 5/s burst 5, getOrderItems 0.5/s burst 30,
  confirmShipment 2/s burst 10. An empty bucket answers 429 ``QuotaExceeded`` with
  ``x-amzn-RateLimit-Limit`` and Retry-After; every answer carries ``x-amzn-RateLimit-Limit``.
- ``PATCH /listings/2021-08-01/items/{sellerId}/{sku}``: the JSON Patch body must hold
  ``productType`` and ``patches`` of ``replace``/``merge`` on
  ``/attributes/fulfillment_availability``
  with ``fulfillment_channel_code`` and a ``quantity``. The answer is ``ACCEPTED`` and the
  quantity is applied only after a random processing delay, so two submissions for one SKU in
  flight at once can be applied out of order, as with the real queue.
- ``GET`` of the same path with ``includedData=fulfillmentAvailability`` reads it back.
- ``GET /orders/v0/orders/{orderId}/orderItems`` and ``POST .../shipmentConfirmation`` (204);
  the same ``packageReferenceId`` again edits the package instead of adding one.
"""

from __future__ import annotations

import heapq
import itertools
import random
import re
import secrets
import threading
import time
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, unquote

from .base import EmulatorServer, Request, Response

__all__ = ["DEFAULT_LIMITS", "AmazonEmulator"]

#: (rate per second, burst) per operation: the documented defaults.
DEFAULT_LIMITS: dict[str, tuple[float, float]] = {
    "patchListingsItem": (5.0, 5.0),
    "getListingsItem": (5.0, 5.0),
    "getOrderItems": (0.5, 30.0),
    "confirmShipment": (2.0, 10.0),
}

_LISTING_RE = re.compile(r"^/listings/2021-08-01/items/([^/]+)/([^/]+)$")
_ORDER_ITEMS_RE = re.compile(r"^/orders/v0/orders/([^/]+)/orderItems$")
_CONFIRM_RE = re.compile(r"^/orders/v0/orders/([^/]+)/shipmentConfirmation$")


def _errors(code: str, message: str, details: str = "") -> dict[str, Any]:
    return {"errors": [{"code": code, "message": message, "details": details}]}


class _Bucket:
    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.ts = time.monotonic()

    def take(self) -> float:
        """0 when a token was taken, else the seconds until one is there."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.ts) * self.rate)
        self.ts = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class AmazonEmulator:
    """The emulated seller account. Listings must exist (`add_listing`) unless ``auto_create``."""

    def __init__(
        self,
        *,
        seller_id: str,
        marketplace_id: str,
        client_id: str,
        client_secret: str,
        refresh_token: str,
        limits: dict[str, tuple[float, float]] | None = None,
        processing_delay: tuple[float, float] = (0.05, 0.3),
        token_ttl_s: int = 3600,
        auto_create: bool = True,
        seed: int = 11,
    ) -> None:
        self.seller_id = seller_id
        self.marketplace_id = marketplace_id
        self.client_id = client_id
        self.client_secret = client_secret
        self.refresh_token = refresh_token
        self.limits = {**DEFAULT_LIMITS, **(limits or {})}
        self.processing_delay = processing_delay
        self.token_ttl_s = token_ttl_s
        self.auto_create = auto_create
        self._rng = random.Random(seed)  # noqa: S311 - test randomness
        self._lock = threading.RLock()
        self._buckets = {op: _Bucket(*limit) for op, limit in self.limits.items()}
        self._tokens: dict[str, float] = {}  # access token -> expiry (monotonic)
        self.listings: dict[str, int] = {}  # seller sku -> applied quantity
        self._queue: list[tuple[float, int, str, int]] = []  # (apply_at, seq, sku, quantity)
        self._seq = itertools.count()
        self.submissions: list[dict[str, Any]] = []
        self.orders: dict[str, list[dict[str, Any]]] = {}
        self.confirmations: dict[
            str, dict[str, dict[str, Any]]
        ] = {}  # order -> package ref -> body
        self.server = EmulatorServer(self._handle, self.state, "amazon")
        self.faults = self.server.faults
        self.log = self.server.log

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> AmazonEmulator:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def __enter__(self) -> AmazonEmulator:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- Python API ----------------------------------------------------------------------------

    def add_listing(self, seller_sku: str, quantity: int = 0) -> None:
        with self._lock:
            self.listings[seller_sku] = quantity

    def quantity(self, seller_sku: str) -> int | None:
        """The applied quantity (submissions still being processed are not visible)."""
        with self._lock:
            self._process()
            return self.listings.get(seller_sku)

    def set_quantity(self, seller_sku: str, quantity: int) -> None:
        """A change made outside atpflow (Seller Central, another tool)."""
        with self._lock:
            self._process()
            self.listings[seller_sku] = quantity

    def processing(self) -> int:
        """Submissions accepted but not applied yet."""
        with self._lock:
            self._process()
            return len(self._queue)

    def wait_processed(self, timeout: float = 2.0) -> bool:
        """Wait until every accepted submission is applied."""
        end = time.monotonic() + timeout
        while self.processing() and time.monotonic() < end:
            time.sleep(0.02)
        return self.processing() == 0

    def add_order(self, order_id: str, lines: list[tuple[str, int]]) -> None:
        with self._lock:
            self.orders[order_id] = [
                {
                    "ASIN": f"B0{n:08d}",
                    "SellerSKU": sku,
                    "OrderItemId": f"{order_id.replace('-', '')}{n:03d}",
                    "QuantityOrdered": qty,
                    "QuantityShipped": 0,
                }
                for n, (sku, qty) in enumerate(lines, start=1)
            ]
            self.confirmations.setdefault(order_id, {})

    def expire_tokens(self) -> None:
        """Make every issued access token expired (to test the refresh path)."""
        with self._lock:
            self._tokens = {t: 0.0 for t in self._tokens}

    def state(self) -> dict[str, Any]:
        with self._lock:
            self._process()
            return {
                "listings": dict(self.listings),
                "processing": len(self._queue),
                "submissions": list(self.submissions),
                "confirmations": {o: dict(p) for o, p in self.confirmations.items()},
            }

    # -- HTTP ----------------------------------------------------------------------------------

    def _handle(self, request: Request) -> Response:
        with self._lock:
            self._process()
            if request.path == "/auth/o2/token":
                return self._token(request)
            listing = _LISTING_RE.match(request.path)
            if listing and request.method in ("PATCH", "GET"):
                op = "patchListingsItem" if request.method == "PATCH" else "getListingsItem"
                return self._guarded(
                    op, request, lambda: self._listing(op, request, *listing.groups())
                )
            items = _ORDER_ITEMS_RE.match(request.path)
            if items and request.method == "GET":
                return self._guarded(
                    "getOrderItems", request, lambda: self._order_items(unquote(items.group(1)))
                )
            confirm = _CONFIRM_RE.match(request.path)
            if confirm and request.method == "POST":
                return self._guarded(
                    "confirmShipment",
                    request,
                    lambda: self._confirm(request, unquote(confirm.group(1))),
                )
            return Response(404, _errors("NotFound", "Resource not found"), operation="?")

    def _guarded(self, op: str, request: Request, body: Any) -> Response:
        limit = f"{self.limits[op][0]:g}"
        expiry = self._tokens.get(request.headers.get("x-amz-access-token", ""))
        if expiry is None or expiry < time.monotonic():
            response = Response(
                403,
                _errors(
                    "Unauthorized",
                    "Access to requested resource is denied.",
                    "The access token you provided is revoked, malformed or invalid.",
                ),
                operation=op,
                note="unauthorized",
            )
        else:
            wait = self._buckets[op].take()
            if wait > 0:
                response = Response(
                    429,
                    _errors("QuotaExceeded", "You exceeded your quota for the requested resource."),
                    {"Retry-After": f"{max(0.05, wait):.3f}"},
                    operation=op,
                    note="throttled",
                )
            else:
                response = body()
                response.operation = op
        response.headers.setdefault("x-amzn-RateLimit-Limit", limit)
        response.headers.setdefault("x-amzn-RequestId", secrets.token_hex(8))
        response.cost = 1.0
        return response

    def _token(self, request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs(request.body.decode("utf-8")).items()}
        if form.get("grant_type") != "refresh_token":
            return Response(
                400,
                {"error": "unsupported_grant_type", "error_description": "grant_type"},
                operation="lwaToken",
            )
        if (
            form.get("client_id") != self.client_id
            or form.get("client_secret") != self.client_secret
        ):
            return Response(
                401,
                {"error": "invalid_client", "error_description": "Client authentication failed"},
                operation="lwaToken",
            )
        if form.get("refresh_token") != self.refresh_token:
            return Response(
                400,
                {
                    "error": "invalid_grant",
                    "error_description": "The request has an invalid grant parameter",
                },
                operation="lwaToken",
            )
        token = "Atza|" + secrets.token_urlsafe(32)
        self._tokens[token] = time.monotonic() + self.token_ttl_s
        return Response(
            200,
            {"access_token": token, "token_type": "bearer", "expires_in": self.token_ttl_s},
            operation="lwaToken",
        )

    def _listing(self, op: str, request: Request, seller_id: str, raw_sku: str) -> Response:
        sku = unquote(raw_sku)
        if seller_id != self.seller_id:
            return Response(403, _errors("Unauthorized", "Access to requested resource is denied."))
        if request.param("marketplaceIds") != self.marketplace_id:
            return Response(
                400,
                _errors(
                    "InvalidInput",
                    "marketplaceIds is required and must be the seller's marketplace",
                ),
            )
        if op == "getListingsItem":
            if sku not in self.listings:
                return Response(
                    404,
                    _errors(
                        "NOT_FOUND", f"SKU '{sku}' not found in marketplace {self.marketplace_id}"
                    ),
                )
            included = (request.param("includedData") or "summaries").split(",")
            body: dict[str, Any] = {"sku": sku}
            if "summaries" in included:
                body["summaries"] = [
                    {
                        "marketplaceId": self.marketplace_id,
                        "productType": "PRODUCT",
                        "status": ["BUYABLE"],
                    }
                ]
            if "fulfillmentAvailability" in included:
                body["fulfillmentAvailability"] = [
                    {"fulfillmentChannelCode": "DEFAULT", "quantity": self.listings[sku]}
                ]
            return Response(200, body)
        if sku not in self.listings and not self.auto_create:
            return Response(404, _errors("NOT_FOUND", f"SKU '{sku}' not found"))
        try:
            patch = request.json()
            quantity = self._check_patch(patch)
        except (ValueError, KeyError, TypeError) as exc:
            return Response(
                400, _errors("InvalidInput", f"Invalid request body: {exc}"), note="invalid"
            )
        submission_id = secrets.token_hex(16)
        if quantity < 0:
            return Response(
                200,
                {
                    "sku": sku,
                    "status": "INVALID",
                    "submissionId": submission_id,
                    "issues": [
                        {
                            "code": "4000001",
                            "message": "quantity must be 0 or more",
                            "severity": "ERROR",
                            "attributeNames": ["fulfillment_availability"],
                        }
                    ],
                },
                note="invalid-quantity",
            )
        apply_at = time.monotonic() + self._rng.uniform(*self.processing_delay)
        heapq.heappush(self._queue, (apply_at, next(self._seq), sku, quantity))
        self.submissions.append(
            {"t": time.time(), "sku": sku, "quantity": quantity, "submissionId": submission_id}
        )
        return Response(
            200,
            {"sku": sku, "status": "ACCEPTED", "submissionId": submission_id, "issues": []},
            note="accepted",
        )

    @staticmethod
    def _check_patch(patch: dict[str, Any]) -> int:
        if not isinstance(patch.get("productType"), str) or not patch["productType"]:
            raise ValueError("productType is required")
        patches = patch["patches"]
        if not isinstance(patches, list) or not patches:
            raise ValueError("patches must be a non-empty list")
        quantity: int | None = None
        for op in patches:
            if op["op"] not in ("add", "replace", "merge", "delete"):
                raise ValueError(f"unsupported op {op['op']!r}")
            if op["path"] != "/attributes/fulfillment_availability":
                raise ValueError(
                    f"the emulator only supports fulfillment_availability, not {op['path']!r}"
                )
            value = op["value"]
            if not isinstance(value, list) or len(value) != 1:
                raise ValueError("fulfillment_availability takes one value")
            entry = value[0]
            if not isinstance(entry.get("fulfillment_channel_code"), str):
                raise ValueError("fulfillment_channel_code is required")
            if not isinstance(entry.get("quantity"), int) or isinstance(
                entry.get("quantity"), bool
            ):
                raise ValueError("quantity must be an integer")
            quantity = entry["quantity"]
        if quantity is None:
            raise ValueError("no quantity")
        return quantity

    def _order_items(self, order_id: str) -> Response:
        items = self.orders.get(order_id)
        if items is None:
            return Response(404, _errors("NotFound", f"order {order_id} not found"))
        return Response(200, {"payload": {"AmazonOrderId": order_id, "OrderItems": items}})

    def _confirm(self, request: Request, order_id: str) -> Response:
        items = self.orders.get(order_id)
        if items is None:
            return Response(404, _errors("NotFound", f"order {order_id} not found"))
        try:
            body = request.json()
            if body["marketplaceId"] != self.marketplace_id:
                raise ValueError("marketplaceId")
            package = body["packageDetail"]
            ref = str(package["packageReferenceId"])
            if not ref.isdigit() or int(ref) <= 0:
                raise ValueError("packageReferenceId must be a positive number")
            for name in ("carrierCode", "trackingNumber", "shipDate"):
                if not isinstance(package.get(name), str) or not package[name]:
                    raise ValueError(f"{name} is required")
            if package["carrierCode"] == "Other" and not package.get("carrierName"):
                raise ValueError("carrierName is required when carrierCode is Other")
            datetime.fromisoformat(package["shipDate"].replace("Z", "+00:00"))
            known = {i["OrderItemId"]: i for i in items}
            order_items = package["orderItems"]
            if not order_items:
                raise ValueError("orderItems is required")
            for item in order_items:
                ordered = known[item["orderItemId"]]["QuantityOrdered"]
                if not isinstance(item["quantity"], int) or not 0 < item["quantity"] <= ordered:
                    raise ValueError(f"invalid quantity for {item['orderItemId']}")
        except (ValueError, KeyError, TypeError) as exc:
            return Response(
                400,
                _errors("InvalidInput", f"Invalid shipment confirmation: {exc}"),
                note="invalid",
            )
        packages = self.confirmations.setdefault(order_id, {})
        note = "edited" if ref in packages else "confirmed"
        packages[ref] = package
        return Response(204, None, note=note)

    def _process(self) -> None:
        """Apply the submissions whose processing time has come, in that order."""
        now = time.monotonic()
        while self._queue and self._queue[0][0] <= now:
            _at, _seq, sku, quantity = heapq.heappop(self._queue)
            self.listings[sku] = quantity
