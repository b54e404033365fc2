"""atpflow's one config file (YAML), validated with pydantic.

Every value can also come from the environment: `ATPFLOW__SECTION__FIELD`
(double underscores between levels, case-insensitive), parsed as YAML, so
`ATPFLOW__KAFKA__BOOTSTRAP_SERVERS=broker:9092` or `ATPFLOW__GAP_TIMEOUT=5s`.
The environment wins over the file; a `--bootstrap` flag wins over both.

Secrets never live in the file: fields ending in `_env` / `_file` name an
environment variable or a mounted file that holds the secret.
"""

from __future__ import annotations

import os
import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from operators.reference import Channels, Locations, load_channels, load_locations

__all__ = [
    "SAMPLE_CONFIG",
    "Config",
    "ConfigError",
    "KafkaConfig",
    "Topics",
    "load_config",
]

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_CONFIG = ROOT / "config" / "atpflow.yaml"
ENV_PREFIX = "ATPFLOW__"

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


_NUM = r"(\d+(?:\.\d+)?)"
_ISO = re.compile(rf"\s*P(?:{_NUM}D)?(?:T(?:{_NUM}H)?(?:{_NUM}M)?(?:{_NUM}S)?)?\s*")


def _duration(value: Any) -> Any:
    """'250ms', '30s', '5m', '1h', '1d', ISO 8601 ('PT30S') or a number of seconds."""
    if isinstance(value, str) and value.strip().upper().startswith("P"):
        m = _ISO.fullmatch(value.upper())
        if m and any(m.groups()):
            d, h, mi, sec = (float(g or 0) for g in m.groups())
            return d * 86400 + h * 3600 + mi * 60 + sec
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", value)
        if not m:
            msg = f"{value!r} is not a duration (use e.g. 30s, 5m, 1h, 250ms or PT30S)"
            raise ValueError(msg)
        return float(m.group(1)) * _UNITS[m.group(2) or "s"]
    return value


Seconds = Annotated[float, BeforeValidator(_duration), Field(ge=0)]


def _whole(value: float) -> float:
    if value != int(value) or value < 1:
        msg = "must be a whole number of seconds, at least 1s (Bytewax's unit for epochs)"
        raise ValueError(msg)
    return value


#: Durations passed to `python -m bytewax.run`, which takes whole seconds.
WholeSeconds = Annotated[float, BeforeValidator(_duration), AfterValidator(_whole)]

_STRICT = ConfigDict(extra="forbid")


class KafkaConfig(BaseModel):
    """Connection settings. Secrets by reference only (`*_env`, `*_file`)."""

    model_config = _STRICT

    bootstrap_servers: str = "127.0.0.1:9092"
    client_id: str = "atpflow"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password_env: str | None = None
    sasl_password_file: str | None = None
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    partitions: int = Field(default=3, ge=1, description="for `atpflow topics create`")
    replication_factor: int = Field(default=1, ge=1)
    #: Further librdkafka settings passed through unchanged (no secrets here).
    extra: dict[str, str | int | float | bool] = Field(default_factory=dict)

    def client_settings(self) -> dict[str, Any]:
        """librdkafka settings, with the secret resolved from env/file (never logged)."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": self.client_id,
            "security.protocol": self.security_protocol,
        }
        optional = {
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "ssl.ca.location": self.ssl_ca_location,
            "ssl.certificate.location": self.ssl_certificate_location,
            "ssl.key.location": self.ssl_key_location,
        }
        conf.update({k: v for k, v in optional.items() if v is not None})
        secret = read_secret(self.sasl_password_env, self.sasl_password_file)
        if secret is not None:
            conf["sasl.password"] = secret
        conf.update(self.extra)
        return conf


def read_secret(env: str | None, file: str | None) -> str | None:
    """A secret from an environment variable or a mounted file (the first set)."""
    if env and os.environ.get(env):
        return os.environ[env]
    if file and Path(file).exists():
        return Path(file).read_text(encoding="utf-8").strip()
    return None


class Topics(BaseModel):
    model_config = _STRICT

    wms_transactions: str = "wms.inventory.transactions"
    erp_documents: str = "erp.inventory.documents"
    items: str = "ref.items"
    fulfillment_events: str = "wms.fulfillment.events"
    carrier_events: str = "carrier.tracking.events"
    availability_prefix: str = "availability."
    milestones: str = "shipment.milestones"
    dead_letter: str = "atpflow.dead-letter"

    def availability(self, channel: str) -> str:
        return f"{self.availability_prefix}{channel}"

    @property
    def input_schemas(self) -> dict[str, str]:
        """Input topic -> Avro schema name."""
        return {
            self.wms_transactions: "WmsInventoryTransaction",
            self.erp_documents: "ErpInventoryDocument",
            self.items: "ItemMaster",
            self.fulfillment_events: "WmsFulfillmentEvent",
            self.carrier_events: "CarrierTrackingEvent",
        }


class Reference(BaseModel):
    model_config = _STRICT

    locations: Path = Path("locations.yaml")
    channels: Path = Path("channels.yaml")


class Recovery(BaseModel):
    model_config = _STRICT

    dir: Path | None = None
    snapshot_interval: WholeSeconds = 10.0
    backup_interval: Seconds = 0.0


class RedisConfig(BaseModel):
    model_config = _STRICT

    enabled: bool = False
    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "atpflow"


class Config(BaseModel):
    """The whole config. Unknown fields are errors: a typo must not pass silently."""

    model_config = ConfigDict(extra="forbid")

    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    topics: Topics = Field(default_factory=Topics)
    reference: Reference = Field(default_factory=Reference)
    gap_timeout: Seconds = 30.0
    max_buffered: int = Field(default=1000, ge=1)
    unknown_item_timeout: Seconds = 300.0
    unknown_tracking_timeout: Seconds = 86400.0
    max_clock_skew: Seconds = 3600.0
    recovery: Recovery = Field(default_factory=Recovery)
    #: Epoch length without recovery (with recovery, the snapshot interval): sinks that
    #: push or confirm at checkpoints (Kafka outputs, marketplaces, the Redis view) flush this often.
    epoch_interval: WholeSeconds = 1.0
    redis: RedisConfig = Field(default_factory=RedisConfig)
    metrics_port: int = Field(default=3030, ge=0, le=65535)
    #: Marketplace adapters per channel id (see sinks.marketplace); optional.
    marketplaces: dict[str, Any] = Field(default_factory=dict)

    #: Where relative reference paths are resolved from (the config file's folder).
    base_dir: Path = Field(default=Path("."), exclude=True)

    @cached_property
    def locations(self) -> Locations:
        return load_locations(self._resolve(self.reference.locations))

    @cached_property
    def channels(self) -> Channels:
        return load_channels(self._resolve(self.reference.channels))

    def _resolve(self, path: Path) -> Path:
        return path if path.is_absolute() else self.base_dir / path


class ConfigError(Exception):
    """A config that cannot start: one line per problem, each naming the field."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid config {source}:\n{lines}")


