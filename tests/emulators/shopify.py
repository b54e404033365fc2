"""An emulator of the Shopify GraphQL Admin API: the inventory and fulfillment subset atpflow uses.

Requests are parsed, validated and executed with graphql-core against a schema transcribed from
the documented types (InventorySetQuantitiesInput, InventoryQuantityInput with
``changeFromQuantity``, InventorySetQuantitiesUserErrorCode, FulfillmentInput, ...), so a wrong
field, type or argument is refused exactly as a GraphQL server would refuse it. Behaviour:

- ``X-Shopify-Access-Token`` must match, else 401 as Shopify answers it.
- Calculated query cost in a leaky bucket (``max_available`` points, ``restore_rate`` points/s):
  a mutation costs 10, a query 1 per selected object field (connections are not multiplied by
  ``first``: a simplification). Over budget: a ``THROTTLED`` error with ``extensions.cost``
  (HTTP 200, as GraphQL errors are) plus a Retry-After header. Every answer reports
  ``extensions.cost.throttleStatus``.
- ``inventorySetQuantities`` requires ``@idempotent(key:)`` and ``changeFromQuantity`` on every
  quantity (the 2026-04 contract), applies all quantities or none, answers
  ``CHANGE_FROM_QUANTITY_STALE`` per stale quantity, and remembers each key: the same key with the
  same input returns the first answer without applying again; with another input it answers
  ``IDEMPOTENCY_KEY_PARAMETER_MISMATCH``; after a failed attempt
  ``IDEMPOTENCY_PREVIOUS_ATTEMPT_FAILED``.
- ``fulfillmentCreate`` checks fulfillment order line items and remaining quantities and honours
  ``@idempotent(key:)`` the same way (no second fulfillment for a repeated key).
"""

from __future__ import annotations

import itertools
import json
import math
import re
import threading
import time
from typing import Any

from graphql import (
    GraphQLError,
    GraphQLSchema,
    OperationDefinitionNode,
    OperationType,
    TypeInfo,
    TypeInfoVisitor,
    Visitor,
    build_schema,
    execute,
    get_named_type,
    is_object_type,
    parse,
    validate,
    visit,
)
from graphql.execution.values import get_directive_values

from .base import EmulatorServer, Request, Response

__all__ = ["SHOPIFY_SDL", "ShopifyEmulator"]

