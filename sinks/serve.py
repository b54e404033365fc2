"""Availability lookups over HTTP, read from the Redis view (`sinks.redis_view`) only.

- ``GET /v1/availability/{channel}/{sku}``: the sku's availability in the channel: every key of
  the sku (one per location for per-location channels), their sum, and the ATP per warehouse.
  ``?location=ATL1`` narrows it to that location's key. 404 for an unknown channel, sku or location.
- ``GET /v1/availability/{channel}?sku=a&sku=b``: up to 100 skus at once (422 beyond); skus
  without data are listed under ``missing``.
- ``GET /healthz``: 200 when Redis answers, 503 otherwise.
- ``GET /openapi.json``: the OpenAPI document (FastAPI's).

`serve(config)` runs it with uvicorn.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from contextlib import asynccontextmanager
from typing import Annotated, Any

import redis.asyncio as aioredis
import uvicorn
from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from .redis_view import ViewKeys

__all__ = [
    "MAX_BATCH",
    "BatchAvailability",
    "LocationAvailability",
    "ServeConfig",
    "SkuAvailability",
    "WarehouseAtp",
    "create_app",
    "serve",
]

#: Most skus in one batch request.
MAX_BATCH = 100


class ServeConfig(BaseModel):
    """How to run the lookup service."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "atpflow"
    log_level: str = "warning"
    #: Redis connections per process: the ceiling of concurrent lookups.
    redis_max_connections: int = Field(default=64, ge=1)


class LocationAvailability(BaseModel):
    """One key of the sku in the channel: the whole sku, or one location of it."""

    key: str
    location: str | None
    available: int
    previous: int | None
    version: int
    as_of: int
    source: str | None
    source_id: str | None


class WarehouseAtp(BaseModel):
    """Available-to-promise of one warehouse, as the channel's newest record of it saw it."""

    model_config = ConfigDict(extra="allow")

    warehouse: str
    atp: int | None = None
    on_hand: int | None = None
    on_hold: int | None = None
    reserved: int | None = None
    incoming: int | None = None
    version: int


class SkuAvailability(BaseModel):
    channel: str
    sku: str
    #: Sum over ``entries``: what the channel may sell of the sku.
    available: int
    #: Newest ``as_of`` among ``entries`` (epoch ms).
    as_of: int
    entries: list[LocationAvailability]
    warehouses: list[WarehouseAtp]


class BatchAvailability(BaseModel):
    channel: str
    items: list[SkuAvailability]
    missing: list[str]


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else value


def _entry(raw: Mapping[Any, Any]) -> LocationAvailability:
    data = {_text(k): _text(v) for k, v in raw.items()}
    return LocationAvailability(
        key=data["key"] or "",
        location=data.get("location") or None,
        available=int(data["available"] or 0),
        previous=int(data["previous"]) if data.get("previous") else None,
        version=int(data["version"] or 0),
        as_of=int(data.get("as_of") or 0),
        source=data.get("source") or None,
        source_id=data.get("source_id") or None,
    )


def _warehouses(raw: Mapping[Any, Any], wanted: str | None) -> list[WarehouseAtp]:
    data = {_text(k): _text(v) for k, v in raw.items()}
    out = []
    for field, value in sorted(data.items()):
        if field is None or value is None or field.endswith(":v"):
            continue
        if wanted is not None and field != wanted:
            continue
        cell = json.loads(value)
        cell["warehouse"] = field
        cell["version"] = int(data.get(f"{field}:v") or 0)
        out.append(WarehouseAtp.model_validate(cell))
    return out


class _Reader:
    """Reads the view; two round trips at most per request, however many skus."""

    def __init__(self, client: aioredis.Redis, keys: ViewKeys, channel_ttl_s: float = 2.0) -> None:
        self.redis = client
        self.keys = keys
        self._channel_ttl = channel_ttl_s
        self._channels: frozenset[str] = frozenset()
        self._channels_at = -1e9

    async def channel_known(self, channel: str) -> bool:
        # The channel set changes only when a channel is added: cache it briefly instead of
        # paying a round trip per lookup. A name not in the cache re-reads it, at most every 50 ms
        # (so a flood of unknown names cannot hammer Redis).
        age = time.monotonic() - self._channels_at
        if age > self._channel_ttl or (channel not in self._channels and age > 0.05):
            members = await self.redis.smembers(self.keys.channels())
            self._channels = frozenset(_text(m) or "" for m in members)
            self._channels_at = time.monotonic()
        return channel in self._channels

    async def lookup(
        self, channel: str, skus: list[str], location: str | None
    ) -> dict[str, SkuAvailability]:
        pipe = self.redis.pipeline(transaction=False)
        if location is None:
            for sku in skus:
                pipe.smembers(self.keys.index(channel, sku))
            members = await pipe.execute()
            keys_by_sku = {
                sku: sorted(_text(m) or "" for m in found)
                for sku, found in zip(skus, members, strict=True)
            }
        else:
            keys_by_sku = {sku: [f"{sku}|{location}"] for sku in skus}
        pipe = self.redis.pipeline(transaction=False)
        for sku in skus:
            for key in keys_by_sku[sku]:
                pipe.hgetall(self.keys.avail(channel, key))
            pipe.hgetall(self.keys.atp(channel, sku))
        results = iter(await pipe.execute())
        out: dict[str, SkuAvailability] = {}
        for sku in skus:
            entries = [_entry(raw) for raw in (next(results) for _ in keys_by_sku[sku]) if raw]
            atp = next(results)
            if not entries:
                continue
            out[sku] = SkuAvailability(
                channel=channel,
                sku=sku,
                available=sum(e.available for e in entries),
                as_of=max(e.as_of for e in entries),
                entries=entries,
                warehouses=_warehouses(atp, location),
            )
        return out


