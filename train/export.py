"""Exports of a finished run, for serving.

- vlm_adapter/: the run's LoRA adapter under the released checkpoint's in-memory module names
  (model.language_model.layers.N...), so `PeftModel.from_pretrained(Mistral3ForConditionalGeneration...)`
  applies it to the VLM as downloaded.
- merged/ (with --merge): base weights + lineage adapter + this adapter folded into one text-only
  Ministral3ForCausalLM folder that transformers loads on its own.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

TEXT_PREFIX = "base_model.model.model.layers."
VLM_PREFIX = "base_model.model.model.language_model.layers."


def export_vlm_adapter(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    out = run_dir / "vlm_adapter"
    out.mkdir(exist_ok=True)
    tensors = load_file(str(run_dir / "adapter_model.safetensors"))
    renamed = {}
    for key, value in tensors.items():
        if not key.startswith(TEXT_PREFIX):
            raise ValueError(f"{run_dir / 'adapter_model.safetensors'}: unexpected adapter key {key!r}")
        renamed[VLM_PREFIX + key[len(TEXT_PREFIX):]] = value
    save_file(renamed, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = json.loads((run_dir / "adapter_config.json").read_text())
    # The target regex already accepts both layouts (model.layers.N / model.language_model.layers.N) and
    # never the vision tower, so the config carries over unchanged apart from the note.
    config["inference_mode"] = True
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return out


def export_merged(run_dir: str | Path, args: dict, out: str | Path | None = None) -> Path:
    """Fold lineage + adapter into the base weights and save a standalone text-model folder (bf16)."""
    from peft import PeftModel

    from train.pretrained import load_text_model, load_tokenizer

    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / "merged"
    model = load_text_model(args["model_path"], dtype=torch.float32)
    if args.get("base_adapter"):
        model = PeftModel.from_pretrained(model, args["base_adapter"]).merge_and_unload()
    model = PeftModel.from_pretrained(model, str(run_dir)).merge_and_unload()
    model = model.to(torch.bfloat16)
    model.save_pretrained(out)
    load_tokenizer(run_dir).save_pretrained(out)
    # Serve with the model's own template (it renders the same tokens as the training template and
    # carries the default system prompt), next to the SYSTEM_PROMPT.txt it came with.
    for name in ("chat_template.jinja", "SYSTEM_PROMPT.txt", "generation_config.json"):
        if (Path(args["model_path"]) / name).is_file():
            shutil.copy(Path(args["model_path"]) / name, out / name)
    return out
