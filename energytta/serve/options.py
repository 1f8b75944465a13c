"""The server's knobs (one frozen dataclass, filled by `energytta-serve`'s flags)."""
from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass

from energytta.errors import UserError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServeOptions:
    """How one server process batches, bounds and guards its requests.

    Attributes:
        ckpt: the model it serves (a shipped name or a checkpoint path); loaded once.
        host, port: where it listens; anything but loopback needs `token`.
        token: clients send `Authorization: Bearer TOKEN`; None = no token (loopback only).
        batching: False serves one request per model call (for comparison).
        window_ms: how long the first request of a batch waits for company.
        max_batch: most clips (rows) in one shared model call (one request's
            num_samples always run together, even above it).
        queue_size: most requests waiting; one more gets 503 + Retry-After.
        deadline_s: a request's whole budget; past it in the queue: 503, in a batch: 504.
        max_prompt_chars, max_duration, max_num_samples, max_iterations, max_body_bytes:
            caps on what one request may ask.
        warmup: run one generation before /health says ready.
        threads: torch CPU threads for the model (None = torch's default).
    """

    ckpt: str = "student"  # checkpoint.DEFAULT_NAME (not imported: --help stays torch-free)
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    batching: bool = True
    window_ms: float = 20.0
    max_batch: int = 16
    queue_size: int = 64
    deadline_s: float = 60.0
    max_prompt_chars: int = 1000
    max_duration: float = 30.0
    max_num_samples: int = 8
    max_iterations: int = 256
    max_body_bytes: int = 4_000_000
    warmup: bool = True
    threads: int | None = None

    def __post_init__(self) -> None:
        self._check_positive()
        if not is_local(self.host) and not self.token:
            raise UserError(f"--host {self.host} lets other machines reach the server; "
                            "pass --token SECRET (or set ENERGYTTA_SERVE_TOKEN) and have "
                            "clients send 'Authorization: Bearer SECRET'")

    def _check_positive(self) -> None:
        for name in ("max_batch", "queue_size", "max_prompt_chars", "max_num_samples",
                     "max_iterations", "max_body_bytes"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1")
        for name in ("deadline_s", "max_duration"):
            v = float(getattr(self, name))
            if not (math.isfinite(v) and v > 0):
                raise UserError(f"--{name.replace('_s', '').replace('_', '-')} must be a "
                                "finite number > 0")
        if not (math.isfinite(self.window_ms) and self.window_ms >= 0):
            raise UserError("--window-ms must be a finite number >= 0")
        if not 0 <= int(self.port) < 65536:
            raise UserError(f"--port {self.port} is not in 0..65535")


def is_local(host: str) -> bool:
    """True for loopback addresses (only this machine can connect)."""
    if host in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
