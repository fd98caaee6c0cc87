"""train.log (human lines) and metrics.jsonl (one JSON object per optimizer step or evaluation); with
--report-to tensorboard the same numbers also go to TensorBoard event files under tensorboard/.

Only the main process writes files; every process prints warnings and errors, tagged with its rank,
so a failure on rank 3 is not lost.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tqdm import tqdm


class RunLog:
    def __init__(self, output_dir: str | Path | None, rank: int = 0, world_size: int = 1, report_to: str = "none"):
        self.rank, self.world_size = rank, world_size
        self.is_main = rank == 0
        self._log = self._metrics = self._tensorboard = None
        if output_dir is not None and self.is_main:
            out = Path(output_dir)
            out.mkdir(parents=True, exist_ok=True)
            self._log = (out / "train.log").open("a", encoding="utf-8")
            self._metrics = (out / "metrics.jsonl").open("a", encoding="utf-8")
            if report_to == "tensorboard":
                # Imported here: tensorboard is optional (config.validate_args checks it is installed).
                from torch.utils.tensorboard import SummaryWriter
                self._tensorboard = SummaryWriter(str(out / "tensorboard"))

    def _line(self, level: str, msg: str) -> str:
        tag = f" rank{self.rank}" if self.world_size > 1 else ""
        return f"{time.strftime('%Y-%m-%d %H:%M:%S')} {level}{tag} {msg}"

    def info(self, msg: str) -> None:
        if self.is_main:
            line = self._line("INFO", msg)
            tqdm.write(line, file=sys.stdout)
            if self._log:
                self._log.write(line + "\n")
                self._log.flush()

    def _emit_everywhere(self, level: str, msg: str) -> None:
        line = self._line(level, msg)
        tqdm.write(line, file=sys.stderr)
        if self._log:
            self._log.write(line + "\n")
            self._log.flush()

    def warn(self, msg: str) -> None:
        self._emit_everywhere("WARN", msg)

    def error(self, msg: str) -> None:
        self._emit_everywhere("ERROR", msg)

    def metrics(self, record: dict) -> None:
        if self._metrics:
            self._metrics.write(json.dumps(record) + "\n")
            self._metrics.flush()
        if self._tensorboard:
            # One scalar per number, named by record kind: train/loss, train/lr, ..., eval/eval_loss.
            for key, value in record.items():
                if key not in ("kind", "step") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tensorboard.add_scalar(f"{record['kind']}/{key}", value, record["step"])

    def close(self) -> None:
        for f in (self._log, self._metrics, self._tensorboard):
            if f:
                f.close()