def _env_value(text: str) -> Any:
    """Parse an environment value as YAML; anything that is not YAML stays a string.

    Never raise here: a YAML error message quotes the value, and the value may be a secret
    set in the wrong variable.
    """
    if not text:
        return text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _apply_env(raw: dict[str, Any], environ: dict[str, str]) -> None:
    for name, text in sorted(environ.items()):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX):].split("__") if p]
        node = raw
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[path[-1]] = _env_value(text)


_SECRETISH = re.compile(r"pass|secret|token|key|credential|marketplaces", re.IGNORECASE)


def _format_errors(exc: ValidationError, *, echo: bool = True) -> list[str]:
    out = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        got = err.get("input")
        # A value pasted where a secret reference belongs must not be echoed into logs.
        quiet = (not echo or isinstance(got, dict | list) or _SECRETISH.search(where)
                 or len(repr(got)) > 60)
        shown = "" if quiet else f" (got {got!r})"
        out.append(f"{where}: {err['msg']}{shown}")
    return out


def load_config(
    path: str | Path | None = None,
    *,
    environ: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Read, merge env and overrides, validate, and load the reference files.

    Raises `ConfigError` listing every problem found.
    """
    path = Path(path) if path else SAMPLE_CONFIG
    source = str(path)
    if not path.exists():
        raise ConfigError(source, [f"file not found: {path}"])
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(source, [f"not valid YAML: {exc}"]) from exc
    if not isinstance(raw, dict):
        raise ConfigError(source, ["top level must be a mapping of settings"])
    _apply_env(raw, dict(os.environ) if environ is None else environ)
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    raw["base_dir"] = path.resolve().parent
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(source, _format_errors(exc)) from exc
    problems = []
    for name in ("locations", "channels"):
        try:
            getattr(config, name)
        except FileNotFoundError as exc:
            problems.append(f"reference.{name}: file not found: {exc.filename}")
        except ValidationError as exc:
            problems += [f"reference.{name} ({getattr(config.reference, name)}): {p}"
                         for p in _format_errors(exc)]
        except yaml.YAMLError as exc:
            problems.append(f"reference.{name}: not valid YAML: {exc}")
    if not problems:
        problems += config.channels.check_against(config.locations)
    if config.marketplaces:
        from sinks.marketplace.config import load_marketplace_config

        try:
            load_marketplace_config(config.marketplaces)
        except ValidationError as exc:
            problems += [f"marketplaces.{p}" for p in _format_errors(exc, echo=False)]
    if problems:
        raise ConfigError(source, problems)
    return config
