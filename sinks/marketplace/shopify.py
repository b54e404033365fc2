"""Shopify-style adapter: GraphQL Admin API inventory and fulfillment writes.

Contracts followed (Admin GraphQL API, version from the config, default 2026-04):

- ``inventorySetQuantities`` sets *absolute* quantities of the ``available`` name for many
  (inventory item, location) pairs in one call
  (https://shopify.dev/docs/api/admin-graphql/latest/mutations/inventorySetQuantities,
  input https://shopify.dev/docs/api/admin-graphql/latest/input-objects/InventorySetQuantitiesInput).
  Each quantity carries ``changeFromQuantity``, the compare-and-swap value: the value we believe is
  live, or an explicit null when we do not know it
  (https://shopify.dev/changelog/compare-and-swap-for-inventory-mutations-with-change-from-quantity,
  https://shopify.dev/changelog/making-changefromquantity-field-required). A mismatch answers the
  userError ``CHANGE_FROM_QUANTITY_STALE``
  (https://shopify.dev/docs/api/admin-graphql/latest/enums/InventorySetQuantitiesUserErrorCode):
  we then read the live value through
  ``inventoryItem { inventoryLevel(locationId:) { quantities(names: ["available"]) } }`` and write
  again with the corrected compare value. Our value still wins: the dataflow is the source of truth
  for availability, the compare only protects against writing over a change we have not seen.
- ``@idempotent(key:)`` on the mutation, mandatory from 2026-04
  (https://shopify.dev/changelog/making-idempotency-mandatory-for-inventory-adjustments-and-refund-mutations,
  https://shopify.dev/docs/api/usage/idempotent-requests). The key is derived from the channel and
  the (key, version, compare value) of every quantity in the call, so a retry after a lost answer
  is recognised, and a corrected write gets a fresh key.
- Rate limit: calculated query cost in a leaky bucket per app and store; every answer reports
  ``extensions.cost.throttleStatus`` and an over-budget call answers a ``THROTTLED`` error
  (https://shopify.dev/docs/apps/build/apis/graphql-admin/rate-limits).
- Authentication: the ``X-Shopify-Access-Token`` header.
- ``fulfillmentCreate`` with ``lineItemsByFulfillmentOrder`` and ``trackingInfo {company, number}``
  (https://shopify.dev/docs/api/admin-graphql/latest/mutations/fulfillmentCreate,
  https://shopify.dev/docs/api/admin-graphql/latest/input-objects/FulfillmentInput); the
  fulfillment order line items come from ``order { fulfillmentOrders { lineItems { id sku
  remainingQuantity } } }``. Repeats are harmless twice over: the order's existing fulfillments
  are checked for the tracking number first, and the mutation carries an idempotency key derived
  from the order and shipment ids.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from pydantic import SecretStr

from ._metrics import metric
from .config import ShopifyChannelConfig
from .errors import (
    ApiAuthError,
    ApiUnavailableError,
    MarketplaceError,
    ThrottledError,
    TransientApiError,
)
from .models import (
    FulfillmentRequest,
    InventoryUpdate,
    PushResult,
    PushStatus,
    idempotency_key,
)
from .transport import ApiCaller

__all__ = ["ShopifyAdapter"]

_log = logging.getLogger("atpflow.marketplace")

OP_SET = "inventorySetQuantities"
OP_READ = "inventoryLevel"
OP_ORDER = "order"
OP_FULFILL = "fulfillmentCreate"
#: All operations share one endpoint, hence one circuit breaker.
ENDPOINT = "graphql"

_STALE_CODES = frozenset({"CHANGE_FROM_QUANTITY_STALE", "COMPARE_QUANTITY_STALE"})
_REKEY_CODES = frozenset(
    {"IDEMPOTENCY_KEY_PARAMETER_MISMATCH", "IDEMPOTENCY_PREVIOUS_ATTEMPT_FAILED"}
)
#: Corrected writes per push before giving the keys back to the sink as RETRY.
_MAX_ROUNDS = 4
#: Aliased reads per query: keeps one query's requested cost well inside the bucket.
_READ_CHUNK = 25

SET_MUTATION = """
mutation SetAvailable($input: InventorySetQuantitiesInput!, $idempotencyKey: String!) {
  inventorySetQuantities(input: $input) @idempotent(key: $idempotencyKey) {
    inventoryAdjustmentGroup { id }
    userErrors { code field message }
  }
}
""".strip()

ORDER_QUERY = """
query OrderForFulfillment($id: ID!) {
  order(id: $id) {
    id
    fulfillments(first: 50) { id status trackingInfo(first: 10) { company number } }
    fulfillmentOrders(first: 20) {
      nodes { id status lineItems(first: 100) { nodes { id sku remainingQuantity } } }
    }
  }
}
""".strip()

_FULFILL_TEMPLATE = """
mutation CreateFulfillment($fulfillment: FulfillmentInput!{key_var}) {{
  fulfillmentCreate(fulfillment: $fulfillment){directive} {{
    fulfillment {{ id status trackingInfo {{ company number }} }}
    userErrors {{ field message }}
  }}
}}
""".strip()


class _RequestRejected(MarketplaceError):
    """The whole request was refused for good (a GraphQL error, a 4xx): not worth a retry."""


def _field_index(field: object) -> int | None:
    """The quantity index in a userError's field path (``["input", "quantities", "3", ...]``)."""
    if not isinstance(field, list):
        return None
    for i, part in enumerate(field[:-1]):
        if part == "quantities":
            try:
                return int(field[i + 1])
            except (TypeError, ValueError):
                return None
    return None


