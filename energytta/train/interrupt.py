"""Ctrl-C or SIGTERM during training: the first one asks the loop to save and stop between
steps. SIGTERM is what `kill`, systemd, Slurm's time limit and a container's stop send, so it
saves like Ctrl-C instead of losing the work since the last checkpoint."""
from __future__ import annotations

import signal
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
    """The loop saved and stopped on a signal; `exit_code` is the shell's 128 + signal
    (130 for Ctrl-C, 143 for SIGTERM), what `errors.run_cli` returns."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


class StopRequest:
    """Turns the first Ctrl-C or SIGTERM into a flag checked between steps (the loop then
    saves a checkpoint and exits); a second one interrupts immediately."""

    def __init__(self) -> None:
        self.requested = False
        self.signum = signal.SIGINT
        self._prev: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise Stopped(signum)
        self.requested, self.signum = True, signum

    def __enter__(self) -> "StopRequest":
        try:
            for sig in SIGNALS:
                self._prev[sig] = signal.signal(sig, self._handler)
        except ValueError:  # not the main thread: keep the default behaviour
            self._prev = {}
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, prev in self._prev.items():
            signal.signal(sig, prev)
