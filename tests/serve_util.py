"""Helpers for the server tests: run `energytta-serve`'s app in a thread on a free port,
talk to it with the standard library, hold its model worker at a gate."""
from __future__ import annotations

import contextlib
import http.client
import json
import threading
import time
from dataclasses import dataclass
from typing import Iterator

from energytta.serve.engine import Engine
from energytta.serve.options import ServeOptions
from energytta.serve.server import Server, build_server


@dataclass
class Running:
    url: str
    port: int
    server: Server

    @property
    def state(self):
        return self.server.config.app.state.serve

    def call(self, method: str, path: str, body: bytes | dict | None = None,
             headers: dict | None = None, timeout: float = 60.0
             ) -> tuple[int, dict[str, str], bytes]:
        """(status, lower-cased headers, body bytes)."""
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=data, headers=headers or {})
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def generate(self, body: bytes | dict, accept: str = "", **kw):
        return self.call("POST", "/v1/generate", body,
                         {"Accept": accept} if accept else None, **kw)

    def metrics(self) -> dict:
        return json.loads(self.call("GET", "/metrics")[2])


@contextlib.contextmanager
def running(engine: Engine, expect_warm: bool = True, **options) -> Iterator[Running]:
    """Serve `engine` with ServeOptions(**options) on 127.0.0.1, a free port, until the
    block ends (graceful shutdown); `expect_warm=False` also yields a failed warm-up."""
    server = build_server(engine, ServeOptions(port=0, **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    state = server.config.app.state.serve
    end = time.monotonic() + 120
    while not (server.started and (state.ready or state.warmup_error)):
        assert thread.is_alive() and time.monotonic() < end, "server did not start"
        time.sleep(0.02)
    assert state.warmup_error is None or not expect_warm, state.warmup_error
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield Running(f"http://127.0.0.1:{port}/", port, server)
    finally:
        server.begin_shutdown()
        thread.join(60)


def gate(engine: Engine) -> threading.Event:
    """Make every model call wait until the returned event is set (then run for real)."""
    opened, real = threading.Event(), engine.run

    def run(jobs):
        assert opened.wait(60), "test gate never opened"
        return real(jobs)
    engine.run = run
    return opened


def in_thread(fn, *args, **kw) -> dict:
    """Start fn in a thread; the dict gets "result" (or "error") when it returns."""
    box: dict = {}

    def target():
        try:
            box["result"] = fn(*args, **kw)
        except Exception as e:  # noqa: BLE001 - the test inspects it
            box["error"] = e
    box["thread"] = threading.Thread(target=target, daemon=True)
    box["thread"].start()
    return box


def wait_for(predicate, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.02)
