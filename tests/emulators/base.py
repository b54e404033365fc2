"""A small threaded HTTP server for API emulators, with fault injection and a request log.

Each emulator is a real HTTP server on 127.0.0.1 and a free port, run in a daemon thread. In
front of the emulated API sits a fault plan, controllable from Python or over HTTP
(``POST /__admin/faults``), that can:

- take the server down for N seconds (connections are dropped without an answer, or answered 503);
- answer a storm of 429s (with Retry-After) and/or 5xx, with a probability, for N seconds;
- slow every answer down for N seconds, or fail the next N requests with a given status.

``GET /__admin/log`` returns the request log (timestamp, method, path, operation, status, cost) and
``GET /__admin/state`` the emulator's state; `RequestLog.max_in_window` checks rate windows.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "EmulatorServer",
    "FaultPlan",
    "LogEntry",
    "Request",
    "RequestLog",
    "Response",
    "free_port",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


@dataclass(slots=True)
class Response:
    status: int
    body: Any = None  # dict/list -> JSON, bytes/str as is, None -> empty
    headers: dict[str, str] = field(default_factory=dict)
    #: Filled by the emulator for the request log.
    operation: str = ""
    cost: float = 0.0
    note: str = ""

    def encode(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode("utf-8")
        return json.dumps(self.body).encode("utf-8")


@dataclass(frozen=True, slots=True)
class LogEntry:
    t: float  # time.time() when the request arrived
    method: str
    path: str
    operation: str
    status: int  # 0: dropped without an answer
    cost: float
    note: str


class RequestLog:
    """Thread-safe list of `LogEntry`, with rate-window checks."""

    def __init__(self) -> None:
        self._entries: list[LogEntry] = []
        self._lock = threading.Lock()

    def append(self, entry: LogEntry) -> None:
        with self._lock:
            self._entries.append(entry)

    def entries(self, operation: str | None = None) -> list[LogEntry]:
        with self._lock:
            items = list(self._entries)
        return [e for e in items if operation is None or e.operation == operation]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def count(
        self, *, operation: str | None = None, status: int | None = None, note: str | None = None
    ) -> int:
        return sum(
            1
            for e in self.entries(operation)
            if (status is None or e.status == status) and (note is None or e.note == note)
        )

    @staticmethod
    def max_in_window(
        entries: list[LogEntry], window_s: float, weight: Callable[[LogEntry], float]
    ) -> float:
        """The largest total ``weight`` of entries arriving within any ``window_s`` span."""
        times = sorted((e.t, weight(e)) for e in entries)
        best = 0.0
        total = 0.0
        start = 0
        for end in range(len(times)):
            total += times[end][1]
            while times[end][0] - times[start][0] > window_s:
                total -= times[start][1]
                start += 1
            best = max(best, total)
        return best


class FaultPlan:
    """Faults applied before the emulated API sees a request. Thread-safe."""

    def __init__(self, seed: int = 7) -> None:
        self._lock = threading.Lock()
        self._rng = random.Random(seed)  # noqa: S311 - test randomness
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._down_until = 0.0
            self._down_mode = "drop"
            self._storm_until = 0.0
            self._storm_statuses: tuple[int, ...] = ()
            self._storm_probability = 0.0
            self._storm_retry_after = 1.0
            self._slow_until = 0.0
            self._slow_delay = 0.0
            self._fail_next: list[int] = []

    def down_for(self, seconds: float, mode: str = "drop") -> None:
        """Be unreachable: ``drop`` closes connections unanswered, ``503`` answers 503."""
        with self._lock:
            self._down_until = time.monotonic() + seconds
            self._down_mode = mode

    def storm(
        self,
        seconds: float,
        statuses: tuple[int, ...] = (429, 500, 503),
        probability: float = 1.0,
        retry_after: float = 1.0,
    ) -> None:
        """Answer ``statuses`` (drawn at random) with ``probability`` for ``seconds``."""
        with self._lock:
            self._storm_until = time.monotonic() + seconds
            self._storm_statuses = tuple(statuses)
            self._storm_probability = probability
            self._storm_retry_after = retry_after

    def slow(self, seconds: float, delay: float) -> None:
        """Hold every answer ``delay`` seconds for the next ``seconds``."""
        with self._lock:
            self._slow_until = time.monotonic() + seconds
            self._slow_delay = delay

    def fail_next(self, count: int, status: int = 500) -> None:
        """Answer the next ``count`` requests with ``status`` (0: drop the connection)."""
        with self._lock:
            self._fail_next.extend([status] * count)

    def configure(self, spec: dict[str, Any]) -> None:
        """The same as the methods above, from a JSON object (the admin endpoint)."""
        if spec.get("reset"):
            self.reset()
        if "down_for" in spec:
            self.down_for(float(spec["down_for"]), str(spec.get("down_mode", "drop")))
        if "storm_for" in spec:
            self.storm(
                float(spec["storm_for"]),
                tuple(spec.get("statuses", (429, 500, 503))),
                float(spec.get("probability", 1.0)),
                float(spec.get("retry_after", 1.0)),
            )
        if "slow_for" in spec:
            self.slow(float(spec["slow_for"]), float(spec.get("delay", 1.0)))
        if "fail_next" in spec:
            self.fail_next(int(spec["fail_next"]), int(spec.get("status", 500)))

    def decide(self) -> tuple[str, int, float, float]:
        """(action, status, retry_after, delay) for the next request; action is
        "pass", "drop" or "answer"."""
        with self._lock:
            now = time.monotonic()
            delay = self._slow_delay if now < self._slow_until else 0.0
            if self._fail_next:
                status = self._fail_next.pop(0)
                return ("drop" if status == 0 else "answer", status, 1.0, delay)
            if now < self._down_until:
                return (
                    ("drop", 0, 0.0, 0.0)
                    if self._down_mode == "drop"
                    else ("answer", 503, 1.0, 0.0)
                )
            if (
                now < self._storm_until
                and self._storm_statuses
                and self._rng.random() < self._storm_probability
            ):
                return (
                    "answer",
                    self._rng.choice(self._storm_statuses),
                    self._storm_retry_after,
                    delay,
                )
            return ("pass", 0, 0.0, delay)

    @property
    def down(self) -> bool:
        with self._lock:
            return time.monotonic() < self._down_until


Handler = Callable[[Request], Response]


class EmulatorServer:
    """Runs ``handler`` behind the fault plan on 127.0.0.1:<free port> in a daemon thread."""

    def __init__(self, handler: Handler, state: Callable[[], Any], name: str) -> None:
        self.handler = handler
        self.state = state
        self.name = name
        self.faults = FaultPlan()
        self.log = RequestLog()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "emulator not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> EmulatorServer:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{self.name}-emulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- called from the handler thread --------------------------------------------------------

    def admin(self, request: Request) -> Response:
        if request.method == "GET" and request.path == "/__admin/log":
            return Response(200, [asdict(e) for e in self.log.entries()])
        if request.method == "GET" and request.path == "/__admin/state":
            return Response(200, self.state())
        if request.method == "POST" and request.path == "/__admin/faults":
            self.faults.configure(request.json() if request.body else {})
            return Response(200, {"ok": True})
        if request.method == "POST" and request.path == "/__admin/reset-log":
            self.log.clear()
            return Response(200, {"ok": True})
        return Response(404, {"error": "unknown admin endpoint"})


def _make_handler(emulator: EmulatorServer) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "atpflow-emulator"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            return  # quiet: the request log is the record

        def _serve(self) -> None:
            arrived = time.time()
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            request = Request(
                method=self.command,
                path=parts.path,
                query=parse_qs(parts.query, keep_blank_values=True),
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
            )
            if request.path.startswith("/__admin/"):
                self._write(emulator.admin(request))
                return
            action, status, retry_after, delay = emulator.faults.decide()
            if delay:
                time.sleep(delay)
            if action == "drop":
                emulator.log.append(
                    LogEntry(arrived, request.method, request.path, "", 0, 0.0, "dropped")
                )
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            if action == "answer":
                headers = {"Retry-After": f"{retry_after:g}"} if status in (429, 503) else {}
                response = Response(
                    status,
                    {"errors": [{"code": "InjectedFault", "message": f"HTTP {status}"}]},
                    headers,
                    note="injected",
                )
            else:
                try:
                    response = emulator.handler(request)
                except Exception as exc:  # noqa: BLE001 - an emulator bug must show as a 500
                    response = Response(
                        500, {"errors": [{"message": f"emulator error: {exc!r}"}]}, note="bug"
                    )
            emulator.log.append(
                LogEntry(
                    arrived,
                    request.method,
                    request.path,
                    response.operation,
                    response.status,
                    response.cost,
                    response.note,
                )
            )
            self._write(response)

        def _write(self, response: Response) -> None:
            payload = response.encode()
            self.send_response(response.status)
            if response.body is not None and not isinstance(response.body, bytes | str):
                self.send_header("Content-Type", "application/json")
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if payload:
                self.wfile.write(payload)

        do_GET = _serve  # noqa: N815 - stdlib naming
        do_POST = _serve  # noqa: N815
        do_PATCH = _serve  # noqa: N815
        do_PUT = _serve  # noqa: N815
        do_DELETE = _serve  # noqa: N815

    return _Handler
