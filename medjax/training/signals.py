"""Graceful stop on SIGTERM/SIGINT: the handler only sets a flag; the loop saves at the next step boundary.

A second SIGINT while the flag is set raises ``KeyboardInterrupt`` at once (for an impatient Ctrl-C).
"""

from __future__ import annotations

import signal
import threading

EXIT_CODES = {signal.SIGTERM: 0, signal.SIGINT: 130}


class StopRequest:
    """Context manager installing SIGTERM/SIGINT handlers (main thread only; elsewhere it does nothing).

    Attributes:
      signum: the first signal received, or None.
    """

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
        self._signals = tuple(signals)
        self._old: dict = {}
        self.signum: int | None = None

    def _handler(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str | None:
        return None if self.signum is None else signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """0 after SIGTERM (a scheduler's polite stop), 130 after SIGINT, 0 when no signal came."""
        return EXIT_CODES.get(self.signum, 0) if self.signum is not None else 0

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self._signals:
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()
        return False
