"""Units of the marketplace package that need neither Redis nor an emulator."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from pydantic import ValidationError

from sinks.marketplace import (
    ApiUnavailableError,
    BreakerConfig,
    CircuitBreaker,
    CircuitOpenError,
    FulfillmentRequest,
    MarketplaceConfig,
    Redactor,
    RetryConfig,
    SecretRef,
    TransientApiError,
    backoff_delay,
    fulfillment_from_milestone,
    idempotency_key,
    load_marketplace_config,
    package_reference_id,
    record_key,
)
from sinks.marketplace.resilience import BreakerState, guarded_call


def _shopify(**extra: object) -> dict[str, object]:
    return {
        "kind": "shopify",
        "base_url": "https://shop.example/",
        "shop": "s",
        "access_token": {"env": "SHOP_TOKEN"},
        **extra,
    }


def test_config_takes_secret_references_and_rejects_secret_values() -> None:
    cfg = load_marketplace_config({"channels": {"shopify-us": _shopify()}})
    channel = cfg.channel("shopify-us")
    assert channel.base_url == "https://shop.example"  # trailing slash dropped
    assert channel.access_token.env == "SHOP_TOKEN"
    # A secret value in the config is a validation error, not a silent acceptance.
    inline = "shpat_live_value"
    with pytest.raises(ValidationError) as caught:
        load_marketplace_config({"channels": {"shopify-us": _shopify(access_token=inline)}})
    assert inline not in str(caught.value)  # the error does not echo the value
    with pytest.raises(ValidationError):
        load_marketplace_config({"channels": {"shopify-us": _shopify(token=inline)}})
    with pytest.raises(ValidationError):
        SecretRef(env="A", file=Path("/x"))
    with pytest.raises(KeyError, match="nope"):
        cfg.channel("nope")


def test_secret_refs_resolve_from_env_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOP_TOKEN", "shpat_from_env_123")
    assert SecretRef(env="SHOP_TOKEN").resolve().get_secret_value() == "shpat_from_env_123"
    secret_file = tmp_path / "token"
    secret_file.write_text("shpat_from_file_456\n")
    resolved = SecretRef(file=secret_file).resolve()
    assert resolved.get_secret_value() == "shpat_from_file_456"
    assert "shpat" not in repr(resolved) and "shpat" not in str(resolved)
    monkeypatch.delenv("SHOP_TOKEN")
    with pytest.raises(LookupError, match="SHOP_TOKEN"):
        SecretRef(env="SHOP_TOKEN").resolve()


def test_config_from_yaml_section_and_amazon_defaults(tmp_path: Path) -> None:
    path = tmp_path / "atpflow.yaml"
    path.write_text(
        "marketplace:\n"
        "  channels:\n"
        "    amazon-us:\n"
        "      kind: amazon\n"
        "      base_url: https://sellingpartnerapi-na.amazon.com\n"
        "      seller_id: A1\n"
        "      marketplace_id: ATVPDKIKX0DER\n"
        "      lwa:\n"
        "        client_id: {env: LWA_ID}\n"
        "        client_secret: {file: /run/secrets/lwa_secret}\n"
        "        refresh_token: {file: /run/secrets/lwa_refresh}\n"
        "      rate_limits:\n"
        "        patchListingsItem: {rate: 2, burst: 2}\n"
    )
    cfg = load_marketplace_config(path)
    assert isinstance(cfg, MarketplaceConfig)
    amazon = cfg.channel("amazon-us")
    assert amazon.rate_limits["patchListingsItem"].rate == 2
    # Operations not named keep their documented (scaled) defaults.
    assert amazon.rate_limits["confirmShipment"].burst == 8
    assert amazon.lwa.token_url == "https://api.amazon.com/auth/o2/token"  # noqa: S105


def test_redactor_masks_secrets_and_cuts() -> None:
    redactor = Redactor(["supersecret-token", "abc"])  # too short to mask safely: ignored
    assert redactor.text("echo supersecret-token and abc") == "echo *** and abc"
    redactor.add("Atza|later-token")
    assert "Atza" not in redactor.body({"x": "Atza|later-token"})
    assert redactor.text("x" * 50, limit=10).endswith("...(truncated)")


def test_record_key_and_idempotency_key() -> None:
    assert record_key({"sku": "S1", "location": "ATL1"}) == "S1|ATL1"
    assert record_key({"sku": "S1", "location": None}) == "S1"
    one = idempotency_key("shopify-us", ["set", "S1|ATL1@3:5"])
    assert one == idempotency_key("shopify-us", ["set", "S1|ATL1@3:5"])
    assert one != idempotency_key("shopify-us", ["set", "S1|ATL1@4:5"])
    assert one != idempotency_key("shopify-eu", ["set", "S1|ATL1@3:5"])
    assert len(one) == 36


def test_fulfillment_request_from_dict_and_milestone() -> None:
    data = {
        "channel": "shopify-us",
        "channel_order_id": "1001",
        "shipment_id": "SHP-1",
        "carrier": "UPS",
        "tracking_number": "1Z1",
        "lines": [{"sku": "S1", "qty": 2}],
    }
    request = FulfillmentRequest.from_mapping(data)
    assert request.key == "1001|SHP-1" and request.lines[0].qty == 2
    with pytest.raises(ValueError):
        FulfillmentRequest.from_mapping({**data, "lines": []})
    with pytest.raises(ValueError):
        FulfillmentRequest.from_mapping({**data, "tracking_number": ""})
    milestone = {
        **data,
        "level": "SHIPMENT",
        "milestone": "SHIPPED",
        "occurred_at": 1767225600000,
        "lines": [{"sku": "S1", "quantity": 1}],
    }
    pushed = fulfillment_from_milestone(milestone)
    assert pushed is not None and pushed.shipped_at == 1767225600000 and pushed.lines[0].qty == 1
    assert fulfillment_from_milestone({**milestone, "milestone": "DELIVERED"}) is None
    assert fulfillment_from_milestone({**milestone, "level": "ORDER"}) is None


def test_package_reference_is_positive_numeric_and_stable() -> None:
    assert package_reference_id("12345") == "12345"
    ref = package_reference_id("SHP-1")
    assert ref.isdigit() and int(ref) > 0 and ref == package_reference_id("SHP-1")
    assert ref != package_reference_id("SHP-2")


def test_backoff_is_bounded_and_honours_retry_after() -> None:
    retry = RetryConfig(base_delay_s=0.1, max_delay_s=1.0)
    rng = random.Random(1)  # noqa: S311 - test data
    for attempt in range(1, 12):
        delay = backoff_delay(attempt, retry, rng=rng)
        assert 0 <= delay <= min(1.0, 0.1 * 2 ** (attempt - 1))
    assert backoff_delay(1, retry, retry_after=3.0, rng=rng) >= 3.0


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_circuit_breaker_opens_probes_and_closes() -> None:
    clock = _Clock()
    breaker = CircuitBreaker("c", "ep", BreakerConfig(failure_threshold=2, open_seconds=5), clock)
    breaker.before_call()
    breaker.record_failure()
    breaker.before_call()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    with pytest.raises(CircuitOpenError):
        breaker.before_call()
    clock.now = 5.0
    breaker.before_call()  # the probe
    with pytest.raises(CircuitOpenError):
        breaker.before_call()  # only one probe at a time
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    clock.now = 10.0
    breaker.before_call()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED


def test_guarded_call_books_transient_attempts_but_not_outages() -> None:
    clock = _Clock()
    retry = RetryConfig(max_attempts=3, base_delay_s=0.1, max_delay_s=0.2)
    script = iter(
        [ApiUnavailableError("down"), ApiUnavailableError("down"), TransientApiError("503"), "ok"]
    )
    booked: list[str] = []

    def fn() -> str:
        item = next(script)
        if isinstance(item, Exception):
            raise item
        return item

    def on_transient(exc: TransientApiError) -> int:
        booked.append(str(exc))
        return len(booked)

    outcome = guarded_call(
        fn,
        deadline=100.0,
        retry=retry,
        on_transient=on_transient,
        on_deferred=lambda _t: None,
        clock=clock,
        sleep=clock.sleep,
    )
    assert outcome.value == "ok" and outcome.stop is None
    assert booked == ["503"]  # the two outages booked nothing

    def always_down() -> str:
        raise ApiUnavailableError("down")

    clock.now = 0.0
    outcome = guarded_call(
        always_down,
        deadline=1.0,
        retry=retry,
        on_transient=on_transient,
        on_deferred=lambda _t: None,
        clock=clock,
        sleep=clock.sleep,
    )
    assert outcome.stop == "unavailable" and clock.now <= 1.0
