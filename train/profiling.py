"""torch.profiler over a range of optimizer steps (--profile-steps A:B): one chrome trace per process."""
from __future__ import annotations

from pathlib import Path

import torch


class StepProfiler:
    def __init__(self, spec: str | None, out_dir: Path, rank: int):
        self.range = tuple(int(x) for x in spec.split(":")) if spec else None
        self.out_dir, self.rank, self.prof = out_dir, rank, None

    def step_begin(self, step: int) -> None:
        if self.range and step == self.range[0]:
            acts = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                acts.append(torch.profiler.ProfilerActivity.CUDA)
            self.prof = torch.profiler.profile(activities=acts, record_shapes=True, profile_memory=True)
            self.prof.start()

    def step_end(self, step: int) -> None:
        if self.prof is not None and step == self.range[1]:
            self.close()

    def close(self) -> None:
        if self.prof is None:
            return
        self.prof.stop()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"trace-steps{self.range[0]}-{self.range[1]}-rank{self.rank}.json"
        self.prof.export_chrome_trace(str(path))
        print(f"profiler trace written to {path} (open in chrome://tracing or https://ui.perfetto.dev)")
        self.prof = None
