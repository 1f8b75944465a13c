"""Ctrl-C during training: the first one asks the loop to save and stop between steps."""
from __future__ import annotations

import signal
from typing import Any


class StopRequest:
    """Turns the first Ctrl-C into a flag checked between steps (the loop then saves a
    checkpoint and exits); a second Ctrl-C interrupts immediately."""

    def __init__(self) -> None:
        self.requested = False
        self._prev: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "StopRequest":
        try:
            self._prev = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread: keep the default behaviour
            self._prev = None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._prev is not None:
            signal.signal(signal.SIGINT, self._prev)
