"""Atomic checkpoints that resume bit-exactly and never need pickle to load.

Layout of checkpoints/step-NNNNNN/:
  adapter.safetensors     trainable (LoRA) tensors by parameter name
  optimizer.safetensors   AdamW moment tensors, keyed state.<param index>.<name>
  rng.json                per-process RNG states (python, numpy, torch, cuda), one entry per rank
  checkpoint.json         loop counters, data position, optimizer param_groups, sha256 of the files above;
                          written last, so a folder without a valid one is incomplete by construction.
A checkpoint is written to checkpoints/.tmp-step-NNNNNN and renamed into place: a crash mid-write never
leaves a half-written folder under a final name.
Under --fsdp the tensors are gathered to whole ones before writing and split again after reading
(gather_full_* / load_full_state), so the files are the same with and without FSDP.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from contract.errors import UserError

MANIFEST = "checkpoint.json"
FORMAT_VERSION = 1


class CheckpointCorrupt(UserError):
    """A checkpoint folder is incomplete, modified or unreadable; the message names the file."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- RNG state as JSON (no pickle) ------------------------------------------------------------------

def capture_rng() -> dict:
    py = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
        "cuda": [],
    }
    if torch.cuda.is_available():
        state["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: dict) -> None:
    v, keys, gauss = state["python"]
    random.setstate((v, tuple(keys), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["torch"])), dtype=torch.uint8))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)
                                      for s in state["cuda"]])


# ---- optimizer state as tensors + JSON ------------------------------------------------------------

def _split_optimizer_state(sd: dict) -> tuple[dict, dict]:
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"state.{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _join_optimizer_state(tensors: dict, meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = v
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


# ---- FSDP: whole tensors in, whole tensors out ------------------------------------------------------

def _full_options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(full_state_dict=True, **kw)


def _optimizer_indices(model, optimizer) -> dict[str, int]:
    """Parameter name -> the number optimizer.state_dict() gives it (its position over all param groups).
    torch.distributed.checkpoint keys optimizer state by name; the files key it by that number."""
    position = {id(p): i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
    return {n: position[id(p)] for n, p in model.named_parameters() if id(p) in position}


def gather_full_trainable(model) -> dict[str, torch.Tensor]:
    """Whole (unsharded) trainable tensors by parameter name, on CPU, on the main process; {} elsewhere.
    A collective: every process must call it. Frozen base weights are left out (never gathered)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    return get_model_state_dict(model, options=_full_options(cpu_offload=True, ignore_frozen_params=True))


def gather_full_optimizer(model, optimizer) -> dict:
    """What optimizer.state_dict() returns without FSDP, with whole moment tensors, on the main process
    ({} elsewhere). A collective: every process must call it."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    sd = get_optimizer_state_dict(model, optimizer, options=_full_options(cpu_offload=True))
    if not sd.get("state") and not sd.get("param_groups"):
        return {}
    index = _optimizer_indices(model, optimizer)
    return {"state": {index[name]: st for name, st in sd["state"].items()},
            "param_groups": [dict(g, params=[index[name] for name in g["params"]]) for g in sd["param_groups"]]}


def load_full_state(model, optimizer, trainable: dict[str, torch.Tensor], optimizer_state: dict) -> None:
    """Put whole tensors from a checkpoint into the sharded model and optimizer. Every process read the
    same files, so each keeps its own shard and nothing is broadcast."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict
    # strict=False: the checkpoint holds the adapters only; the frozen base weights are already loaded.
    set_model_state_dict(model, trainable, options=_full_options(strict=False))
    name = {i: n for n, i in _optimizer_indices(model, optimizer).items()}
    by_name = {"state": {name[i]: st for i, st in optimizer_state["state"].items()},
               "param_groups": [dict(g, params=[name[i] for i in g["params"]]) for g in optimizer_state["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, by_name, options=_full_options())


# ---- save / find / load ---------------------------------------------------------------------------

def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def save_checkpoint(ckpt_root: str | Path, step: int, *, trainable: dict[str, torch.Tensor], optimizer_state: dict,
                    loop_state: dict, rng_per_rank: list[dict], keep: int) -> Path:
    """`optimizer_state` is optimizer.state_dict() (or gather_full_optimizer's equivalent under FSDP)."""
    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = root / f".tmp-{checkpoint_name(step)}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file({k: v.detach().cpu().contiguous() for k, v in trainable.items()}, str(tmp / "adapter.safetensors"))
    opt_tensors, opt_meta = _split_optimizer_state(optimizer_state)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "rng.json").write_text(json.dumps(rng_per_rank))
    files = {name: sha256_file(tmp / name) for name in ("adapter.safetensors", "optimizer.safetensors", "rng.json")}
    manifest = {"format": FORMAT_VERSION, "step": step, "loop_state": loop_state, "optimizer": opt_meta,
                "files": files}
    with (tmp / MANIFEST).open("w") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    if final.exists():  # a re-run of the same step (e.g. after a resume) replaces the old folder
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old)
    return final


def load_checkpoint(path: str | Path) -> dict:
    """Read and verify one checkpoint folder; raise CheckpointCorrupt with the reason if it is not whole."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointCorrupt(f"{path / MANIFEST}: unreadable ({e})") from e
    for name, digest in manifest.get("files", {}).items():
        f = path / name
        if not f.is_file():
            raise CheckpointCorrupt(f"{f}: missing")
        if sha256_file(f) != digest:
            raise CheckpointCorrupt(f"{f}: sha256 mismatch (truncated or modified after it was written)")
    try:
        trainable = load_file(str(path / "adapter.safetensors"))
        optimizer = _join_optimizer_state(load_file(str(path / "optimizer.safetensors")), manifest["optimizer"])
        rng = json.loads((path / "rng.json").read_text())
    except Exception as e:  # safetensors raises its own error types for malformed headers
        raise CheckpointCorrupt(f"{path}: unreadable ({e})") from e
    return {"path": path, "step": manifest["step"], "loop_state": manifest["loop_state"],
            "trainable": trainable, "optimizer": optimizer, "rng": rng}


def latest_valid_checkpoint(ckpt_root: str | Path, warn) -> dict | None:
    """Newest checkpoint that verifies; each newer broken one is reported through `warn` and skipped."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return None
    for path in sorted((p for p in root.glob("step-*") if p.is_dir()), reverse=True):
        try:
            return load_checkpoint(path)
        except CheckpointCorrupt as e:
            warn(f"checkpoint {path.name} is not usable, falling back to the previous one: {e}")
    return None
