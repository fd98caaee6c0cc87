"""A merged export as one GGUF file for llama.cpp, llama-server and Ollama, through llama.cpp's own converter
(convert_hf_to_gguf.py) and gguf-py, run in the llama.cpp engine venv (train/tools/engines.py).

Two steps, both llama.cpp's code:
1. convert_hf_to_gguf.py on a view of the merged folder without tokenizer.json, so the converter reads the
   vocabulary from tekken.json through mistral-common (its Tekken route, tokenizer.ggml.pre = "tekken"). With
   a tokenizer.json it instead names the pre-tokenizer by hashing the ids of a fixed test string, a table that
   knows the released Tekken vocabulary but no other (the stand-in's 4096-token one fails there).
2. gguf-py's gguf_new_metadata.py puts the folder's own chat_template.jinja into the file: on the Tekken route
   the converter embeds llama.cpp's community Mistral template instead.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from train.tools import engines

# The converter's --outtype choices that make sense for serving; q8_0 is its built-in quantisation.
OUTTYPES = ("f32", "bf16", "f16", "q8_0")
# Files of the merged folder the converter must not see (see the module docstring).
HIDDEN_FROM_CONVERTER = ("tokenizer.json", "tokenizer_config.json")


def gguf_name(outtype: str) -> str:
    return f"model-{outtype}.gguf"


def export_gguf(merged: str | os.PathLike, out_dir: str | os.PathLike, outtype: str = "bf16", log=print) -> Path:
    """out_dir/model-<outtype>.gguf from a merged export folder (text decoder only; the vision tower is not
    converted)."""
    merged, out_dir = Path(merged), Path(out_dir)
    if outtype not in OUTTYPES:
        raise engines.EngineError(f"--gguf-type {outtype}: choose one of {', '.join(OUTTYPES)}")
    for name in ("config.json", "tekken.json", "chat_template.jinja"):
        if not (merged / name).is_file():
            raise engines.EngineError(f"{merged / name}: missing; the GGUF export converts a merged export folder")
    python = engines.ensure("llamacpp", log)
    src = engines.llama_cpp_sources(log)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / gguf_name(outtype)
    env = os.environ | {"PYTHONPATH": str(src / "gguf-py")}
    with tempfile.TemporaryDirectory(prefix="gguf-", dir=out_dir) as tmp:
        view = Path(tmp) / "model"
        view.mkdir()
        for item in merged.iterdir():
            if item.is_file() and item.name not in HIDDEN_FROM_CONVERTER:
                (view / item.name).symlink_to(item.resolve())
        converted = Path(tmp) / "converted.gguf"
        log(f"[gguf] llama.cpp convert_hf_to_gguf.py {merged} --outtype {outtype}")
        engines.run_logged([str(python), str(src / "convert_hf_to_gguf.py"), str(view), "--outfile", str(converted),
              "--outtype", outtype], out_dir / "convert.log", env)
        engines.run_logged([str(python), str(src / "gguf-py" / "gguf" / "scripts" / "gguf_new_metadata.py"), str(converted),
              str(Path(tmp) / "templated.gguf"), "--chat-template-file", str(merged / "chat_template.jinja"),
              "--force"], out_dir / "convert.log", env)
        shutil.move(str(Path(tmp) / "templated.gguf"), target)
    return target

