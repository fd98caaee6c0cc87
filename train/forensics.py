"""Forensics bundles: a step whose loss or gradient went non-finite, captured so it can be replayed alone.

A bundle (forensics/step-NNNNNN/) holds every process's micro-batches of the step (batches-rankR.safetensors,
each process writes its own), the RNG state at the start of the step, the adapter weights as they were, the
resolved config and the device the step ran on. Replaying re-runs all the micro-batches in one process with a
hook on every module and names the first one whose output is not finite. It runs on the recorded device by
default (CPU kernels differ from GPU ones, and a NaN may need the GPU's to appear); --device overrides:

    python -m train.forensics --replay BUNDLE [--device cpu]      (also: python -m train.main --replay BUNDLE)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def save_bundle(root: Path, step: int, batches: list[dict], rng: dict, params: dict | None, cfg, row_ids: list[str],
                rank: int = 0, world_size: int = 1, device: str = "cpu") -> Path:
    """Write this process's micro-batches; the main process (params given) also the adapter and bundle.json."""
    path = root / f"step-{step:06d}"
    path.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for i, b in enumerate(b for b in batches if not b.get("filler")):
        for key in ("input_ids", "labels", "attention_mask"):
            tensors[f"mb{i}.{key}"] = b[key].detach().cpu().contiguous()
    save_file(tensors, str(path / f"batches-rank{rank}.safetensors"),
              metadata={"micro_batches": str(len(tensors) // 3)})
    if params is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in params.items()}, str(path / "adapter.safetensors"))
        (path / "bundle.json").write_text(json.dumps({"step": step, "world_size": world_size, "device": device,
                                                      "row_ids": row_ids, "rng": rng,
                                                      "config": dataclasses.asdict(cfg)}, indent=1))
    return path


def bundle_batches(bundle: Path, world_size: int) -> list[tuple[int, dict]]:
    """(rank, tensors of one micro-batch) for every process's micro-batches, rank by rank."""
    from safetensors import safe_open
    out = []
    for rank in range(world_size):
        file = bundle / f"batches-rank{rank}.safetensors"
        if not file.is_file():
            raise FileNotFoundError(f"{file}: missing; the bundle holds {world_size} processes' micro-batches and "
                                    "each process writes its own (on several nodes, copy them into one folder)")
        with safe_open(str(file), "pt") as f:
            n = int(f.metadata()["micro_batches"])
        data = load_file(str(file))
        out += [(rank, {k: data[f"mb{i}.{k}"] for k in ("input_ids", "labels", "attention_mask")}) for i in range(n)]
    return out


def _first_non_finite(obj) -> bool:
    if torch.is_tensor(obj):
        return obj.is_floating_point() and not bool(torch.isfinite(obj).all())
    if isinstance(obj, (tuple, list)):
        return any(_first_non_finite(o) for o in obj)
    if isinstance(obj, dict) or hasattr(obj, "values"):
        return any(_first_non_finite(o) for o in obj.values())
    return False


def replay(bundle: str | Path, device: str | None = None) -> dict:
    """Re-run a bundle's micro-batches (every process's) on `device`, by default the one the step ran on; returns
    what went non-finite first (module, or loss, or gradient)."""
    from train.batching import Row, collate, to_device
    from train.checkpointing import restore_rng
    from train.config import TrainConfig
    from train.device import autocast
    from train.loss import labels_only_loss_sum
    from train.lora_model import build_model, causal_lm, trainable_parameters

    bundle = Path(bundle)
    meta = json.loads((bundle / "bundle.json").read_text())
    cfg = TrainConfig(**meta["config"])
    dev = torch.device(device or meta.get("device", "cpu"))
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        dev = torch.device("cuda")   # recorded as cuda:N by process N; one process replays on its own GPU
    model = build_model(cfg, dev, print)
    params = trainable_parameters(model)
    saved = load_file(str(bundle / "adapter.safetensors"))
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(saved[name])
    restore_rng(meta["rng"])
    micro_batches = bundle_batches(bundle, int(meta.get("world_size", 1)))
    model.train()

    found: list[str] = []
    names = {m: n for n, m in model.named_modules()}

    def hook(module, args, output):
        if not found and _first_non_finite(output):
            found.append(names[module])

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    result = {"bundle": str(bundle), "step": meta["step"], "row_ids": meta["row_ids"], "device": str(dev),
              "micro_batches": len(micro_batches)}
    try:
        for i, (rank, data) in enumerate(micro_batches):
            # Rebuilt into rows and collated as the loop does, so the replay takes the same code path
            # (shared prefix included).
            ids, labels, mask = (data[k] for k in ("input_ids", "labels", "attention_mask"))
            rows = [Row(f"mb{i}.row{r}", ids[r, :int(mask[r].sum())].tolist(), labels[r, :int(mask[r].sum())].tolist())
                    for r in range(ids.shape[0])]
            batch = to_device(collate(rows, share_prefix=bool(cfg.share_prefix)), dev)
            with autocast(dev, cfg.precision):
                loss = labels_only_loss_sum(causal_lm(model), batch, cfg.loss_chunk_size)
            where = {"micro_batch": i, "rank": rank}
            if found:
                return result | where | {"first_non_finite": "module", "module": found[0]}
            if not torch.isfinite(loss):
                return result | where | {"first_non_finite": "loss", "module": None}
            loss.backward()
            bad = [n for n, p in params.items() if p.grad is not None and not torch.isfinite(p.grad).all()]
            if bad:
                return result | where | {"first_non_finite": "gradient", "module": bad[0]}
        return result | {"first_non_finite": None, "module": None,
                         "note": "everything finite on replay: the failure depends on state not in the bundle "
                                 "(e.g. an injected --debug-nan-steps loss) or on non-deterministic kernels"}
    finally:
        for h in handles:
            h.remove()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.forensics", description="Replay a forensics bundle")
    ap.add_argument("--replay", required=True, help="forensics/step-NNNNNN folder written by a training run")
    ap.add_argument("--device", default=None, help="where to replay (default: the device the step ran on)")
    args, _ = ap.parse_known_args(argv)
    result = replay(args.replay, args.device)
    print(json.dumps(result, indent=1))
    if result["module"]:
        print(f"first non-finite {result['first_non_finite']}: {result['module']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