SHOPIFY_SDL = """
directive @idempotent(key: String!) on FIELD

type Query {
  inventoryItem(id: ID!): InventoryItem
  order(id: ID!): Order
}

type Mutation {
  inventorySetQuantities(input: InventorySetQuantitiesInput!): InventorySetQuantitiesPayload
  fulfillmentCreate(fulfillment: FulfillmentInput!, message: String): FulfillmentCreatePayload
}

type InventoryItem { id: ID! sku: String inventoryLevel(locationId: ID!): InventoryLevel }
type InventoryLevel {
  id: ID!
  location: Location!
  quantities(names: [String!]!): [InventoryQuantity!]!
}
type Location { id: ID! }
type InventoryQuantity { id: ID! name: String! quantity: Int! }

input InventorySetQuantitiesInput {
  name: String!
  reason: String!
  referenceDocumentUri: String
  quantities: [InventoryQuantityInput!]!
}
input InventoryQuantityInput {
  inventoryItemId: ID!
  locationId: ID!
  quantity: Int!
  changeFromQuantity: Int
}
type InventorySetQuantitiesPayload {
  inventoryAdjustmentGroup: InventoryAdjustmentGroup
  userErrors: [InventorySetQuantitiesUserError!]!
}
type InventoryAdjustmentGroup { id: ID! reason: String! referenceDocumentUri: String }
type InventorySetQuantitiesUserError {
  code: InventorySetQuantitiesUserErrorCode
  field: [String!]
  message: String!
}
enum InventorySetQuantitiesUserErrorCode {
  CHANGE_FROM_QUANTITY_STALE COMPARE_QUANTITY_REQUIRED COMPARE_QUANTITY_STALE
  IDEMPOTENCY_CONCURRENT_REQUEST IDEMPOTENCY_KEY_PARAMETER_MISMATCH
  IDEMPOTENCY_PREVIOUS_ATTEMPT_FAILED
  INVALID_INVENTORY_ITEM INVALID_LOCATION INVALID_NAME INVALID_QUANTITY_NEGATIVE
  INVALID_QUANTITY_TOO_HIGH
  INVALID_QUANTITY_TOO_LOW INVALID_REASON INVALID_REFERENCE_DOCUMENT ITEM_NOT_STOCKED_AT_LOCATION
  NO_DUPLICATE_INVENTORY_ITEM_ID_GROUP_ID_PAIR NON_MUTABLE_INVENTORY_ITEM
}

type Order {
  id: ID!
  name: String!
  fulfillments(first: Int): [Fulfillment!]!
  fulfillmentOrders(first: Int!): FulfillmentOrderConnection!
}
type FulfillmentOrderConnection { nodes: [FulfillmentOrder!]! }
type FulfillmentOrder {
  id: ID!
  status: FulfillmentOrderStatus!
  lineItems(first: Int!): FulfillmentOrderLineItemConnection!
}
enum FulfillmentOrderStatus { OPEN IN_PROGRESS CLOSED CANCELLED INCOMPLETE ON_HOLD SCHEDULED }
type FulfillmentOrderLineItemConnection { nodes: [FulfillmentOrderLineItem!]! }
type FulfillmentOrderLineItem { id: ID! sku: String remainingQuantity: Int! totalQuantity: Int! }
type Fulfillment {
  id: ID!
  status: FulfillmentStatus!
  trackingInfo(first: Int): [FulfillmentTrackingInfo!]!
}
enum FulfillmentStatus { SUCCESS CANCELLED ERROR FAILURE OPEN PENDING }
type FulfillmentTrackingInfo { company: String number: String url: String }

input FulfillmentInput {
  lineItemsByFulfillmentOrder: [FulfillmentOrderLineItemsInput!]!
  notifyCustomer: Boolean
  trackingInfo: FulfillmentTrackingInput
}
input FulfillmentOrderLineItemsInput {
  fulfillmentOrderId: ID!
  fulfillmentOrderLineItems: [FulfillmentOrderLineItemInput!]
}
input FulfillmentOrderLineItemInput { id: ID! quantity: Int! }
input FulfillmentTrackingInput {
  company: String
  number: String
  numbers: [String!]
  url: String
  urls: [String!]
}
type FulfillmentCreatePayload { fulfillment: Fulfillment userErrors: [UserError!]! }
type UserError { field: [String!] message: String! }
"""

_ITEM_RE = re.compile(r"^gid://shopify/InventoryItem/\d+$")
_LOCATION_RE = re.compile(r"^gid://shopify/Location/\d+$")
_VERSION_RE = re.compile(r"^/admin/api/(\d{4}-\d{2}|unstable)/graphql\.json$")
#: A subset of the documented reasons for inventory changes.
_REASONS = frozenset(
    {
        "correction",
        "cycle_count_available",
        "damaged",
        "movement_created",
        "movement_updated",
        "movement_received",
        "movement_canceled",
        "other",
        "promotion",
        "quality_control",
        "received",
        "reservation_created",
        "reservation_deleted",
        "reservation_updated",
        "restock",
        "safety_stock",
        "shrinkage",
    }
)
_MUTATION_COST = 10.0


class _CostCounter(Visitor):
    """Counts selected fields whose type is an object (Shopify's default cost of 1 each)."""

    def __init__(self, type_info: TypeInfo) -> None:
        super().__init__()
        self.type_info = type_info
        self.cost = 0

    def enter_field(self, *_args: Any) -> None:
        field_type = self.type_info.get_type()
        if field_type is not None and is_object_type(get_named_type(field_type)):
            self.cost += 1


