"""Shared test fixtures.

`broker`: a fresh in-memory Tansu broker per test module (a long-lived broker
slows down as it fills), stopped by its own pid when the module is done.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dataflows.broker import LocalBroker
from dataflows.config import Config, load_config


@pytest.fixture(scope="module")
def broker() -> Iterator[LocalBroker]:
    with LocalBroker() as b:
        yield b


@pytest.fixture(scope="module")
def broker_config(broker: LocalBroker) -> Config:
    """The bundled sample config, pointed at this module's broker."""
    return load_config(overrides={"kafka.bootstrap_servers": broker.bootstrap})
