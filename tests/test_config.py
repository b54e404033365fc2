"""dataflows.config: the sample config, validation messages, env overrides, durations."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from helpers import CONFIG_DIR

from dataflows.config import SAMPLE_CONFIG, Config, ConfigError, load_config


def _config_dir(tmp_path: Path, text: str | None = None, **reference_files: str) -> Path:
    """A config folder: atpflow.yaml (sample unless `text`), locations.yaml, channels.yaml."""
    for name in ("locations.yaml", "channels.yaml"):
        shutil.copy(CONFIG_DIR / name, tmp_path / name)
    for name, content in reference_files.items():
        (tmp_path / f"{name}.yaml").write_text(content, encoding="utf-8")
    path = tmp_path / "atpflow.yaml"
    path.write_text(SAMPLE_CONFIG.read_text(encoding="utf-8") if text is None else text,
                    encoding="utf-8")
    return path


def _problems(path: Path, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=environ or {})
    return info.value.problems


def test_sample_config_loads_with_the_contract_defaults() -> None:
    config = load_config(environ={})

    assert isinstance(config, Config)
    assert (config.gap_timeout, config.max_buffered, config.unknown_item_timeout,
            config.unknown_tracking_timeout, config.max_clock_skew) == (
        30.0, 1000, 300.0, 86400.0, 3600.0)
    assert config.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert config.topics.wms_transactions == "wms.inventory.transactions"
    assert config.topics.availability("amazon-us") == "availability.amazon-us"
    assert config.topics.dead_letter == "atpflow.dead-letter"
    assert [w.id for w in config.locations.warehouses] == ["ATL1", "DAL1", "RNO1"]
    assert [c.id for c in config.channels.channels] == ["shopify-us", "amazon-us", "b2b-portal"]
    assert config.locations.warehouse_for("erp", "1000") == "ATL1"


def test_empty_config_file_takes_every_default(tmp_path: Path) -> None:
    config = load_config(_config_dir(tmp_path, ""), environ={})

    assert (config.gap_timeout, config.max_buffered, config.metrics_port) == (30.0, 1000, 3030)
    assert config.kafka.client_settings()["bootstrap.servers"] == "127.0.0.1:9092"


def test_several_bad_fields_give_one_message_each_naming_the_field(tmp_path: Path) -> None:
    text = (
        "gap_timeout: soon\n"
        "max_buffered: 0\n"
        "kafka:\n  security_protocol: TELNET\n"
        "metrics_port: 70000\n"
    )

    problems = _problems(_config_dir(tmp_path, text))

    assert len(problems) == 4
    assert sorted(p.split(":", 1)[0] for p in problems) == [
        "gap_timeout", "kafka.security_protocol", "max_buffered", "metrics_port"]
    by_field = {p.split(":", 1)[0]: p for p in problems}
    assert "'soon' is not a duration" in by_field["gap_timeout"]
    assert "(got 0)" in by_field["max_buffered"]
    assert "(got 'TELNET')" in by_field["kafka.security_protocol"]


def test_config_error_message_lists_every_problem(tmp_path: Path) -> None:
    path = _config_dir(tmp_path, "max_buffered: -1\nunknown_item_timeout: -5\n")

    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})

    message = str(info.value)
    assert message.startswith(f"invalid config {path}:\n  - ")
    assert message.count("\n  - ") == 2
    assert "max_buffered" in message and "unknown_item_timeout" in message


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("gap_timout: 5s\n", "gap_timout"),
        ("kafka:\n  bootstrap: broker:9092\n", "kafka.bootstrap"),
        ("topics:\n  wms: x\n", "topics.wms"),
    ],
)
def test_unknown_key_is_rejected(tmp_path: Path, text: str, field: str) -> None:
    problems = _problems(_config_dir(tmp_path, text))

    assert len(problems) == 1
    assert problems[0].startswith(f"{field}: Extra inputs are not permitted")


def test_missing_config_file_is_reported(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"

    assert _problems(missing) == [f"file not found: {missing}"]


def test_missing_reference_file_is_reported(tmp_path: Path) -> None:
    path = _config_dir(tmp_path, "reference:\n  locations: where.yaml\n")

    problems = _problems(path)

    assert problems == [f"reference.locations: file not found: {tmp_path / 'where.yaml'}"]


def test_reference_paths_resolve_from_the_config_folder(tmp_path: Path) -> None:
    sub = tmp_path / "ref"
    sub.mkdir()
    shutil.copy(CONFIG_DIR / "locations.yaml", sub / "sites.yaml")
    path = _config_dir(tmp_path, "reference:\n  locations: ref/sites.yaml\n")

    config = load_config(path, environ={})

    assert config.locations.warehouse_for("wms", "DC-RNO") == "RNO1"


def test_channel_naming_an_unknown_warehouse_is_reported(tmp_path: Path) -> None:
    channels = yaml.safe_load((CONFIG_DIR / "channels.yaml").read_text(encoding="utf-8"))
    channels["channels"][1]["warehouses"] = ["ATL1", "SEA1", "PDX1"]
    path = _config_dir(tmp_path, channels=yaml.safe_dump(channels))

    problems = _problems(path)

    assert problems == ["channels.1.warehouses: ['SEA1', 'PDX1'] not in locations (amazon-us)"]


def test_bad_channel_rule_names_the_entry_and_field(tmp_path: Path) -> None:
    channels = yaml.safe_load((CONFIG_DIR / "channels.yaml").read_text(encoding="utf-8"))
    channels["channels"][0]["share_pct"] = 150
    channels["channels"][2]["kind"] = "ebay"
    path = _config_dir(tmp_path, channels=yaml.safe_dump(channels))

    problems = _problems(path)

    assert len(problems) == 2
    assert problems[0].startswith("reference.channels (channels.yaml): channels.0.share_pct: ")
    assert problems[1].startswith("reference.channels (channels.yaml): channels.2.kind: ")


def test_env_overrides_a_top_level_duration(tmp_path: Path) -> None:
    config = load_config(_config_dir(tmp_path), environ={"ATPFLOW__GAP_TIMEOUT": "5s"})

    assert config.gap_timeout == 5.0


def test_env_overrides_a_nested_field_case_insensitively(tmp_path: Path) -> None:
    environ = {
        "ATPFLOW__KAFKA__BOOTSTRAP_SERVERS": "broker-1:9092,broker-2:9092",
        "atpflow__topics__dead_letter": "dlq",
        "OTHER__GAP_TIMEOUT": "1s",
    }

    config = load_config(_config_dir(tmp_path), environ=environ)

    assert config.kafka.bootstrap_servers == "broker-1:9092,broker-2:9092"
    assert config.kafka.client_id == "atpflow"  # the rest of the section stays
    assert config.topics.dead_letter == "dlq"
    assert config.gap_timeout == 30.0


def test_env_value_is_parsed_as_yaml_and_validated(tmp_path: Path) -> None:
    ok = load_config(_config_dir(tmp_path), environ={"ATPFLOW__MAX_BUFFERED": "25",
                                                     "ATPFLOW__REDIS__ENABLED": "true"})
    problems = _problems(_config_dir(tmp_path), environ={"ATPFLOW__MAX_BUFFERED": "lots"})

    assert (ok.max_buffered, ok.redis.enabled) == (25, True)
    assert len(problems) == 1 and problems[0].startswith("max_buffered: ")


def test_env_wins_over_the_file_and_overrides_win_over_env(tmp_path: Path) -> None:
    path = _config_dir(tmp_path, "gap_timeout: 10s\nmax_buffered: 7\n")

    config = load_config(path, environ={"ATPFLOW__GAP_TIMEOUT": "20s",
                                        "ATPFLOW__MAX_BUFFERED": "8"},
                         overrides={"max_buffered": 9})

    assert (config.gap_timeout, config.max_buffered) == (20.0, 9)


def test_unknown_env_key_is_rejected(tmp_path: Path) -> None:
    problems = _problems(_config_dir(tmp_path), environ={"ATPFLOW__GAP_TIMOUT": "5s"})

    assert len(problems) == 1
    assert problems[0].startswith("gap_timout: Extra inputs are not permitted")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("1d", 86400.0),
        ("1.5s", 1.5), ("45", 45.0), (" 2m ", 120.0), ("0s", 0.0),
    ],
)
def test_durations(tmp_path: Path, text: str, seconds: float) -> None:
    config = load_config(_config_dir(tmp_path, f"unknown_item_timeout: '{text}'\n"), environ={})

    assert config.unknown_item_timeout == seconds


def test_a_bare_number_is_seconds(tmp_path: Path) -> None:
    config = load_config(_config_dir(tmp_path, "max_clock_skew: 90\n"), environ={})

    assert config.max_clock_skew == 90.0


@pytest.mark.parametrize("text", ["5 minutes", "m5", "-5s", "5w", "", "1h30m"])
def test_bad_durations_are_rejected(tmp_path: Path, text: str) -> None:
    problems = _problems(_config_dir(tmp_path, f"gap_timeout: '{text}'\n"))

    assert len(problems) == 1
    assert problems[0].startswith("gap_timeout: ")


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    assert _problems(_config_dir(tmp_path, "- a\n- b\n")) == [
        "top level must be a mapping of settings"]


def test_invalid_yaml_is_reported(tmp_path: Path) -> None:
    problems = _problems(_config_dir(tmp_path, "gap_timeout: [30s\n"))

    assert len(problems) == 1 and problems[0].startswith("not valid YAML: ")
