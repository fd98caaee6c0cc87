"""Exports of a finished run, for serving (docs/usage.md, "Export for serving").

- vlm_adapter/: one peft adapter under the released VLM's module names (model.language_model.layers.N...), so
  peft on Mistral3ForConditionalGeneration and vLLM apply it to the checkpoint as downloaded. Under the text
  model's names (model.layers.N...) a VLM wrapper finds no module to attach to and serves the base model
  without a word. A run trained on top of an earlier adapter (SFT on DAPT) is exported together with that
  lineage as one adapter of the summed rank, so a server that applies one adapter per request serves
  exactly the weights the run trained on.
- merged/ (--merge): the base model folder with every LoRA delta of the lineage folded in: the same files,
  shard layout, tensor names and dtypes (bf16 for the release), the vision tower copied through byte for
  byte. Streamed one tensor at a time, so the memory it needs does not grow with the model.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import struct
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from contract.errors import UserError
from contract.prompt import system_prompt_for
from train.checkpointing import sha256_file
from train.pretrained import lora_target_regex, read_text_config, safetensors_files, text_key

# peft's key prefix of a LoRA tensor, and where the VLM keeps the decoder that the text model calls `model.`.
PEFT_PREFIX = "base_model.model."
TEXT_DECODER, VLM_DECODER = "model.layers.", "model.language_model.layers."
ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter_model.safetensors", "adapter_config.json"
# Written last into an exported folder; its presence marks the folder as ours to replace on a re-export.
EXPORT_INFO = "export_info.json"
# Files of a model folder that the merged folder must not carry: weights in another layout (Mistral's native
# consolidated*.safetensors + params.json would still be the unmerged base, and vLLM would serve those) and
# pickled weights.
NOT_COPIED_PREFIXES = ("consolidated", "params.json")
# The system prompt the model was trained with (SYSTEM_PROMPT.txt + the C64 specialization), as a file a server
# or client can send as the system message: no server applies it on its own.
SERVED_SYSTEM_PROMPT = "SERVED_SYSTEM_PROMPT.txt"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
FLOAT_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}


class ExportError(UserError):
    """A run folder, its lineage or the base folder cannot be exported as asked; the message says why."""


@dataclasses.dataclass
class LoraAdapter:
    path: Path
    config: dict
    scale: float                                          # the factor of B @ A in the forward pass
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]]  # text-model module name -> (A, B), fp32

    @property
    def rank(self) -> int:
        return int(self.config["r"])


def read_run_args(run_dir: Path) -> dict:
    path = run_dir / "training_args.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def lineage(run_dir: str | Path, model_path: str | Path | None = None) -> tuple[Path, list[Path]]:
    """(base model folder, adapter folders in the order they were applied: the earliest first, the run last).

    Paths come from each run's training_args.json (its `lineage` record holds them resolved); `model_path`
    overrides the base folder, for a run folder that moved to another machine.
    """
    run_dir = Path(run_dir)
    chain, seen = [run_dir], {run_dir.resolve()}
    args = read_run_args(run_dir)
    base = model_path or args.get("lineage", {}).get("base_model") or args.get("model_path")
    if base is None:
        raise ExportError(f"{run_dir / 'training_args.json'}: missing, so the base model is unknown; pass --model-path")
    parent = args.get("lineage", {}).get("base_adapter") or args.get("base_adapter")
    while parent:
        parent = Path(parent)
        if parent.resolve() in seen:
            raise ExportError(f"{chain[0] / 'training_args.json'}: base_adapter {parent} makes a cycle")
        chain.insert(0, parent)
        seen.add(parent.resolve())
        parent_args = read_run_args(parent)
        parent = parent_args.get("lineage", {}).get("base_adapter") or parent_args.get("base_adapter")
    return Path(base), chain


def load_adapter(path: str | Path) -> LoraAdapter:
    """A peft LoRA folder written by this toolkit (or any plain LoRA on the text model's projections)."""
    path = Path(path)
    weights, config_file = path / ADAPTER_WEIGHTS, path / ADAPTER_CONFIG
    for f in (weights, config_file):
        if not f.is_file():
            raise ExportError(f"{f}: missing; is {path} the output folder of a training run?")
    config = json.loads(config_file.read_text())
    unsupported = [k for k in ("use_dora", "rank_pattern", "alpha_pattern", "modules_to_save", "layers_to_transform")
                   if config.get(k)]
    if config.get("peft_type") != "LORA" or config.get("fan_in_fan_out") or unsupported:
        raise ExportError(f"{config_file}: only plain LoRA adapters can be exported (found peft_type "
                          f"{config.get('peft_type')!r}, fan_in_fan_out={config.get('fan_in_fan_out')}, "
                          f"set: {unsupported})")
    r, alpha = int(config["r"]), float(config["lora_alpha"])
    scale = alpha / r ** 0.5 if config.get("use_rslora") else alpha / r
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in load_file(str(weights)).items():
        body = key.removeprefix(PEFT_PREFIX)
        module, sep, part = body.rpartition(".lora_")
        if not key.startswith(PEFT_PREFIX) or not sep or part not in ("A.weight", "B.weight"):
            raise ExportError(f"{weights}: unexpected adapter key {key!r} (expected "
                              f"{PEFT_PREFIX}<module>.lora_A.weight / .lora_B.weight)")
        if module.startswith(VLM_DECODER):  # an adapter exported earlier: back to the text model's names
            module = TEXT_DECODER + module[len(VLM_DECODER):]
        pairs.setdefault(module, {})[part[0]] = value.float()
    incomplete = [m for m, p in pairs.items() if set(p) != {"A", "B"}]
    if incomplete:
        raise ExportError(f"{weights}: modules with only one of lora_A / lora_B: {incomplete[:3]}")
    return LoraAdapter(path, config, scale, {m: (p["A"], p["B"]) for m, p in pairs.items()})


def _check_targets(adapters: list[LoraAdapter], model_path: Path) -> None:
    """Every adapted module must exist in the base: one that does not would be ignored, not reported, by a server."""
    layout = read_text_config(model_path)[1]
    names = {text_key(k, layout) for f in safetensors_files(model_path) for k in _header(f)[0]}
    for adapter in adapters:
        missing = sorted(m for m in adapter.modules if f"{m}.weight" not in names)
        if missing:
            raise ExportError(f"{adapter.path / ADAPTER_WEIGHTS}: {len(missing)} adapted module(s) do not exist in "
                              f"{model_path} (first: {missing[0]}); was it trained on another base model?")


def combined_lora(adapters: list[LoraAdapter]) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], int, float]:
    """One LoRA equal to the sum of the adapters' deltas: (modules -> (A, B), rank, lora_alpha).

    sum_i s_i B_i A_i = [s_1 B_1 | s_2 B_2 | ...] @ [A_1; A_2; ...]: the ranks add up and the scale becomes 1
    (lora_alpha = rank). A module that an adapter does not adapt gets zero rows/columns in its block, so every
    module has the same rank (vLLM reads one rank per adapter). A single adapter is returned as it is.
    """
    if len(adapters) == 1:
        only = adapters[0]
        return only.modules, only.rank, float(only.config["lora_alpha"])
    rank = sum(a.rank for a in adapters)
    modules = {}
    for name in sorted(set().union(*(a.modules for a in adapters))):
        shape_a, shape_b = next((a.modules[name][0].shape, a.modules[name][1].shape) for a in adapters
                                if name in a.modules)
        blocks_a, blocks_b = [], []
        for a in adapters:
            if name in a.modules:
                lora_a, lora_b = a.modules[name]
                blocks_a.append(lora_a)
                blocks_b.append(lora_b * a.scale)
            else:
                blocks_a.append(torch.zeros(a.rank, shape_a[1]))
                blocks_b.append(torch.zeros(shape_b[0], a.rank))
        modules[name] = (torch.cat(blocks_a, 0).contiguous(), torch.cat(blocks_b, 1).contiguous())
    return modules, rank, float(rank)


