"""Preemption-safe runs: SIGTERM or SIGINT ends the run at the next optimizer-step boundary, with a checkpoint.

The handler only records the signal; fit() asks stop_agreed() at each step boundary, which under torchrun
is a collective, so every process stops after the same step and joins the same checkpoint save. A
restart loop then continues with `--resume auto` (docs/usage.md, "Preemption and restart loops").
"""
from __future__ import annotations

import os
import signal
import threading

from train import distributed

# EX_TEMPFAIL from sysexits.h: a temporary failure, the caller is invited to retry. Distinct from 0 (done),
# 1 (an error to fix) and 2 (bad flags), so a restart loop knows to start the run again.
EXIT_STOPPED = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunStopped(Exception):
    """The run stopped on a signal after a checkpoint; main() logs the message and exits EXIT_STOPPED."""


class StopSignals:
    """While installed, SIGTERM and SIGINT set `received` instead of ending the process.

    Every further signal is also only recorded: under torchrun a Ctrl-C reaches each process twice (from
    the terminal and forwarded by torchrun), and the second must not cut the step short. SIGKILL still
    ends a process at once (losing the work since the last checkpoint).
    """

    def __init__(self):
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> bool:
        """Take over SIGTERM and SIGINT; False where Python allows no handler (outside the main thread)."""
        if threading.current_thread() is not threading.main_thread():
            return False
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return True

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name
            # os.write, not the log: a handler may run in the middle of a log write.
            os.write(2, f"\n{self.received} received: finishing the current optimizer step, then a checkpoint "
                        f"and exit {EXIT_STOPPED}\n".encode())

    def stop_agreed(self, info: distributed.DistInfo, device) -> bool:
        """True on every process when any process has received a signal (one small all-reduce under torchrun)."""
        return distributed.all_reduce_sum(info, [float(self.received is not None)], device)[0] > 0
