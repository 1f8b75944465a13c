"""Running the app under uvicorn: print the URL once warm, and shut down gracefully
(queued requests answered 503 at once, the running batch finished and answered)."""
from __future__ import annotations

import sys

import uvicorn

from energytta.serve.app import create_app
from energytta.serve.engine import Engine
from energytta.serve.options import ServeOptions


class Server(uvicorn.Server):
    """uvicorn's server, closing the batcher's queue as soon as shutdown begins (uvicorn
    would otherwise wait for every queued request to be served)."""

    def __init__(self, config: uvicorn.Config, on_exit) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig, frame) -> None:  # signal handler, in the loop's thread
        self.begin_shutdown()
        super().handle_exit(sig, frame)

    def begin_shutdown(self) -> None:
        """Thread-safe: refuse queued work now, then stop like Ctrl-C."""
        self._on_exit()
        self.should_exit = True

    def url(self) -> str:
        host, port = self.servers[0].sockets[0].getsockname()[:2]
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"


def build_server(engine: Engine, opts: ServeOptions) -> Server:
    """An unstarted server for `engine` (tests run it in a thread)."""
    app = create_app(engine, opts)
    state = app.state.serve
    config = uvicorn.Config(app, host=opts.host, port=opts.port, log_level="warning",
                            timeout_graceful_shutdown=opts.deadline_s + 5)

    def on_exit() -> None:
        if state.loop is not None:
            state.loop.call_soon_threadsafe(state.batcher.close)

    server = Server(config, on_exit)

    def ready() -> None:
        token = "; clients send 'Authorization: Bearer TOKEN'" if opts.token else ""
        print(f"energytta-serve: {engine.name} ready at {server.url()} (Ctrl-C stops{token})",
              flush=True)
    state.on_ready = ready
    return server


def serve(engine: Engine, opts: ServeOptions) -> None:
    """Serve until Ctrl-C / SIGTERM."""
    print(f"energytta-serve: warming up {engine.name} ...", file=sys.stderr, flush=True)
    build_server(engine, opts).run()
