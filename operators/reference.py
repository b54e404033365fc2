"""Reference data: warehouses (locations.yaml) and channel rules (channels.yaml).

Both files keep the contract's formats unchanged; these models validate them
so that a typo stops start-up with a message naming the entry and field.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

__all__ = ["Channel", "Channels", "Locations", "Warehouse", "load_channels", "load_locations"]

Code = Annotated[str, StringConstraints(min_length=1)]


class Warehouse(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: Code
    wms_facility: Code
    erp_plant: Code


class Locations(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    warehouses: tuple[Warehouse, ...]

    @model_validator(mode="after")
    def _unique(self) -> Locations:
        for attr in ("id", "wms_facility", "erp_plant"):
            seen = [getattr(w, attr) for w in self.warehouses]
            dupes = sorted({v for v in seen if seen.count(v) > 1})
            if dupes:
                msg = f"warehouses: {attr} {dupes} listed more than once"
                raise ValueError(msg)
        return self

    @cached_property
    def by_facility(self) -> dict[str, str]:
        return {w.wms_facility: w.id for w in self.warehouses}

    @cached_property
    def by_plant(self) -> dict[str, str]:
        return {w.erp_plant: w.id for w in self.warehouses}

    def warehouse_for(self, source: str, code: str) -> str | None:
        """The canonical warehouse of a WMS facility / ERP plant code (exact match)."""
        table = self.by_plant if source == "erp" else self.by_facility
        return table.get(code)


class Channel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: Code
    kind: Literal["shopify", "amazon", "topic"]
    warehouses: tuple[Code, ...] = Field(min_length=1)
    per_location: bool = False
    buffer_units: int = Field(default=0, ge=0)
    share_pct: float = Field(default=100, ge=0, le=100)
    max_qty: int = Field(default=1_000_000_000, ge=0)
    min_qty: int = Field(default=0, ge=0)
    include_incoming: bool = False


class Channels(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    channels: tuple[Channel, ...]

    @cached_property
    def by_id(self) -> dict[str, Channel]:
        return {c.id: c for c in self.channels}

    @cached_property
    def by_warehouse(self) -> dict[str, tuple[Channel, ...]]:
        """The channels whose availability a warehouse's stock feeds."""
        out: dict[str, list[Channel]] = {}
        for c in self.channels:
            for w in c.warehouses:
                out.setdefault(w, []).append(c)
        return {w: tuple(cs) for w, cs in out.items()}

    def check_against(self, locations: Locations) -> list[str]:
        """Problems that need both files: a channel naming an unknown warehouse."""
        known = {w.id for w in locations.warehouses}
        problems = []
        for i, c in enumerate(self.channels):
            missing = [w for w in c.warehouses if w not in known]
            if missing:
                problems.append(f"channels.{i}.warehouses: {missing} not in locations ({c.id})")
        return problems


def _read_yaml(path: Path) -> object:
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def load_locations(path: str | Path) -> Locations:
    return Locations.model_validate(_read_yaml(Path(path)))


def load_channels(path: str | Path) -> Channels:
    return Channels.model_validate(_read_yaml(Path(path)))
