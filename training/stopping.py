"""Stopping a training run on Ctrl-C or SIGTERM without losing it.

The run's checkpoint was written only every ``train.val_every`` steps (200
by default): an interrupted run lost up to that many steps, ended in a
``KeyboardInterrupt`` traceback, and one stopped before its first
checkpoint left a folder that ``--resume`` called "not a training
checkpoint". While :class:`StopRequest` is active, the first SIGINT or
SIGTERM asks the loop to stop after the step it is in; the loop saves its
checkpoint and raises :class:`Interrupted`. A second signal stops at once,
as before.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any, Dict, Optional

__all__ = ["StopRequest", "Interrupted"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """The run stopped on a signal after ``step`` of ``steps`` steps, saved
    in ``checkpoint``."""

    def __init__(self, signum: int, step: int, steps: int, checkpoint: Path) -> None:
        self.signum, self.step, self.steps, self.checkpoint = signum, step, steps, checkpoint
        super().__init__(f"interrupted ({signal.Signals(signum).name}) after step {step} of {steps}: the run is "
                         f"saved in {checkpoint}; continue it with --resume {checkpoint}")


class StopRequest:
    """A context in which SIGINT and SIGTERM ask to stop (:attr:`signum`)
    rather than stop. Outside the main thread (where Python takes no signal
    handlers) it does nothing, and signals act as they would."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous: Dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for number in _SIGNALS:
                self._previous[number] = signal.signal(number, self._ask)
        return self

    def __exit__(self, *exc: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _ask(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.signum is not None:
            # A second signal: stop now, as the signal's own handler would.
            self.__exit__()
            signal.raise_signal(signum)
            return
        self.signum = signum
