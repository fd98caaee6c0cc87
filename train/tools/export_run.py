"""Export a finished run for serving (docs/usage.md, "Export for serving").

    ./run.sh export RUN_DIR [--merge] [--format hf|gguf] [--gguf-type bf16] [--out DIR] [--model-path M]

Writes into DIR (default: RUN_DIR itself):
  - the run's peft adapter (text-model names), as training wrote it, when DIR is not RUN_DIR;
  - vlm_adapter/: the lineage (e.g. the DAPT adapter under an SFT run) and the run's adapter as one peft
    adapter under the released VLM's module names: what vLLM's --lora-modules and peft on
    Mistral3ForConditionalGeneration load in one step;
  - merged/ (--merge): the base model folder with all adapters folded in, bf16, same files and layout, plus
    tekken.json (Mistral's tokenizer file) and SERVED_SYSTEM_PROMPT.txt (the system prompt it was trained with);
  - gguf/ (--format gguf, implies --merge): the merged model as one GGUF file, through llama.cpp's own
    converter (installed on demand into .venv-llamacpp/), with llama-server.sh and an Ollama Modelfile;
  - serve_vllm.sh next to vlm_adapter/ and merged/ (train/tools/serve_files.py).
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from contract.errors import UserError
from train.export import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, SERVED_SYSTEM_PROMPT, export_merged, export_vlm_adapter,
                          lineage)
from train.tools import gguf_export, serve_files
from train.tools.generation import sampling_settings
from train.tools.model_files import TEKKEN_FILE, write_tekken

# What a copy of the run's peft adapter carries: the adapter, the lineage it needs, the tokenizer and the template.
ADAPTER_FILES = (ADAPTER_WEIGHTS, ADAPTER_CONFIG, "training_args.json", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "chat_template.jinja")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="run.sh export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", metavar="RUN_DIR", help="output folder of a training run (--output-dir)")
    ap.add_argument("--merge", action="store_true", help="also write DIR/merged: the whole model with the adapters "
                    "folded in (streamed tensor by tensor; the disk needs room for a copy of the base)")
    ap.add_argument("--format", choices=("hf", "gguf"), default="hf", help="hf: the merged Hugging Face folder "
                    "(with --merge); gguf: also DIR/gguf/model-TYPE.gguf through llama.cpp's converter (implies --merge)")
    ap.add_argument("--gguf-type", choices=gguf_export.OUTTYPES, default="bf16", help="GGUF tensor type "
                    "(q8_0 is llama.cpp's 8-bit quantisation; default bf16, the weights as trained)")
    ap.add_argument("--out", metavar="DIR", default=None, help="folder to write the exports into (default: RUN_DIR)")
    ap.add_argument("--model-path", default=None, help="base model folder (default: the one the run trained on, "
                    "from its training_args.json)")
    a = ap.parse_args(argv)
    run_dir = Path(a.run_dir)
    out = Path(a.out) if a.out else run_dir
    try:
        if not run_dir.is_dir():
            raise UserError(f"{run_dir}: no such run folder")
        base, chain = lineage(run_dir, a.model_path)
        print(f"export: base {base}; adapters, in the order they were trained: {', '.join(map(str, chain))}")
        if out.resolve() != run_dir.resolve():
            out.mkdir(parents=True, exist_ok=True)
            copied = [name for name in ADAPTER_FILES if (run_dir / name).is_file()]
            for name in copied:
                shutil.copy2(run_dir / name, out / name)
            print(f"  peft adapter (text-model names, lineage in training_args.json): {out} ({', '.join(copied)})")
        adapter = export_vlm_adapter(run_dir, out, a.model_path)
        serve_files.write_vllm_adapter(adapter, base)
        print(f"  VLM adapter (lineage included, one step): {adapter} (vLLM: {adapter / 'serve_vllm.sh'})")
        if a.merge or a.format == "gguf":
            merged = export_merged(run_dir, out / "merged", a.model_path)
            if not (merged / TEKKEN_FILE).is_file():  # a base without one: written from its tokenizer.json
                write_tekken(merged)
            serve_files.write_vllm_merged(merged)
            print(f"  merged model: {merged} (vLLM: {merged / 'serve_vllm.sh'})")
        if a.format == "gguf":
            gguf = gguf_export.export_gguf(merged, out / "gguf", a.gguf_type)
            serve_files.write_llama_server(gguf)
            serve_files.write_modelfile(gguf, (merged / SERVED_SYSTEM_PROMPT).read_text(encoding="utf-8"),
                                        sampling_settings(merged))
            print(f"  GGUF: {gguf} (llama-server.sh, Modelfile next to it)")
    except UserError as e:
        print(f"export: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
