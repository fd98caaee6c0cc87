"""The playbook's loss-divergence signals, watched as the run trains (docs/usage.md, "Risk signals").

- A spike: a finite step loss far above its running level, the median of the last WINDOW finite step
  losses (a median, so one earlier spike does not lift the level).
- A rising validation loss: each evaluation higher than the one before, several in a row.

The watch only judges; fit() warns with the step and, under --abort-on-divergence, stops with a checkpoint.
The loss it sees is already summed over processes, so every process reaches the same verdict.
"""
from __future__ import annotations

import math
import statistics
from collections import deque

# Steps in the running level: enough that batch-to-batch noise averages out, few enough to follow the
# loss as it falls during training.
WINDOW = 20
# No spike verdict before this many steps: the median of two or three step losses is mostly noise.
MIN_HISTORY = 5
# A spike must also be this many nats above the level: late in SFT the loss can sit near zero, where a
# factor alone would fire on one unusual batch.
MIN_JUMP_NATS = 0.5


class DivergenceWatch:
    def __init__(self, spike_factor: float, eval_rises: int):
        self.spike_factor = spike_factor
        self.eval_rises = eval_rises
        self._losses: deque[float] = deque(maxlen=WINDOW)
        self._last_eval: float | None = None
        self._rises = 0

    def step_loss(self, step: int, loss: float) -> str | None:
        """The spike signal for optimizer step `step`, or None. Non-finite losses are the NaN guard's."""
        if not math.isfinite(loss):
            return None
        message = None
        if len(self._losses) >= MIN_HISTORY:
            level = statistics.median(self._losses)
            if loss > self.spike_factor * level and loss - level > MIN_JUMP_NATS:
                ratio = loss / level if level > 0 else math.inf
                message = (f"step {step}: loss {loss:.4f} is {ratio:.1f}x its running level {level:.4f} (median of "
                           f"the last {len(self._losses)} steps; signal above {self.spike_factor:g}x)")
        self._losses.append(loss)
        return message

    def eval_loss(self, step: int, loss: float) -> str | None:
        """The rising-validation-loss signal after the evaluation at `step`, or None."""
        if not math.isfinite(loss):
            return None
        self._rises = self._rises + 1 if self._last_eval is not None and loss > self._last_eval else 0
        self._last_eval = loss
        if self.eval_rises and self._rises >= self.eval_rises:
            return f"step {step}: validation loss {loss:.4f} has risen {self._rises} evaluations in a row"
        return None