class ShopifyEmulator:
    """The emulated shop. Start it, point an adapter at `url`, read `available` afterwards."""

    def __init__(
        self,
        access_token: str,
        *,
        max_available: float = 1000.0,
        restore_rate: float = 100.0,
        auto_stock: bool = True,
    ) -> None:
        self.access_token = access_token
        self.max_available = max_available
        self.restore_rate = restore_rate
        self.auto_stock = auto_stock
        self.schema: GraphQLSchema = build_schema(SHOPIFY_SDL)
        self._idempotent_directive = self.schema.get_directive("idempotent")
        self._lock = threading.RLock()
        self._bucket = max_available
        self._bucket_ts = time.monotonic()
        self.levels: dict[tuple[str, str], int] = {}
        self.invalid_items: set[str] = set()
        self.history: list[dict[str, Any]] = []  # applied quantity changes, in order
        self.orders: dict[str, dict[str, Any]] = {}
        self._idempotency: dict[str, tuple[str, dict[str, Any], bool]] = {}
        self._ids = itertools.count(1000)
        self._note = ""
        self.server = EmulatorServer(self._handle, self.state, "shopify")
        self.faults = self.server.faults
        self.log = self.server.log

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> ShopifyEmulator:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def __enter__(self) -> ShopifyEmulator:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- Python API ----------------------------------------------------------------------------

    def available(self, item: str, location: str) -> int | None:
        with self._lock:
            return self.levels.get((item, location))

    def set_available(self, item: str, location: str, quantity: int) -> None:
        """A change made outside atpflow (a sale, a merchant edit)."""
        with self._lock:
            self.levels[(item, location)] = quantity

    def add_order(self, order_id: int | str, lines: list[tuple[str, int]]) -> str:
        """An order with one open fulfillment order holding ``lines`` (sku, quantity)."""
        with self._lock:
            gid = f"gid://shopify/Order/{order_id}"
            fo_id = f"gid://shopify/FulfillmentOrder/{next(self._ids)}"
            items = [
                {
                    "id": f"gid://shopify/FulfillmentOrderLineItem/{next(self._ids)}",
                    "sku": sku,
                    "totalQuantity": qty,
                    "remainingQuantity": qty,
                }
                for sku, qty in lines
            ]
            self.orders[gid] = {
                "id": gid,
                "name": f"#{order_id}",
                "fulfillments": [],
                "fulfillmentOrders": [{"id": fo_id, "status": "OPEN", "lineItems": items}],
            }
            return gid

    def fulfillments(self, order_id: int | str) -> list[dict[str, Any]]:
        gid = (
            str(order_id)
            if str(order_id).startswith("gid://")
            else f"gid://shopify/Order/{order_id}"
        )
        with self._lock:
            return json.loads(json.dumps(self.orders[gid]["fulfillments"]))

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {
                "levels": [
                    {"inventoryItemId": i, "locationId": loc, "available": q}
                    for (i, loc), q in sorted(self.levels.items())
                ],
                "orders": json.loads(json.dumps(self.orders)),
                "bucket": {
                    "maximumAvailable": self.max_available,
                    "restoreRate": self.restore_rate,
                },
            }

    # -- HTTP ----------------------------------------------------------------------------------

    def _handle(self, request: Request) -> Response:
        if request.method != "POST" or not _VERSION_RE.match(request.path):
            return Response(404, {"errors": "Not Found"}, operation="?")
        if request.headers.get("x-shopify-access-token") != self.access_token:
            return Response(
                401,
                {
                    "errors": "[API] Invalid API key or access token "
                    "(unrecognized login or wrong password)"
                },
                operation="auth",
            )
        if not request.headers.get("content-type", "").startswith("application/json"):
            return Response(415, {"errors": "Unsupported Media Type"}, operation="?")
        try:
            body = request.json()
            source = body["query"]
            variables = body.get("variables") or {}
        except (ValueError, KeyError, TypeError):
            return Response(
                400, {"errors": {"query": "Required parameter missing or invalid"}}, operation="?"
            )
        try:
            document = parse(source)
        except GraphQLError as exc:
            return Response(200, {"errors": [exc.formatted]}, operation="parse-error")
        errors = validate(self.schema, document)
        operation = next(
            (d for d in document.definitions if isinstance(d, OperationDefinitionNode)), None
        )
        op_name = _root_field(operation) if operation else "?"
        if errors:
            return Response(
                200, {"errors": [e.formatted for e in errors]}, operation=op_name, note="invalid"
            )
        cost = self._cost(document, operation)
        with self._lock:
            available = self._refill()
            if cost > available:
                wait = (cost - available) / self.restore_rate
                return Response(
                    200,
                    {
                        "errors": [
                            {
                                "message": "Throttled",
                                "extensions": {
                                    "code": "THROTTLED",
                                    "documentation": "https://shopify.dev/api/usage/rate-limits",
                                },
                            }
                        ],
                        "extensions": {"cost": self._cost_ext(cost, None)},
                    },
                    {"Retry-After": f"{math.ceil(wait * 1000) / 1000:g}"},
                    operation=op_name,
                    cost=cost,
                    note="throttled",
                )
            self._bucket -= cost
            self._note = ""
            result = execute(
                self.schema, document, root_value=_Root(self), variable_values=variables
            )
            body_out: dict[str, Any] = {"data": result.data}
            if result.errors:
                body_out["errors"] = [e.formatted for e in result.errors]
            body_out["extensions"] = {"cost": self._cost_ext(cost, cost)}
            return Response(200, body_out, operation=op_name, cost=cost, note=self._note)

    def _cost(self, document: Any, operation: OperationDefinitionNode | None) -> float:
        if operation is not None and operation.operation is OperationType.MUTATION:
            return _MUTATION_COST * len(operation.selection_set.selections)
        type_info = TypeInfo(self.schema)
        counter = _CostCounter(type_info)
        visit(document, TypeInfoVisitor(type_info, counter))
        return float(max(1, counter.cost))

    def _refill(self) -> float:
        now = time.monotonic()
        self._bucket = min(
            self.max_available, self._bucket + (now - self._bucket_ts) * self.restore_rate
        )
        self._bucket_ts = now
        return self._bucket

    def _cost_ext(self, requested: float, actual: float | None) -> dict[str, Any]:
        return {
            "requestedQueryCost": requested,
            "actualQueryCost": actual,
            "throttleStatus": {
                "maximumAvailable": self.max_available,
                "currentlyAvailable": math.floor(self._bucket),
                "restoreRate": self.restore_rate,
            },
        }

    # -- resolvers (called under the lock) -----------------------------------------------------

    def _idempotency_key(self, info: Any) -> str | None:
        values = get_directive_values(
            self._idempotent_directive, info.field_nodes[0], info.variable_values
        )
        return None if values is None else str(values["key"])

    def _replay(self, key: str | None, params: str) -> dict[str, Any] | None:
        """The stored answer for a repeated key, or None when the request is new."""
        if key is None or key not in self._idempotency:
            return None
        stored_params, payload, succeeded = self._idempotency[key]
        if stored_params != params:
            return {
                "userErrors": [
                    {
                        "code": "IDEMPOTENCY_KEY_PARAMETER_MISMATCH",
                        "field": ["idempotencyKey"],
                        "message": "The same idempotency key cannot be used with "
                        "different operation parameters.",
                    }
                ]
            }
        if not succeeded:
            return {
                "userErrors": [
                    {
                        "code": "IDEMPOTENCY_PREVIOUS_ATTEMPT_FAILED",
                        "field": ["idempotencyKey"],
                        "message": "A previous request with this idempotency key failed.",
                    }
                ]
            }
        self._note = "idempotent-replay"
        return payload

    def set_quantities(self, info: Any, input: dict[str, Any]) -> dict[str, Any]:  # noqa: A002 - GraphQL arg
        key = self._idempotency_key(info)
        if key is None:
            raise GraphQLError(
                "The @idempotent directive is required for this mutation.",
                extensions={"code": "BAD_REQUEST"},
            )
        params = json.dumps(input, sort_keys=True)
        replay = self._replay(key, params)
        if replay is not None:
            return (
                {"inventoryAdjustmentGroup": None, **replay}
                if "inventoryAdjustmentGroup" not in replay
                else replay
            )
        errors = self._check_quantities(input)
        if errors:
            payload: dict[str, Any] = {"inventoryAdjustmentGroup": None, "userErrors": errors}
            self._idempotency[key] = (params, payload, False)
            self._note = "user-errors"
            return payload
        for q in input["quantities"]:
            pair = (q["inventoryItemId"], q["locationId"])
            self.history.append(
                {
                    "t": time.time(),
                    "item": pair[0],
                    "location": pair[1],
                    "from": self.levels.get(pair, 0),
                    "to": q["quantity"],
                }
            )
            self.levels[pair] = q["quantity"]
        payload = {
            "inventoryAdjustmentGroup": {
                "id": f"gid://shopify/InventoryAdjustmentGroup/{next(self._ids)}",
                "reason": input["reason"],
                "referenceDocumentUri": input.get("referenceDocumentUri"),
            },
            "userErrors": [],
        }
        self._idempotency[key] = (params, payload, True)
        self._note = "applied"
        return payload

    def _check_quantities(self, input: dict[str, Any]) -> list[dict[str, Any]]:  # noqa: A002
        errors: list[dict[str, Any]] = []

        def err(code: str, field: list[str], message: str) -> None:
            errors.append({"code": code, "field": field, "message": message})

        if input["name"] not in ("available", "on_hand"):
            err(
                "INVALID_NAME",
                ["input", "name"],
                "The quantity name must be either 'available' or 'on_hand'.",
            )
        if input["reason"] not in _REASONS:
            err("INVALID_REASON", ["input", "reason"], "The specified reason is invalid.")
        seen: set[tuple[str, str]] = set()
        for i, q in enumerate(input["quantities"]):
            path = ["input", "quantities", str(i)]
            pair = (q["inventoryItemId"], q["locationId"])
            if "changeFromQuantity" not in q:
                err(
                    "COMPARE_QUANTITY_REQUIRED",
                    [*path, "changeFromQuantity"],
                    "changeFromQuantity must be given (null opts out of the check).",
                )
                continue
            if not _ITEM_RE.match(pair[0]) or pair[0] in self.invalid_items:
                err(
                    "INVALID_INVENTORY_ITEM",
                    [*path, "inventoryItemId"],
                    "The specified inventory item could not be found.",
                )
                continue
            if not _LOCATION_RE.match(pair[1]):
                err(
                    "INVALID_LOCATION",
                    [*path, "locationId"],
                    "The specified location could not be found.",
                )
                continue
            if pair not in self.levels and not self.auto_stock:
                err(
                    "ITEM_NOT_STOCKED_AT_LOCATION",
                    [*path, "locationId"],
                    "The specified inventory item is not stocked at the location.",
                )
                continue
            if pair in seen:
                err(
                    "NO_DUPLICATE_INVENTORY_ITEM_ID_GROUP_ID_PAIR",
                    path,
                    "The combination of inventoryItemId and locationId must be unique.",
                )
                continue
            seen.add(pair)
            if q["quantity"] < 0:
                err(
                    "INVALID_QUANTITY_NEGATIVE",
                    [*path, "quantity"],
                    "The quantity can't be negative.",
                )
            elif q["quantity"] > 1_000_000_000:
                err(
                    "INVALID_QUANTITY_TOO_HIGH",
                    [*path, "quantity"],
                    "The total quantity can't be higher than 1,000,000,000.",
                )
            current = self.levels.get(pair, 0)
            if q["changeFromQuantity"] is not None and q["changeFromQuantity"] != current:
                err(
                    "CHANGE_FROM_QUANTITY_STALE",
                    [*path, "changeFromQuantity"],
                    "The changeFromQuantity value does not match persisted value.",
                )
        return errors

    def create_fulfillment(
        self, info: Any, fulfillment: dict[str, Any], message: str | None = None
    ) -> dict[str, Any]:
        key = self._idempotency_key(info)
        params = json.dumps(fulfillment, sort_keys=True)
        replay = self._replay(key, params)
        if replay is not None:
            return {"fulfillment": None, **replay} if "fulfillment" not in replay else replay
        errors: list[dict[str, Any]] = []
        takes: list[tuple[dict[str, Any], int]] = []
        order: dict[str, Any] | None = None
        for group in fulfillment["lineItemsByFulfillmentOrder"]:
            found = self._fulfillment_order(group["fulfillmentOrderId"])
            if found is None:
                errors.append(
                    {"field": ["fulfillment"], "message": "Fulfillment order does not exist."}
                )
                continue
            fo_order, fo = found
            if order is not None and fo_order is not order:
                errors.append(
                    {
                        "field": ["fulfillment"],
                        "message": "Fulfillment orders must belong to the same order.",
                    }
                )
                continue
            order = fo_order
            wanted = group.get("fulfillmentOrderLineItems") or [
                {"id": li["id"], "quantity": li["remainingQuantity"]} for li in fo["lineItems"]
            ]
            by_id = {li["id"]: li for li in fo["lineItems"]}
            for item in wanted:
                li = by_id.get(item["id"])
                if (
                    li is None
                    or item["quantity"] <= 0
                    or item["quantity"] > li["remainingQuantity"]
                ):
                    errors.append(
                        {
                            "field": ["fulfillment"],
                            "message": "Invalid fulfillment order line item quantity requested.",
                        }
                    )
                    continue
                takes.append((li, item["quantity"]))
        if order is None and not errors:
            errors.append({"field": ["fulfillment"], "message": "No fulfillment order given."})
        if errors:
            payload: dict[str, Any] = {"fulfillment": None, "userErrors": errors}
            if key is not None:
                self._idempotency[key] = (params, payload, False)
            self._note = "user-errors"
            return payload
        assert order is not None
        for li, qty in takes:
            li["remainingQuantity"] -= qty
        tracking = fulfillment.get("trackingInfo") or {}
        created = {
            "id": f"gid://shopify/Fulfillment/{next(self._ids)}",
            "status": "SUCCESS",
            "trackingInfo": [
                {
                    "company": tracking.get("company"),
                    "number": tracking.get("number"),
                    "url": tracking.get("url"),
                }
            ],
            "lines": [{"id": li["id"], "sku": li["sku"], "quantity": qty} for li, qty in takes],
            "idempotencyKey": key,
        }
        order["fulfillments"].append(created)
        for fo in order["fulfillmentOrders"]:
            if all(li["remainingQuantity"] == 0 for li in fo["lineItems"]):
                fo["status"] = "CLOSED"
        payload = {"fulfillment": _fulfillment_view(created), "userErrors": []}
        if key is not None:
            self._idempotency[key] = (params, payload, True)
        self._note = "applied"
        return payload

    def _fulfillment_order(self, fo_id: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        for order in self.orders.values():
            for fo in order["fulfillmentOrders"]:
                if fo["id"] == fo_id:
                    return order, fo
        return None


def _fulfillment_view(f: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f["id"],
        "status": f["status"],
        "trackingInfo": lambda _info, first=None: f["trackingInfo"][: first or None],
    }


def _fulfillment_order_view(fo: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": fo["id"],
        "status": fo["status"],
        "lineItems": lambda _info, first: {"nodes": fo["lineItems"][:first]},
    }


def _root_field(operation: OperationDefinitionNode) -> str:
    names = [getattr(s, "name", None) for s in operation.selection_set.selections]
    values = sorted({n.value for n in names if n is not None})
    return ",".join(values)


class _Root:
    """Root value: its attributes are the Query and Mutation fields.

    graphql-core's default resolver calls them with the field's arguments.
    """

    def __init__(self, emulator: ShopifyEmulator) -> None:
        self._e = emulator

    def inventoryItem(self, _info: Any, id: str) -> dict[str, Any] | None:  # noqa: N802, A002
        e = self._e
        if not _ITEM_RE.match(id) or id in e.invalid_items:
            return None

        def level(_info: Any, locationId: str) -> dict[str, Any] | None:  # noqa: N803
            pair = (id, locationId)
            if pair not in e.levels and not (e.auto_stock and _LOCATION_RE.match(locationId)):
                return None
            quantity = e.levels.get(pair, 0)
            return {
                "id": f"gid://shopify/InventoryLevel/{abs(hash(pair)) % 10**9}",
                "location": {"id": locationId},
                "quantities": lambda _info, names: [
                    {"id": f"{n}-{locationId}", "name": n, "quantity": quantity}
                    for n in names
                    if n in ("available", "on_hand")
                ],
            }

        return {"id": id, "sku": None, "inventoryLevel": level}

    def order(self, _info: Any, id: str) -> dict[str, Any] | None:  # noqa: A002
        order = self._e.orders.get(id)
        if order is None:
            return None
        return {
            "id": order["id"],
            "name": order["name"],
            "fulfillments": lambda _info, first=None: [
                _fulfillment_view(f) for f in order["fulfillments"]
            ][: first or None],
            "fulfillmentOrders": lambda _info, first: {
                "nodes": [_fulfillment_order_view(fo) for fo in order["fulfillmentOrders"][:first]]
            },
        }

    def inventorySetQuantities(self, info: Any, input: dict[str, Any]) -> dict[str, Any]:  # noqa: N802, A002
        return self._e.set_quantities(info, input)

    def fulfillmentCreate(
        self, info: Any, fulfillment: dict[str, Any], message: str | None = None
    ) -> dict[str, Any]:  # noqa: N802
        return self._e.create_fulfillment(info, fulfillment, message)
