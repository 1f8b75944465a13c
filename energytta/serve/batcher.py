"""Dynamic batching: requests that arrive within a short window and share their sampling
settings become ONE model call of up to `max_batch` clips.

Asyncio side (one event loop): `submit` queues a `Job` (or refuses it: queue full or
shutting down -> 503); `run` forms batches and hands each to a single worker thread, so
the model runs one batch at a time while the loop keeps answering. A job whose client
went away or whose deadline passed is dropped when the batcher reaches it, before it
takes a row of a batch.
"""
from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

from energytta.serve.metrics import Metrics
from energytta.serve.request import BadRequest


@dataclass(eq=False)
class Job:
    """One request waiting for (or in) a batch.

    Attributes:
        payload: what the runner needs (the checked request and its settings).
        key: jobs with equal keys can share a model call.
        rows: clips it asks for (its num_samples).
        deadline: time.monotonic() after which it is no longer wanted.
    """

    payload: Any
    key: Hashable
    rows: int
    deadline: float
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop()
                                   .create_future())
    enqueued: float = field(default_factory=time.monotonic)
    gone: bool = False  # the client disconnected or gave up
    started: bool = False  # taken into a batch


class Overloaded(BadRequest):
    """503: come back in `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, 503)
        self.retry_after = retry_after


class Batcher:
    """Forms batches from queued jobs and runs them one at a time.

    Args:
        runner: blocking `runner(jobs) -> [result per job]`; runs in the worker thread.
        metrics: where batch sizes and drops are counted.
        max_batch: most rows per call (1 = no batching); window_s: how long the oldest
            job waits for compatible company; queue_size: most waiting jobs.
    """

    def __init__(self, runner: Callable[[list[Job]], list[Any]], metrics: Metrics,
                 max_batch: int, window_s: float, queue_size: int) -> None:
        self.runner, self.metrics = runner, metrics
        self.max_batch, self.window_s, self.queue_size = max_batch, window_s, queue_size
        self.queue: deque[Job] = deque()
        self.running_rows = 0
        self.closing = False
        self._wake = asyncio.Event()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="energytta-model")

    # ------------------------------------------------------------------ queue
    def submit(self, job: Job) -> None:
        """Queue `job`, or raise Overloaded (503) when full or shutting down."""
        if self.closing:
            self.metrics.count("rejected_shutdown")
            raise Overloaded("the server is shutting down; retry on a running server", 5)
        self._purge()
        if len(self.queue) >= self.queue_size:
            self.metrics.count("rejected_full")
            raise Overloaded(f"the queue is full ({self.queue_size} requests waiting); retry "
                             f"in {self.retry_after()} s", self.retry_after())
        self.queue.append(job)
        self._wake.set()

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained a batch's worth (>= 1)."""
        batches = 1 + sum(j.rows for j in self.queue) / self.max_batch
        return max(1, math.ceil(batches * self.metrics.mean_batch_s()))

    def depth(self) -> tuple[int, int]:
        """(waiting requests, their clips)."""
        self._purge()
        return len(self.queue), sum(j.rows for j in self.queue)

    def _purge(self) -> None:
        """Drop jobs nobody waits for (client gone, deadline passed): they cost no row."""
        now = time.monotonic()
        for job in [j for j in self.queue if j.gone or now > j.deadline]:
            self.drop(job, "dropped_disconnected" if job.gone else "expired_in_queue")

    def drop(self, job: Job, reason: str) -> None:
        """Take a queued job out, count why, answer it 503 (if anyone still listens)."""
        if job in self.queue:
            self.queue.remove(job)
            self.metrics.count(reason)
        _fail(job, Overloaded("the request waited past its deadline in the queue; retry "
                              "later", self.retry_after()))

    def close(self) -> None:
        """Graceful shutdown: refuse new jobs, answer queued ones 503; the running batch
        finishes and answers normally."""
        self.closing = True
        while self.queue:
            job = self.queue.popleft()
            self.metrics.count("rejected_shutdown")
            _fail(job, Overloaded("the server is shutting down; retry on a running server", 5))
        self._wake.set()

    # ------------------------------------------------------------------ batches
    async def run(self) -> None:
        """Batch and run jobs until `close()`; never raises for a failing batch."""
        loop = asyncio.get_running_loop()
        while not self.closing:
            jobs = await self._next_batch()
            if not jobs:
                continue
            rows = sum(j.rows for j in jobs)
            for job in jobs:
                job.started = True
            self.running_rows = rows
            t0 = time.monotonic()
            try:
                results = await loop.run_in_executor(self.pool, self.runner, jobs)
            except Exception as e:  # noqa: BLE001 - every job gets the failure, serving goes on
                for job in jobs:
                    _fail(job, e)
            else:
                self.metrics.batch(rows, time.monotonic() - t0)
                for job, result in zip(jobs, results):
                    if not job.future.done():
                        job.future.set_result(result)
            finally:
                self.running_rows = 0

    async def _next_batch(self) -> list[Job]:
        """Wait for a job, then up to the window for compatible ones; take them."""
        self._purge()
        while not self.queue:
            if self.closing:
                return []
            self._wake.clear()
            await self._wake.wait()
            self._purge()
        first = self.queue[0]
        end = first.enqueued + self.window_s
        while (self.max_batch > 1 and time.monotonic() < end and not self.closing
               and self._rows_like(first) < self.max_batch):
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), end - time.monotonic())
            except asyncio.TimeoutError:
                break
        self._purge()  # a client that left during the window costs nothing
        return self._take() if not self.closing else []

    def _rows_like(self, first: Job) -> int:
        return sum(j.rows for j in self.queue if j.key == first.key)

    def _take(self) -> list[Job]:
        """The oldest job and, in arrival order, compatible ones that fit max_batch."""
        if not self.queue:
            return []
        first, taken, rows = self.queue[0], [], 0
        for job in list(self.queue):
            if job is first or (job.key == first.key and rows + job.rows <= self.max_batch):
                taken.append(job)
                rows += job.rows
                self.queue.remove(job)
        return taken


def _fail(job: Job, error: Exception) -> None:
    """Answer `job` with `error`; marked as seen, since a gone client never reads it."""
    if not job.future.done():
        job.future.set_exception(error)
        job.future.exception()
