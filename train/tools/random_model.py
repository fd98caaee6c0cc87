"""Build a random-weight checkpoint of the released Ministral 3 8B layout, to test the real scale locally.

    python -m train.tools.random_model --shape 8b --out DIR [--layers N] [--vision-layers N] [--seed S]
                                       [--max-shard-gb G]

What it writes is laid out like the downloaded Reasoning checkpoint: a VLM config.json whose text_config is
the 8B's (train/pretrained.py: TEXT_CONFIG_8B, ROPE_PARAMETERS) with a Pixtral vision tower of the released
size, the on-disk tensor names transformers 5 writes for Mistral3ForConditionalGeneration, bf16 weights in
model-0000N-of-0000M.safetensors shards with model.safetensors.index.json, and the tokenizer, chat template,
SYSTEM_PROMPT.txt and generation_config.json the tiny model has (train/tools/model_files.py). --layers cuts
the text depth only (real vocabulary, hidden size and heads), for tests at reduced depth; --vision-layers
cuts the vision tower's depth, which the loop never reads, to make such a folder quicker to write.

The weights are generated one shard at a time and each shard is written before the next is drawn, so the
peak memory is about one shard, never the whole model. Deterministic: each tensor is drawn from its own
generator seeded from --seed and the tensor's position, so the same seed gives the same files.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from train.pretrained import (ROPE_PARAMETERS, TEXT_CONFIG_8B, VISION_CONFIG_8B, VLM_FIELDS_8B, vlm_disk_name)
from train.tools.model_files import build_tokenizer, sample_texts, write_side_files

SHAPES = {"8b": (TEXT_CONFIG_8B, VISION_CONFIG_8B, VLM_FIELDS_8B)}
# transformers' save_pretrained default: the released 8B comes in shards of at most this many bytes.
MAX_SHARD_BYTES = 5_000_000_000
INIT_STD = 0.02  # transformers' initializer_range: activations stay finite through 34 random layers


def vlm_config(shape: str, layers: int | None = None, vision_layers: int | None = None):
    """The Mistral3Config of `shape`, with the text (vision) depth cut to `layers` (`vision_layers`) when given."""
    from transformers import Ministral3Config, Mistral3Config, PixtralVisionConfig

    text, vision, fields = SHAPES[shape]
    text = text | ({"num_hidden_layers": layers} if layers else {})
    vision = vision | ({"num_hidden_layers": vision_layers} if vision_layers else {})
    cfg = Mistral3Config(vision_config=PixtralVisionConfig(**vision),
                         text_config=Ministral3Config(**text, rope_parameters=dict(ROPE_PARAMETERS),
                                                      initializer_range=INIT_STD),
                         architectures=["Mistral3ForConditionalGeneration"], **fields)
    cfg.dtype = "bfloat16"
    return cfg


def tensor_plan(cfg) -> list[tuple[str, torch.Size]]:
    """(on-disk name, shape) of every tensor of the VLM, in the model's own order, from a meta-device instance."""
    from transformers import Mistral3ForConditionalGeneration

    with torch.device("meta"):
        model = Mistral3ForConditionalGeneration(cfg)
    return [(vlm_disk_name(name), t.shape) for name, t in model.state_dict().items()]


def shards(plan: list[tuple[str, torch.Size]], max_bytes: int) -> list[list[tuple[str, torch.Size]]]:
    """Consecutive groups of tensors of at most max_bytes of bf16 each (a larger tensor gets a shard of its own)."""
    groups, size = [[]], 0
    for name, shape in plan:
        n = shape.numel() * 2
        if groups[-1] and size + n > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append((name, shape))
        size += n
    return groups


def random_tensor(name: str, shape: torch.Size, seed: int, index: int) -> torch.Tensor:
    """Norm weights are ones (as initialised); every other weight is N(0, INIT_STD) in bf16."""
    if name.endswith("norm.weight") or name.endswith("ln_pre.weight"):
        return torch.ones(shape, dtype=torch.bfloat16)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
    return torch.empty(shape, dtype=torch.bfloat16).normal_(0.0, INIT_STD, generator=gen)


def build(out: str | Path, shape: str = "8b", layers: int | None = None, seed: int = 0,
          max_shard_bytes: int = MAX_SHARD_BYTES, vision_layers: int | None = None, progress: bool = True) -> Path:
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = vlm_config(shape, layers, vision_layers)
    plan = tensor_plan(cfg)
    groups = shards(plan, max_shard_bytes)
    total_bytes = sum(s.numel() * 2 for _, s in plan)
    weight_map, index = {}, 0
    with tqdm(total=total_bytes, unit="B", unit_scale=True, desc="random weights", disable=not progress) as bar:
        for k, group in enumerate(groups, start=1):
            file = f"model-{k:05d}-of-{len(groups):05d}.safetensors"
            tensors = {}
            for name, tshape in group:
                tensors[name] = random_tensor(name, tshape, seed, index)
                weight_map[name] = file
                index += 1
                bar.update(tshape.numel() * 2)
            save_file(tensors, str(out / file), metadata={"format": "pt"})
            del tensors  # the next shard is drawn only after this one is on disk
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total_bytes}, "weight_map": dict(sorted(weight_map.items()))}, indent=2))
    cfg.save_pretrained(out)
    text = SHAPES[shape][0]
    write_side_files(out, build_tokenizer(sample_texts(), text["vocab_size"]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="train.tools.random_model", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), required=True, help="the released layout to copy")
    ap.add_argument("--out", required=True, help="folder to write the checkpoint into")
    ap.add_argument("--layers", type=int, default=None,
                    help="text decoder layers (default: the shape's own, 34 for 8b); vocabulary and widths stay real")
    ap.add_argument("--vision-layers", type=int, default=None,
                    help="vision tower layers (default: the shape's own, 24 for 8b); the loop never reads them")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-shard-gb", type=float, default=MAX_SHARD_BYTES / 1e9,
                    help="largest shard in GB (default 5, as transformers writes); the peak memory is about one shard")
    a = ap.parse_args(argv)
    if any(n is not None and n < 1 for n in (a.layers, a.vision_layers)):
        ap.error("--layers and --vision-layers must be >= 1")
    if a.max_shard_gb <= 0:
        ap.error("--max-shard-gb must be > 0")
    t0 = time.perf_counter()
    out = build(a.out, a.shape, a.layers, a.seed, int(a.max_shard_gb * 1e9), a.vision_layers)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    n_files = len(set(index["weight_map"].values()))
    print(f"random {a.shape}-shape Ministral 3 checkpoint ({index['metadata']['total_size'] / 2**30:.1f} GiB of bf16 "
          f"in {n_files} shard(s)) written to {out} in {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
