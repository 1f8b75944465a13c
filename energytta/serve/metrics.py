"""Counters and latency percentiles behind `GET /metrics` (event-loop thread only)."""
from __future__ import annotations

from collections import Counter, deque

import numpy as np

WINDOW = 1000  # latency percentiles over the most recent requests


class Metrics:
    """What the server did since it started; `snapshot()` is the /metrics JSON."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()  # requests_ok, clips_served, rejected_full, ...
        self.batch_rows: Counter[int] = Counter()  # rows per model call -> how many calls
        self.latency_s: deque[float] = deque(maxlen=WINDOW)
        self.batch_s: deque[float] = deque(maxlen=50)  # recent model-call seconds

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    def batch(self, rows: int, seconds: float) -> None:
        self.batch_rows[rows] += 1
        self.batch_s.append(seconds)
        self.count("batches")

    def served(self, clips: int, latency_s: float) -> None:
        self.count("requests_ok")
        self.count("clips_served", clips)
        self.latency_s.append(latency_s)

    def mean_batch_s(self) -> float:
        return float(np.mean(self.batch_s)) if self.batch_s else 1.0

    def snapshot(self, queue_depth: int, queued_clips: int, running: int) -> dict:
        lat = np.asarray(self.latency_s) * 1000.0
        pct = ({f"p{q}": round(float(np.percentile(lat, q)), 1) for q in (50, 95, 99)}
               if lat.size else {"p50": None, "p95": None, "p99": None})
        return {"queue_depth": queue_depth, "queued_clips": queued_clips,
                "running_clips": running,
                "batch_sizes": {str(k): v for k, v in sorted(self.batch_rows.items())},
                "latency_ms": {**pct, "count": int(lat.size)},
                **{k: self.counts.get(k, 0) for k in (
                    "requests_ok", "clips_served", "batches", "rejected_full", "rejected_bad",
                    "expired_in_queue", "timed_out_running", "dropped_disconnected",
                    "rejected_shutdown", "failed")}}
