"""The FastAPI app: routes, auth, error lines, start-up (warm-up, batcher) and shutdown.

Contract (docs/serving.md): GET / (the page), GET /health, GET /v1/models,
POST /v1/generate, GET /metrics. Every refusal is JSON `{"error": "<one line>"}` with a
4xx/5xx code; 503s carry Retry-After.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from pathlib import Path
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from energytta.serve import encode
from energytta.serve.batcher import Batcher, Job, Overloaded
from energytta.serve.engine import Clips, Engine
from energytta.serve.metrics import Metrics
from energytta.serve.options import ServeOptions
from energytta.serve.request import BadRequest, parse

log = logging.getLogger("energytta.serve")
PAGE = Path(__file__).resolve().parent / "page.html"
OPEN_PATHS = ("/", "/health")  # no token needed: the page asks for one, health says little


class State:
    """Everything one app holds: the engine, its batcher, metrics, readiness."""

    def __init__(self, engine: Engine, opts: ServeOptions) -> None:
        self.engine, self.opts, self.metrics = engine, opts, Metrics()
        self.batcher = Batcher(engine.run, self.metrics,
                               opts.max_batch if opts.batching else 1,
                               opts.window_ms / 1000.0 if opts.batching else 0.0,
                               opts.queue_size)
        self.ready = False
        self.loop: asyncio.AbstractEventLoop | None = None  # set at start-up
        self.warmup_error: str | None = None
        self.on_ready: Callable[[], None] | None = None  # the CLI prints the URL here


def create_app(engine: Engine, opts: ServeOptions) -> FastAPI:
    """The app serving `engine` under `opts`; `app.state.serve` is its `State`."""
    state = State(engine, opts)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        task = asyncio.create_task(_start(state))
        yield
        state.batcher.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        state.batcher.pool.shutdown(wait=True)  # a running batch finishes

    app = FastAPI(title="energytta", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.serve = state
    _errors(app, state)
    _auth(app, opts)
    _routes(app, state)
    return app


async def _start(state: State) -> None:
    """Warm the model (in the worker thread), then start batching."""
    loop = state.loop = asyncio.get_running_loop()
    if state.opts.warmup:
        try:
            await loop.run_in_executor(state.batcher.pool, state.engine.warm_up)
        except Exception as e:  # noqa: BLE001 - /health reports it; the process stays up
            state.warmup_error = f"{type(e).__name__}: {e}"
            log.error("warm-up failed: %s", state.warmup_error)
            return
    state.ready = True
    if state.on_ready is not None:
        state.on_ready()
    await state.batcher.run()


def _errors(app: FastAPI, state: State) -> None:
    @app.exception_handler(BadRequest)
    async def bad_request(_request: Request, e: BadRequest) -> JSONResponse:
        headers = {"Retry-After": str(e.retry_after)} if isinstance(e, Overloaded) else None
        if e.status < 500:
            state.metrics.count("rejected_bad")
        return JSONResponse({"error": str(e)}, e.status, headers=headers)

    @app.exception_handler(Exception)
    async def failed(_request: Request, e: Exception) -> JSONResponse:
        state.metrics.count("failed")
        log.exception("request failed")
        return JSONResponse({"error": f"generation failed ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}); the server keeps "
                             "serving"}, 500)


def _auth(app: FastAPI, opts: ServeOptions) -> None:
    if not opts.token:
        return
    expected = f"Bearer {opts.token}".encode()

    @app.middleware("http")
    async def require_token(request: Request, call_next):
        if request.url.path not in OPEN_PATHS:
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return JSONResponse({"error": "missing or wrong token; send "
                                     "'Authorization: Bearer TOKEN' (the --token of the "
                                     "server)"}, 401)
        return await call_next(request)


def _routes(app: FastAPI, state: State) -> None:
    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.get("/health")
    async def health() -> JSONResponse:
        if state.ready:
            return JSONResponse({"status": "ok", "model": state.engine.name})
        status = "failed: " + state.warmup_error if state.warmup_error else "warming up"
        return JSONResponse({"status": status, "model": state.engine.name}, 503)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"data": [state.engine.describe()]}

    @app.get("/metrics")
    async def metrics() -> dict:
        depth, clips = state.batcher.depth()
        return {"model": state.engine.name, "ready": state.ready,
                "batching": {"enabled": state.opts.batching, "max_batch": state.batcher.max_batch,
                             "window_ms": state.batcher.window_s * 1000.0},
                **state.metrics.snapshot(depth, clips, state.batcher.running_rows)}

    @app.post("/v1/generate")
    async def generate(request: Request) -> Response:
        t0 = time.monotonic()
        if state.warmup_error:
            raise BadRequest(f"the model failed to warm up ({state.warmup_error}); fix it and "
                             "restart the server", 503)
        req = parse(await _body(request, state.opts.max_body_bytes), state.opts)
        s = state.engine.settings(req)
        job = Job((req, s), state.engine.key(req, s), req.num_samples, t0 + state.opts.deadline_s)
        state.batcher.submit(job)
        clips = await _wait(request, job, state)
        state.metrics.served(req.num_samples, time.monotonic() - t0)
        return encode.respond(clips, state.engine.name, request.headers.get("accept", ""))


async def _body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BadRequest(f"request body is {declared} bytes; the limit is {limit}", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(f"request body is over the limit of {limit} bytes", 413)
        chunks.append(chunk)
    return b"".join(chunks)


async def _wait(request: Request, job: Job, state: State) -> Clips:
    """The job's clips; marks it gone when the client disconnects (so a queued job is
    dropped before it costs a row), and gives up at its deadline."""
    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                job.gone = True
                state.batcher.depth()  # purge it now if it is still queued
                return

    watcher = asyncio.create_task(watch())
    try:
        return await asyncio.wait_for(asyncio.shield(job.future),
                                      max(0.0, job.deadline - time.monotonic()))
    except asyncio.TimeoutError:
        if not job.started:
            state.batcher.drop(job, "expired_in_queue")
            raise Overloaded(f"no batch slot within the {state.opts.deadline_s:g} s deadline; "
                             "retry later", state.batcher.retry_after()) from None
        job.gone = True
        state.metrics.count("timed_out_running")
        raise BadRequest(f"generation ran past the {state.opts.deadline_s:g} s deadline; "
                         "ask for fewer or shorter clips", 504) from None
    finally:
        watcher.cancel()
