"""Graceful stop: SIGTERM/SIGINT set a flag that the epoch loop polls between steps."""

from __future__ import annotations

import logging
import signal
from typing import Any

__all__ = ["StopFlag"]

log = logging.getLogger("bce3s.engine")


class StopFlag:
    """A context manager that turns SIGTERM/SIGINT into a flag (a second SIGINT aborts at once).

    Calling the object returns whether a stop was requested; ``signum`` is the signal received.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("received %s: finishing the current step, then saving last.pt", signal.Signals(signum).name)

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def __call__(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "signal"
