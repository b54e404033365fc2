"""Amazon-style adapter: Selling Partner API listings quantities and shipment confirmations.

Contracts followed:

- Authorization: a Login with Amazon access token from the ``refresh_token`` grant
  (POST ``/auth/o2/token`` with ``grant_type``, ``refresh_token``, ``client_id``,
  ``client_secret``; the answer has ``access_token`` and ``expires_in``, typically 3600 s:
  https://developer.amazon.com/docs/login-with-amazon/access-token.html,
  https://developer.amazon.com/docs/amazon-data-portability/use-refresh-token.html), sent as the
  ``x-amz-access-token`` header. A 403 refreshes the token once.
- ``patchListingsItem``: ``PATCH /listings/2021-08-01/items/{sellerId}/{sku}?marketplaceIds=...``
  with a JSON Patch ``replace`` of ``/attributes/fulfillment_availability``
  (``[{fulfillment_channel_code, quantity}]``) and the listing's ``productType``
  (https://developer-docs.amazon.com/sp-api/docs/partially-update-a-listing). The answer's
  ``status`` is ``ACCEPTED`` (queued for processing, *not yet applied*), ``INVALID`` (refused, with
  ``issues``) or ``VALID`` (validation preview only): see the ListingsItemSubmissionResponse
  schema. The sink therefore records an ACCEPTED quantity as pending, sends no second submission
  for that SKU until the settle time has passed, and reads it back afterwards.
- ``getListingsItem`` with ``includedData=fulfillmentAvailability`` for read-back; the answer's
  ``fulfillmentAvailability`` is ``[{fulfillmentChannelCode, quantity}]``.
- Rate limits: a token bucket per operation, 429 when empty, the usage plan in the
  ``x-amzn-RateLimit-Limit`` header (https://developer-docs.amazon.com/sp-api/docs/usage-plans-and-rate-limits,
  https://developer-docs.amazon.com/sp-api/docs/listings-items-api-rate-limits): a lower rate in
  that header caps our shared bucket for every worker.
- ``confirmShipment``: ``POST /orders/v0/orders/{orderId}/shipmentConfirmation`` with
  ``marketplaceId`` and ``packageDetail {packageReferenceId, carrierCode, trackingNumber,
  shipDate, orderItems [{orderItemId, quantity}]}``, 204 on success
  (https://developer-docs.amazon.com/sp-api/reference/confirmshipment,
  https://developer-docs.amazon.com/sp-api/docs/confirm-the-shipment-status). Sending the same
  ``packageReferenceId`` again edits that package instead of adding one, which makes repeats
  idempotent. The reference must be a positive number: a numeric shipment id is used as is,
  any other is mapped to a stable number derived from it. Order item ids come from
  ``getOrderItems`` (``GET /orders/v0/orders/{orderId}/orderItems``), matched by seller SKU.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from .config import AmazonChannelConfig
from .errors import ApiAuthError, TransientApiError
from .models import FulfillmentRequest, InventoryUpdate, PushResult, PushStatus
from .transport import ApiCaller

__all__ = ["AmazonAdapter", "LwaTokenProvider", "package_reference_id"]

_log = logging.getLogger("atpflow.marketplace")

OP_TOKEN = "lwaToken"  # noqa: S105 - an operation name, not a secret
OP_PATCH = "patchListingsItem"
OP_GET = "getListingsItem"
OP_ORDER_ITEMS = "getOrderItems"
OP_CONFIRM = "confirmShipment"
_LISTINGS = "/listings/2021-08-01/items"
#: Refresh the access token this long before it expires.
_TOKEN_MARGIN_S = 60.0


def package_reference_id(shipment_id: str) -> str:
    """A positive numeric packageReferenceId for a shipment id, stable across runs."""
    if shipment_id.isdigit() and int(shipment_id) > 0:
        return shipment_id
    # 12 hex digits = 48 bits: collisions within one order are not a practical concern.
    return str(int(hashlib.sha256(shipment_id.encode()).hexdigest()[:12], 16) or 1)


class LwaTokenProvider:
    """Caches the SP-API access token and refreshes it shortly before it expires. Thread-safe."""

    def __init__(
        self,
        caller: ApiCaller,
        token_url: str,
        client_id: SecretStr,
        client_secret: SecretStr,
        refresh_token: SecretStr,
    ) -> None:
        self._caller = caller
        self._url = token_url
        self._client_id = client_id
        self._client_secret = client_secret
        self._refresh_token = refresh_token
        self._token: SecretStr | None = None
        self._expires_at = 0.0
        self._lock = threading.Lock()
        for secret in (client_id, client_secret, refresh_token):
            caller.redactor.add(secret.get_secret_value())

    def token(self, deadline: float) -> str:
        """A valid access token, fetched when there is none or it is about to expire."""
        with self._lock:
            if self._token is None or time.monotonic() >= self._expires_at - _TOKEN_MARGIN_S:
                self._fetch(deadline)
            assert self._token is not None
            return self._token.get_secret_value()

    def invalidate(self) -> None:
        """Forget the token (the API refused it): the next call fetches a new one."""
        with self._lock:
            self._token = None

    def _fetch(self, deadline: float) -> None:
        response = self._caller.send(
            OP_TOKEN,
            "POST",
            self._url,
            endpoint=OP_TOKEN,
            deadline=deadline,
            rate_limited=False,
            data={
                "grant_type": "refresh_token",
                "refresh_token": self._refresh_token.get_secret_value(),
                "client_id": self._client_id.get_secret_value(),
                "client_secret": self._client_secret.get_secret_value(),
            },
            headers={"Content-Type": "application/x-www-form-urlencoded;charset=UTF-8"},
        )
        if response.status_code != 200:
            # invalid_grant, invalid_client, ...: an operator must fix the credentials.
            raise ApiAuthError(
                f"{OP_TOKEN}: HTTP {response.status_code}",
                status=response.status_code,
                detail=self._caller.redactor.body(response.content),
            )
        try:
            body = response.json()
            token = str(body["access_token"])
            expires_in = float(body.get("expires_in", 3600))
        except (ValueError, KeyError, TypeError):
            raise TransientApiError(f"{OP_TOKEN}: unexpected answer", status=200) from None
        self._caller.redactor.add(token)
        self._token = SecretStr(token)
        self._expires_at = time.monotonic() + expires_in


class AmazonAdapter:
    """Pushes availability and shipment confirmations to one Amazon-style seller account."""

    #: One SKU per patchListingsItem call: the API has no batch form for it.
    max_batch = 1
    inventory_operation = OP_PATCH
    fulfillment_operation = OP_CONFIRM

    def __init__(
        self, channel: str, config: AmazonChannelConfig, caller: ApiCaller, lwa: LwaTokenProvider
    ) -> None:
        self.channel = channel
        self.config = config
        self._caller = caller
        self._lwa = lwa

    # -- mapping -------------------------------------------------------------------------------

    def seller_sku(self, key: str) -> str | None:
        """The seller SKU of a record key (or of a plain sku), or None when unmapped."""
        mapped = self.config.seller_skus.get(key)
        if mapped is not None:
            return mapped
        sku, _, warehouse = key.partition("|")
        if warehouse:
            # A per-warehouse key needs an explicit mapping: one listing has one quantity.
            return None
        mapped = self.config.seller_skus.get(sku)
        if mapped is not None:
            return mapped
        return sku if self.config.identity_skus else None

    def remote_id(self, key: str) -> str | None:
        return self.seller_sku(key)

    # -- inventory -----------------------------------------------------------------------------

    def push(self, updates: Sequence[InventoryUpdate], deadline: float) -> list[PushResult]:
        """Submit each update with patchListingsItem (the sink sends one at a time)."""
        return [self._push_one(update, deadline) for update in updates]

    def _push_one(self, update: InventoryUpdate, deadline: float) -> PushResult:
        seller_sku = self.seller_sku(update.key)
        if seller_sku is None:
            return PushResult(
                update.key,
                update.version,
                PushStatus.REJECTED,
                code="UNMAPPED_KEY",
                detail="no seller SKU configured for this key",
            )
        body = {
            "productType": self.config.product_type,
            "patches": [
                {
                    "op": "replace",
                    "path": "/attributes/fulfillment_availability",
                    "value": [
                        {
                            "fulfillment_channel_code": self.config.fulfillment_channel_code,
                            "quantity": update.quantity,
                        }
                    ],
                }
            ],
        }
        response = self._request(
            OP_PATCH,
            "PATCH",
            self._listing_path(seller_sku),
            deadline,
            params={"marketplaceIds": self.config.marketplace_id},
            json=body,
        )
        detail = self._caller.redactor.body(response.content)
        if response.status_code != 200:
            return PushResult(
                update.key,
                update.version,
                PushStatus.REJECTED,
                response.status_code,
                detail,
                code=_error_code(response),
            )
        try:
            answer = response.json()
        except ValueError:
            raise TransientApiError(
                f"{OP_PATCH}: answer is not JSON", status=200, detail=detail
            ) from None
        status = str(answer.get("status", ""))
        if status == "ACCEPTED":
            return PushResult(
                update.key,
                update.version,
                PushStatus.PENDING,
                200,
                code=str(answer.get("submissionId", "")),
            )
        issues = [i for i in answer.get("issues") or [] if i.get("severity") == "ERROR"]
        code = str(issues[0].get("code")) if issues else status or "UNKNOWN_STATUS"
        return PushResult(update.key, update.version, PushStatus.REJECTED, 200, detail, code=code)

    def read(self, keys: Sequence[str], deadline: float) -> dict[str, int | None]:
        """Read-back: the listing's fulfillment quantity per key (None when unknown)."""
        out: dict[str, int | None] = {}
        for key in keys:
            seller_sku = self.seller_sku(key)
            out[key] = None if seller_sku is None else self.read_quantity(seller_sku, deadline)
        return out

    def read_quantity(self, seller_sku: str, deadline: float) -> int | None:
        response = self._request(
            OP_GET,
            "GET",
            self._listing_path(seller_sku),
            deadline,
            params={
                "marketplaceIds": self.config.marketplace_id,
                "includedData": "fulfillmentAvailability",
            },
        )
        if response.status_code != 200:
            return None
        try:
            entries = response.json().get("fulfillmentAvailability") or []
        except ValueError:
            return None
        for entry in entries:
            if entry.get("fulfillmentChannelCode") == self.config.fulfillment_channel_code:
                quantity = entry.get("quantity")
                return int(quantity) if quantity is not None else None
        return None

    # -- fulfillment ---------------------------------------------------------------------------

    def fulfill(self, request: FulfillmentRequest, deadline: float) -> PushResult:
        """Confirm the shipment of one package of an order."""
        items = self._order_items(request.channel_order_id, deadline)
        if items is None:
            return PushResult(
                request.key,
                0,
                PushStatus.REJECTED,
                404,
                code="ORDER_NOT_FOUND",
                detail=f"order {request.channel_order_id} not found",
            )
        order_items, short = self._allocate(items, request)
        if not order_items:
            return PushResult(
                request.key,
                0,
                PushStatus.REJECTED,
                200,
                code="NOTHING_TO_CONFIRM",
                detail=f"no order item for {sorted(short)}",
            )
        carrier_code = self.config.carrier_codes.get(request.carrier, "Other")
        package: dict[str, Any] = {
            "packageReferenceId": package_reference_id(request.shipment_id),
            "carrierCode": carrier_code,
            "trackingNumber": request.tracking_number,
            "shipDate": _iso8601(request.shipped_at),
            "orderItems": [{"orderItemId": oid, "quantity": qty} for oid, qty in order_items],
        }
        if carrier_code == "Other":
            package["carrierName"] = request.carrier
        response = self._request(
            OP_CONFIRM,
            "POST",
            f"/orders/v0/orders/{quote(request.channel_order_id, safe='')}/shipmentConfirmation",
            deadline,
            json={"marketplaceId": self.config.marketplace_id, "packageDetail": package},
        )
        if response.status_code in (200, 204):
            return PushResult(
                request.key,
                0,
                PushStatus.APPLIED,
                response.status_code,
                code="PARTIAL" if short else "",
            )
        return PushResult(
            request.key,
            0,
            PushStatus.REJECTED,
            response.status_code,
            self._caller.redactor.body(response.content),
            code=_error_code(response),
        )

    def _order_items(self, order_id: str, deadline: float) -> list[dict[str, Any]] | None:
        items: list[dict[str, Any]] = []
        params: dict[str, str] = {}
        for _page in range(20):
            response = self._request(
                OP_ORDER_ITEMS,
                "GET",
                f"/orders/v0/orders/{quote(order_id, safe='')}/orderItems",
                deadline,
                params=params or None,
            )
            if response.status_code == 404:
                return None
            if response.status_code != 200:
                raise TransientApiError(
                    f"{OP_ORDER_ITEMS}: HTTP {response.status_code}",
                    status=response.status_code,
                    detail=self._caller.redactor.body(response.content),
                )
            payload = (response.json() or {}).get("payload") or {}
            items.extend(payload.get("OrderItems") or [])
            next_token = payload.get("NextToken")
            if not next_token:
                break
            params = {"NextToken": str(next_token)}
        return items

    def _allocate(
        self, items: list[dict[str, Any]], request: FulfillmentRequest
    ) -> tuple[list[tuple[str, int]], set[str]]:
        # Capacity is the ordered quantity, not ordered minus shipped: a repeat of the same
        # package must produce the same request (an edit), whatever Amazon recorded meanwhile.
        capacity = [
            [str(i.get("OrderItemId")), str(i.get("SellerSKU")), int(i.get("QuantityOrdered") or 0)]
            for i in items
        ]
        out: dict[str, int] = {}
        short: set[str] = set()
        for line in request.lines:
            seller_sku = self.seller_sku(line.sku) or line.sku
            need = line.qty
            for entry in capacity:
                if need <= 0:
                    break
                if entry[1] != seller_sku or entry[2] <= 0:
                    continue
                take = min(need, entry[2])
                entry[2] -= take
                need -= take
                out[entry[0]] = out.get(entry[0], 0) + take
            if need > 0:
                short.add(line.sku)
        return list(out.items()), short

    # -- transport -----------------------------------------------------------------------------

    def _listing_path(self, seller_sku: str) -> str:
        # SKUs may hold characters that must be encoded (documented "URL Encoding" note).
        return f"{_LISTINGS}/{quote(self.config.seller_id, safe='')}/{quote(seller_sku, safe='')}"

    def _request(
        self,
        operation: str,
        method: str,
        path: str,
        deadline: float,
        *,
        params: dict[str, str] | None = None,
        json: Any = None,
    ) -> httpx.Response:
        """One SP-API call with the access token; a 403 refreshes the token and retries once."""
        for attempt in range(2):
            token = self._lwa.token(deadline)
            response = self._caller.send(
                operation,
                method,
                f"{self.config.base_url}{path}",
                deadline=deadline,
                params=params,
                json=json,
                headers={
                    "x-amz-access-token": token,
                    "Accept": "application/json",
                    "User-Agent": "atpflow/0.1 (Language=Python)",
                },
            )
            self._learn_rate(operation, response)
            if response.status_code == 403:
                self._lwa.invalidate()
                if attempt == 0:
                    continue
                raise ApiAuthError(
                    f"{operation}: HTTP 403",
                    status=403,
                    detail=self._caller.redactor.body(response.content),
                )
            return response
        raise AssertionError("unreachable")

    def _learn_rate(self, operation: str, response: httpx.Response) -> None:
        header = response.headers.get("x-amzn-ratelimit-limit")
        if header:
            try:
                self._caller.limiter.learn_rate(operation, float(header))
            except ValueError:
                pass


def _error_code(response: httpx.Response) -> str:
    try:
        errors = response.json().get("errors") or []
        return str(errors[0].get("code") or f"HTTP_{response.status_code}")
    except (ValueError, AttributeError, IndexError, TypeError):
        return f"HTTP_{response.status_code}"


def _iso8601(epoch_ms: int | None) -> str:
    when = (
        datetime.fromtimestamp(epoch_ms / 1000, UTC) if epoch_ms is not None else datetime.now(UTC)
    )
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")