def _read_query(count: int) -> str:
    params = ", ".join(f"$i{n}: ID!, $l{n}: ID!" for n in range(count))
    fields = " ".join(
        f"q{n}: inventoryItem(id: $i{n}) {{ inventoryLevel(locationId: $l{n}) "
        f'{{ quantities(names: ["available"]) {{ name quantity }} }} }}'
        for n in range(count)
    )
    return f"query ReadAvailable({params}) {{ {fields} }}"


class ShopifyAdapter:
    """Pushes availability and fulfillments to one Shopify-style shop."""

    inventory_operation = OP_SET
    fulfillment_operation = OP_FULFILL

    def __init__(
        self,
        channel: str,
        config: ShopifyChannelConfig,
        caller: ApiCaller,
        access_token: SecretStr,
    ) -> None:
        self.channel = channel
        self.config = config
        self.max_batch = config.batch_size
        self._caller = caller
        self._token = access_token
        self._url = f"{config.base_url}/admin/api/{config.api_version}/graphql.json"
        caller.redactor.add(access_token.get_secret_value())

    # -- mapping -------------------------------------------------------------------------------

    def resolve(self, key: str) -> tuple[str, str] | None:
        """(InventoryItem GID, Location GID) of a record key, or None when unmapped."""
        sku, _, warehouse = key.partition("|")
        item = self.config.inventory_items.get(sku)
        location = (
            self.config.locations.get(warehouse) if warehouse else self.config.default_location_id
        )
        if item is None or location is None:
            return None
        return item, location

    def remote_id(self, key: str) -> str | None:
        """The identity of a key at the API (two keys mapped to one level would share it)."""
        resolved = self.resolve(key)
        return f"{resolved[0]}@{resolved[1]}" if resolved else None

    # -- inventory -----------------------------------------------------------------------------

    def push(self, updates: Sequence[InventoryUpdate], deadline: float) -> list[PushResult]:
        """Set the available quantities of ``updates`` in as few calls as corrections allow.

        Raises the transport's transient or outage errors for the batch as a whole; per-item
        outcomes (applied, rejected, still stale) come back as results.
        """
        results: dict[str, PushResult] = {}
        work: list[tuple[InventoryUpdate, str, str]] = []
        for update in updates:
            resolved = self.resolve(update.key)
            if resolved is None:
                results[update.key] = PushResult(
                    update.key,
                    update.version,
                    PushStatus.REJECTED,
                    code="UNMAPPED_KEY",
                    detail="no inventory item or location configured for this key",
                )
            else:
                work.append((update, *resolved))
        expected = {u.key: u.expected for u, _, _ in work}
        salt = 0
        for _round in range(_MAX_ROUNDS):
            if not work:
                break
            variables = {
                "input": {
                    "name": "available",
                    "reason": self.config.reason,
                    "referenceDocumentUri": f"gid://atpflow/ChannelAvailability/{self.channel}",
                    "quantities": [
                        {
                            "inventoryItemId": item,
                            "locationId": location,
                            "quantity": u.quantity,
                            # Explicit null opts this quantity out of the compare (documented).
                            "changeFromQuantity": expected[u.key],
                        }
                        for u, item, location in work
                    ],
                },
                "idempotencyKey": idempotency_key(
                    self.channel,
                    ["set", salt, *[f"{u.key}@{u.version}:{expected[u.key]}" for u, _, _ in work]],
                ),
            }
            try:
                data = self._graphql(
                    OP_SET, SET_MUTATION, variables, self.config.costs.mutation, deadline
                )
            except _RequestRejected as exc:
                for u, _, _ in work:
                    results[u.key] = PushResult(
                        u.key,
                        u.version,
                        PushStatus.REJECTED,
                        exc.status,
                        exc.detail,
                        code="REQUEST_REJECTED",
                    )
                work = []
                break
            payload = data.get(OP_SET) or {}
            errors = payload.get("userErrors") or []
            if not errors:
                for u, _, _ in work:
                    results[u.key] = PushResult(
                        u.key, u.version, PushStatus.APPLIED, 200, remote_quantity=u.quantity
                    )
                work = []
                break
            work, salt = self._handle_user_errors(work, errors, expected, results, salt, deadline)
        for u, _, _ in work:
            results[u.key] = PushResult(
                u.key,
                u.version,
                PushStatus.RETRY,
                200,
                code="STALE_AFTER_CORRECTIONS",
                detail="the compare value kept changing under us",
            )
        return [results[u.key] for u in updates]

    def _handle_user_errors(
        self,
        work: list[tuple[InventoryUpdate, str, str]],
        errors: list[dict[str, Any]],
        expected: dict[str, int | None],
        results: dict[str, PushResult],
        salt: int,
        deadline: float,
    ) -> tuple[list[tuple[InventoryUpdate, str, str]], int]:
        """Sort the userErrors of one attempt; return the quantities to try again and the salt."""
        stale: set[int] = set()
        rejected: dict[int, dict[str, Any]] = {}
        for error in errors:
            code = str(error.get("code") or "")
            index = _field_index(error.get("field"))
            if code in _STALE_CODES:
                stale.update(range(len(work)) if index is None else {index})
            elif code == "IDEMPOTENCY_CONCURRENT_REQUEST":
                # The same key is still being processed: the retry must keep the key.
                raise TransientApiError(
                    f"{OP_SET}: {code}", status=200, detail=self._caller.redactor.body(error)
                )
            elif code in _REKEY_CODES:
                salt += 1
            elif index is not None and 0 <= index < len(work):
                rejected[index] = error
            else:
                for i in range(len(work)):
                    rejected.setdefault(i, error)
        for index, error in rejected.items():
            u = work[index][0]
            results[u.key] = PushResult(
                u.key,
                u.version,
                PushStatus.REJECTED,
                200,
                self._caller.redactor.body(error),
                code=str(error.get("code") or "USER_ERROR"),
            )
        stale -= rejected.keys()
        if stale:
            pairs = [(work[i][1], work[i][2]) for i in sorted(stale)]
            current = self.read_levels(pairs, deadline)
            for i, value in zip(sorted(stale), current, strict=True):
                expected[work[i][0].key] = value
        return [w for i, w in enumerate(work) if i not in rejected], salt

    def read_levels(self, pairs: Sequence[tuple[str, str]], deadline: float) -> list[int | None]:
        """The ``available`` quantity of each (item, location) pair; None where there is none."""
        out: list[int | None] = []
        for start in range(0, len(pairs), _READ_CHUNK):
            chunk = pairs[start : start + _READ_CHUNK]
            variables: dict[str, str] = {}
            for n, (item, location) in enumerate(chunk):
                variables[f"i{n}"] = item
                variables[f"l{n}"] = location
            data = self._graphql(
                OP_READ,
                _read_query(len(chunk)),
                variables,
                self.config.costs.read_per_item * len(chunk),
                deadline,
            )
            for n in range(len(chunk)):
                out.append(_available_of(data.get(f"q{n}")))
        return out

    def read(self, keys: Sequence[str], deadline: float) -> dict[str, int | None]:
        """Read-back for drift checks: the live available quantity per key (None if unknown)."""
        mapped = [(k, self.resolve(k)) for k in keys]
        known = [(k, r) for k, r in mapped if r is not None]
        out: dict[str, int | None] = {k: None for k in keys}
        if not known:
            return out
        try:
            values = self.read_levels([r for _, r in known], deadline)
        except _RequestRejected:
            return out
        for (key, _), value in zip(known, values, strict=True):
            out[key] = value
        return out

    # -- fulfillment ---------------------------------------------------------------------------

    def fulfill(self, request: FulfillmentRequest, deadline: float) -> PushResult:
        """Create the fulfillment of one shipment, unless the order already has it."""
        order_id = request.channel_order_id
        order_gid = order_id if order_id.startswith("gid://") else f"gid://shopify/Order/{order_id}"
        try:
            data = self._graphql(
                OP_ORDER, ORDER_QUERY, {"id": order_gid}, self.config.costs.order_query, deadline
            )
        except _RequestRejected as exc:
            return PushResult(
                request.key, 0, PushStatus.REJECTED, exc.status, exc.detail, code="REQUEST_REJECTED"
            )
        order = data.get("order")
        if not order:
            return PushResult(
                request.key,
                0,
                PushStatus.REJECTED,
                200,
                code="ORDER_NOT_FOUND",
                detail=f"order {order_gid} not found",
            )
        for fulfillment in order.get("fulfillments") or []:
            if fulfillment.get("status") in ("CANCELLED", "ERROR", "FAILURE"):
                continue
            if any(
                t.get("number") == request.tracking_number
                for t in fulfillment.get("trackingInfo") or []
            ):
                return PushResult(request.key, 0, PushStatus.APPLIED, 200, code="ALREADY_FULFILLED")
        by_order, short = _allocate(order, request)
        if not by_order:
            return PushResult(
                request.key,
                0,
                PushStatus.REJECTED,
                200,
                code="NOTHING_TO_FULFILL",
                detail=f"no remaining quantity for {sorted(short)}",
            )
        with_key = self.config.fulfillment_idempotency
        mutation = _FULFILL_TEMPLATE.format(
            key_var=", $idempotencyKey: String!" if with_key else "",
            directive=" @idempotent(key: $idempotencyKey)" if with_key else "",
        )
        variables: dict[str, Any] = {
            "fulfillment": {
                "lineItemsByFulfillmentOrder": [
                    {
                        "fulfillmentOrderId": fo_id,
                        "fulfillmentOrderLineItems": [{"id": li, "quantity": q} for li, q in items],
                    }
                    for fo_id, items in by_order.items()
                ],
                "trackingInfo": {"company": request.carrier, "number": request.tracking_number},
                "notifyCustomer": False,
            }
        }
        if with_key:
            variables["idempotencyKey"] = idempotency_key(
                self.channel, ["fulfill", request.channel_order_id, request.shipment_id]
            )
        try:
            data = self._graphql(
                OP_FULFILL, mutation, variables, self.config.costs.mutation, deadline
            )
        except _RequestRejected as exc:
            return PushResult(
                request.key, 0, PushStatus.REJECTED, exc.status, exc.detail, code="REQUEST_REJECTED"
            )
        payload = data.get(OP_FULFILL) or {}
        errors = payload.get("userErrors") or []
        if errors or not payload.get("fulfillment"):
            return PushResult(
                request.key,
                0,
                PushStatus.REJECTED,
                200,
                self._caller.redactor.body(errors),
                code="USER_ERROR",
            )
        return PushResult(request.key, 0, PushStatus.APPLIED, 200, code="PARTIAL" if short else "")

    # -- transport -----------------------------------------------------------------------------

    def _graphql(
        self, operation: str, query: str, variables: dict[str, Any], cost: float, deadline: float
    ) -> dict[str, Any]:
        """POST one GraphQL document; return ``data`` or raise the matching error."""
        redactor = self._caller.redactor
        response = self._caller.send(
            operation,
            "POST",
            self._url,
            endpoint=ENDPOINT,
            cost=cost,
            deadline=deadline,
            headers={
                "X-Shopify-Access-Token": self._token.get_secret_value(),
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
            json={"query": query, "variables": variables},
        )
        status = response.status_code
        if status in (401, 403):
            raise ApiAuthError(
                f"{operation}: HTTP {status}", status=status, detail=redactor.body(response.content)
            )
        if status == 404:
            # A wrong shop URL or API version: an operator problem; keep the backlog.
            raise ApiUnavailableError(
                f"{operation}: HTTP 404", status=404, detail=redactor.body(response.content)
            )
        if status >= 400:
            raise _RequestRejected(
                f"{operation}: HTTP {status}", status=status, detail=redactor.body(response.content)
            )
        try:
            body = response.json()
        except ValueError:
            raise TransientApiError(
                f"{operation}: answer is not JSON",
                status=status,
                detail=redactor.body(response.content),
            ) from None
        cost_info = (body.get("extensions") or {}).get("cost") or {}
        throttle = cost_info.get("throttleStatus") or {}
        if "currentlyAvailable" in throttle:
            self._caller.limiter.observe(operation, float(throttle["currentlyAvailable"]))
        errors = body.get("errors")
        if errors:
            codes = {
                str((e.get("extensions") or {}).get("code", ""))
                for e in errors
                if isinstance(e, dict)
            }
            if "THROTTLED" in codes:
                retry_after = _throttle_wait(cost_info)
                self._caller.limiter.penalize(operation, retry_after)
                metric("MARKETPLACE_THROTTLED").labels(
                    channel=self.channel, operation=operation
                ).inc()
                raise ThrottledError(
                    f"{operation}: THROTTLED",
                    status=status,
                    detail=redactor.body(body),
                    retry_after=retry_after,
                )
            if codes & {"INTERNAL_SERVER_ERROR", "SERVICE_UNAVAILABLE", "TIMEOUT"}:
                raise TransientApiError(
                    f"{operation}: {sorted(codes)}", status=status, detail=redactor.body(body)
                )
            if "ACCESS_DENIED" in codes:
                raise ApiAuthError(
                    f"{operation}: ACCESS_DENIED", status=status, detail=redactor.body(body)
                )
            raise _RequestRejected(
                f"{operation}: GraphQL errors", status=status, detail=redactor.body(body)
            )
        data = body.get("data")
        if not isinstance(data, dict):
            raise TransientApiError(
                f"{operation}: answer has no data", status=status, detail=redactor.body(body)
            )
        return data


def _throttle_wait(cost: dict[str, Any]) -> float:
    """Seconds until the bucket holds the requested cost again (from ``throttleStatus``)."""
    throttle = cost.get("throttleStatus") or {}
    try:
        requested = float(cost.get("requestedQueryCost") or 0)
        available = float(throttle.get("currentlyAvailable") or 0)
        rate = float(throttle.get("restoreRate") or 0)
    except (TypeError, ValueError):
        return 1.0
    if rate <= 0:
        return 1.0
    return max(0.05, (requested - available) / rate)


def _available_of(item: Any) -> int | None:
    if not isinstance(item, dict):
        return None
    level = item.get("inventoryLevel")
    if not isinstance(level, dict):
        return None
    for quantity in level.get("quantities") or []:
        if quantity.get("name") == "available":
            return int(quantity["quantity"])
    return None


def _allocate(
    order: dict[str, Any], request: FulfillmentRequest
) -> tuple[dict[str, list[tuple[str, int]]], set[str]]:
    """Spread the shipment's lines over the open fulfillment order line items, by SKU.

    Returns {fulfillment order id: [(line item id, qty)]} and the SKUs that could not be placed
    in full (an over-shipment, or a line already fulfilled elsewhere).
    """
    remaining: list[list[Any]] = []  # [fo id, li id, sku, remaining]
    for fo in (order.get("fulfillmentOrders") or {}).get("nodes") or []:
        if fo.get("status") not in ("OPEN", "IN_PROGRESS"):
            continue
        for li in (fo.get("lineItems") or {}).get("nodes") or []:
            if int(li.get("remainingQuantity") or 0) > 0:
                remaining.append([fo["id"], li["id"], li.get("sku"), int(li["remainingQuantity"])])
    by_order: dict[str, list[tuple[str, int]]] = {}
    short: set[str] = set()
    for line in request.lines:
        need = line.qty
        for entry in remaining:
            if need <= 0:
                break
            if entry[2] != line.sku or entry[3] <= 0:
                continue
            take = min(need, entry[3])
            entry[3] -= take
            need -= take
            by_order.setdefault(entry[0], []).append((entry[1], take))
        if need > 0:
            short.add(line.sku)
    return by_order, short