def create_app(
    redis_client: aioredis.Redis | None = None,
    *,
    redis_url: str = "redis://127.0.0.1:6379/0",
    prefix: str = "atpflow",
    max_connections: int = 64,
) -> FastAPI:
    """The lookup app. Give a client (tests) or a URL; an own client is closed at shutdown."""
    owned = redis_client is None
    client = redis_client or aioredis.Redis.from_url(
        redis_url, max_connections=max_connections, socket_timeout=2, socket_connect_timeout=2
    )
    reader = _Reader(client, ViewKeys(prefix))

    @asynccontextmanager
    async def lifespan(_app: FastAPI):  # type: ignore[no-untyped-def]
        yield
        if owned:
            await client.aclose()

    app = FastAPI(
        title="atpflow availability",
        version="1.0",
        summary="Channel availability and per-warehouse ATP, from the Redis view.",
        lifespan=lifespan,
    )

    async def _require_channel(channel: str) -> None:
        if not await reader.channel_known(channel):
            raise HTTPException(status_code=404, detail=f"unknown channel {channel!r}")

    @app.get(
        "/v1/availability/{channel}/{sku}",
        response_model=SkuAvailability,
        responses={404: {"description": "unknown channel, sku or location"}},
    )
    async def get_availability(
        channel: Annotated[str, Path(min_length=1, max_length=200)],
        sku: Annotated[str, Path(min_length=1, max_length=200)],
        location: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    ) -> SkuAvailability:
        await _require_channel(channel)
        found = await reader.lookup(channel, [sku], location)
        if sku not in found:
            what = f"sku {sku!r}" + (f" at {location!r}" if location else "")
            raise HTTPException(
                status_code=404, detail=f"{what} has no availability in {channel!r}"
            )
        return found[sku]

    @app.get(
        "/v1/availability/{channel}",
        response_model=BatchAvailability,
        responses={404: {"description": "unknown channel"}},
    )
    async def get_batch(
        channel: Annotated[str, Path(min_length=1, max_length=200)],
        sku: Annotated[
            list[str],
            Query(
                min_length=1,
                max_length=MAX_BATCH,
                description=f"repeat for each sku, at most {MAX_BATCH}",
            ),
        ],
        location: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    ) -> BatchAvailability:
        await _require_channel(channel)
        skus = list(dict.fromkeys(sku))  # de-duplicated, in request order
        found = await reader.lookup(channel, skus, location)
        return BatchAvailability(
            channel=channel,
            items=[found[s] for s in skus if s in found],
            missing=[s for s in skus if s not in found],
        )

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        try:
            await client.ping()
        except Exception as exc:  # noqa: BLE001 - any failure means "not healthy"
            return JSONResponse(
                {"status": "unavailable", "redis": type(exc).__name__}, status_code=503
            )
        return JSONResponse({"status": "ok"})

    @app.exception_handler(aioredis.RedisError)
    async def _redis_down(_request: Request, exc: aioredis.RedisError) -> JSONResponse:
        return JSONResponse({"detail": f"view unavailable ({type(exc).__name__})"}, status_code=503)

    return app


def serve(config: ServeConfig | Mapping[str, Any]) -> None:
    """Run the lookup service in the foreground (uvicorn, one process)."""
    cfg = config if isinstance(config, ServeConfig) else ServeConfig.model_validate(dict(config))
    app = create_app(
        redis_url=cfg.redis_url, prefix=cfg.redis_prefix, max_connections=cfg.redis_max_connections
    )
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level, access_log=False)


if __name__ == "__main__":  # pragma: no cover - `python -m sinks.serve [config.yaml]`
    import sys

    import yaml

    serve(yaml.safe_load(open(sys.argv[1], encoding="utf-8")) if len(sys.argv) > 1 else {})