def export_vlm_adapter(run_dir: str | Path, out_dir: str | Path | None = None,
                       model_path: str | Path | None = None) -> Path:
    """out_dir/vlm_adapter (out_dir defaults to the run folder): the lineage and the run's adapter as one
    peft adapter under the VLM's module names."""
    run_dir = Path(run_dir)
    base, chain = lineage(run_dir, model_path)
    adapters = [load_adapter(p) for p in chain]
    _check_targets(adapters, base)
    modules, rank, alpha = combined_lora(adapters)
    out = Path(out_dir or run_dir) / "vlm_adapter"
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, (lora_a, lora_b) in modules.items():
        vlm_name = VLM_DECODER + name[len(TEXT_DECODER):] if name.startswith(TEXT_DECODER) else name
        tensors[f"{PEFT_PREFIX}{vlm_name}.lora_A.weight"] = lora_a
        tensors[f"{PEFT_PREFIX}{vlm_name}.lora_B.weight"] = lora_b
    save_file(tensors, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    projections = sorted({name.rsplit(".", 1)[1] for name in modules})
    # The run's own config, with the combined rank and scale; the target regex accepts both layouts and never
    # the vision tower.
    config = adapters[-1].config | {"r": rank, "lora_alpha": alpha, "use_rslora": False, "inference_mode": True,
                                    "target_modules": lora_target_regex(projections),
                                    "base_model_name_or_path": str(base)}
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
    _write_info(out, base, adapters, {"kind": "vlm_adapter", "rank": rank, "lora_alpha": alpha})
    return out


# ------------------------------------------------------------------------------------------ merging

def _header(path: Path) -> tuple[dict, dict, int]:
    """A safetensors file's tensor entries (name -> dtype, shape, data_offsets), its metadata, and the byte
    where its data starts (format: 8-byte little-endian header length, JSON header, tensor bytes)."""
    with path.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    return header, header.pop("__metadata__", None) or {}, 8 + size


def _copy_range(src, dst, start: int, length: int, chunk: int = 8 << 20) -> None:
    src.seek(start)
    while length > 0:
        block = src.read(min(chunk, length))
        if not block:
            raise ExportError(f"{src.name}: ends before the bytes its header lists")
        dst.write(block)
        length -= len(block)


def _merge_file(src: Path, dst: Path, layout: str, deltas: dict[str, list[tuple[float, torch.Tensor, torch.Tensor]]],
                bar) -> int:
    """Write dst as src with each adapted weight replaced by W + sum(scale * B @ A), one tensor at a time.

    safetensors.save_file needs every tensor of a file in memory at once (a shard of the 8B model is ~5 GB),
    and safe_open maps the whole file copy-on-write, so the file is read and written here in the same format:
    the header first (names, dtypes and shapes are those of src, in its order), then each tensor's bytes.
    Tensors no adapter touches are copied as bytes. Returns the number of tensors merged.
    """
    header, metadata, data_start = _header(src)
    order = sorted(header, key=lambda k: header[k]["data_offsets"][0])
    blob = json.dumps(({"__metadata__": metadata} if metadata else {}) | {k: header[k] for k in order},
                      separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # tensor data starts 8-byte aligned, as safetensors writes it
    merged = 0
    with src.open("rb") as fin, dst.open("wb") as fout:
        fout.write(struct.pack("<Q", len(blob)) + blob)
        for key in order:
            entry = header[key]
            begin, end = entry["data_offsets"]
            terms = deltas.get((text_key(key, layout) or "").removesuffix(".weight"))
            if terms is None or not key.endswith(".weight"):
                _copy_range(fin, fout, data_start + begin, end - begin)
            else:
                if entry["dtype"] not in FLOAT_DTYPES:
                    raise ExportError(f"{src}: {key} is {entry['dtype']}; only float weights can take a LoRA delta")
                raw = bytearray(end - begin)
                fin.seek(data_start + begin)
                if fin.readinto(raw) != len(raw):
                    raise ExportError(f"{src}: ends before the bytes its header lists")
                weight = torch.frombuffer(raw, dtype=FLOAT_DTYPES[entry["dtype"]]).reshape(entry["shape"])
                acc = weight.float()
                for scale, lora_a, lora_b in terms:
                    acc.addmm_(lora_b, lora_a, alpha=scale)  # fp32: W + scale * B @ A
                fout.write(memoryview(acc.to(weight.dtype).reshape(-1).view(torch.uint8).numpy()))
                merged += 1
                del raw, weight, acc
            bar.update(end - begin)
    return merged


def export_merged(run_dir: str | Path, out: str | Path | None = None, model_path: str | Path | None = None) -> Path:
    """The base folder with the lineage and the run's adapter folded in (default: run_dir/merged)."""
    run_dir = Path(run_dir)
    base, chain = lineage(run_dir, model_path)
    adapters = [load_adapter(p) for p in chain]
    _check_targets(adapters, base)
    out = Path(out) if out else run_dir / "merged"
    if out.resolve() == base.resolve() or base.resolve() in out.resolve().parents:
        raise ExportError(f"--out {out}: inside the base model folder {base}; choose another folder")
    if out.exists() and any(out.iterdir()) and not (out / EXPORT_INFO).is_file():
        raise ExportError(f"{out}: exists and is not an earlier export (no {EXPORT_INFO}); choose another folder")
    deltas: dict[str, list] = {}
    for a in adapters:  # earliest first, the order in which the run saw them
        for name, (lora_a, lora_b) in a.modules.items():
            deltas.setdefault(name, []).append((a.scale, lora_a, lora_b))

    layout = read_text_config(base)[1]
    files = safetensors_files(base)
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    merged = 0
    with tqdm(total=sum(f.stat().st_size for f in files), unit="B", unit_scale=True, desc="merge",
              dynamic_ncols=True) as bar:
        for f in files:
            merged += _merge_file(f, partial / f.name, layout, deltas, bar)
    if merged != len(deltas):
        raise ExportError(f"{base}: merged {merged} weights but the adapters adapt {len(deltas)} modules")
    weight_files = {f.name for f in files}
    for item in sorted(base.iterdir()):
        if item.is_file() and item.name not in weight_files and not item.name.startswith(NOT_COPIED_PREFIXES) \
                and not item.name.endswith(WEIGHT_SUFFIXES):
            shutil.copy2(item, partial / item.name)  # config, index, tokenizers, template, processor files
    _drop_quantization_config(partial / "config.json")
    (partial / SERVED_SYSTEM_PROMPT).write_text(system_prompt_for(base), encoding="utf-8")
    _write_info(partial, base, adapters, {"kind": "merged", "merged_weights": merged})
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return out


def _drop_quantization_config(config_file: Path) -> None:
    """The merged weights are plain floats: a quantization_config copied from a quantised base would make a
    server dequantise (or refuse) weights that are not quantised."""
    config = json.loads(config_file.read_text())
    stripped = {k: v for k, v in config.items() if k != "quantization_config"}
    if isinstance(stripped.get("text_config"), dict):
        stripped["text_config"] = {k: v for k, v in stripped["text_config"].items() if k != "quantization_config"}
    if stripped != config:
        config_file.write_text(json.dumps(stripped, indent=2) + "\n")


def package_versions() -> dict[str, str]:
    """The versions that wrote an export, for its export_info.json."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "transformers", "peft", "safetensors"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def _write_info(out: Path, base: Path, adapters: list[LoraAdapter], extra: dict) -> None:
    info = extra | {"versions": package_versions(), "base_model": str(base.resolve()),
                    "adapters": [{"path": str(a.path.resolve()), "r": a.rank, "scale": a.scale,
                                  "sha256": sha256_file(a.path / ADAPTER_WEIGHTS)} for a in adapters]}
    (out / EXPORT_INFO).write_text(json.dumps(info, indent=1))
