"""The released model folder: its tokenizer, its language-model config and weights, and their names.

Reads a Ministral 3 folder in the VLM layout (as released) or the text-only one (docs/model.md). Two failure
modes this module exists to prevent:
- transformers 5 may route Mistral repositories to MistralCommonBackend, which ignores Jinja templates,
  returns no assistant mask and encodes a literal "[THINK]" as text: we load the tokenizers backend
  explicitly and assert the control-token ids.
- from_pretrained on the wrong class silently returns random weights: we read the language-model tensors
  ourselves with safetensors, never touch the vision tower, and fail if any text-model tensor is missing.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from contract.errors import UserError
from contract.tokens import BOS_ID, CONTROL_TOKEN_IDS, EOS_ID, PAD_ID, THINK_OPEN, THINK_OPEN_ID


class CheckpointError(UserError):
    """The model folder is not a usable Ministral 3 checkpoint; the message says which file and why."""


# What to download when a folder is not the BF16 Reasoning release (docs/model.md, "The checkpoint").
BF16_RELEASE = "mistralai/Ministral-3-8B-Reasoning-2512"
# safetensors dtype names of quantized weights (the FP8 releases store F8_E4M3 with per-tensor scales).
QUANTIZED_DTYPES = ("F8_E4M3", "F8_E5M2", "F8_E8M0", "F4")


# The language model's linear projections, by the submodule that holds them in each decoder layer.
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")  # in self_attn
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")            # in mlp
LINEAR_PROJECTIONS = ATTENTION_PROJECTIONS + MLP_PROJECTIONS

# The released text_config's rope layout: yarn x16 over 16384 original positions, plus Llama-4 query scaling.
ROPE_PARAMETERS = {
    "rope_type": "yarn", "rope_theta": 1e6, "factor": 16.0, "original_max_position_embeddings": 16384,
    "max_position_embeddings": 262144, "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0,
    "mscale_all_dim": 1.0, "llama_4_scaling_beta": 0.1,
}
# Ministral 3 8B's text_config (docs/model.md); the stand-in and the 8B-shape builds scale from it.
TEXT_CONFIG_8B = dict(hidden_size=4096, num_hidden_layers=34, num_attention_heads=32, num_key_value_heads=8,
                      head_dim=128, intermediate_size=14336, vocab_size=131072, max_position_embeddings=262144,
                      rms_norm_eps=1e-5, tie_word_embeddings=False, hidden_act="silu",
                      bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
# The released checkpoint's Pixtral vision tower (0.40 B parameters) and the VLM fields around it; only the
# 8B-shape random checkpoint (train/tools/random_model.py) builds them, the loop never reads them.
VISION_CONFIG_8B = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                        head_dim=64, image_size=1540, patch_size=14, num_channels=3, hidden_act="silu")
VLM_FIELDS_8B = dict(spatial_merge_size=2, image_token_index=10, multimodal_projector_bias=False,
                     projector_hidden_act="gelu", vision_feature_layer=-1, tie_word_embeddings=False)


def lora_target_regex(targets) -> str:
    """A peft target_modules regex for the named projections of the language model only.

    Anchored on the decoder's layers so the Pixtral tower (attention.q_proj, feed_forward.*) and the projector
    never match, whichever class (text-only or VLM, wrapped by peft or not) is loaded.
    """
    names = [t.strip() for t in (targets.split(",") if isinstance(targets, str) else targets) if t.strip()]
    unknown = sorted(set(names) - set(LINEAR_PROJECTIONS))
    if unknown or not names:
        raise ValueError(f"--lora-targets: unknown or no projection(s) {unknown}; choose from "
                         f"{', '.join(LINEAR_PROJECTIONS)}")
    groups = [(module, [n for n in LINEAR_PROJECTIONS if n in names and n in group])
              for module, group in (("self_attn", ATTENTION_PROJECTIONS), ("mlp", MLP_PROJECTIONS))]
    alternatives = "|".join(f"{module}\\.(?:{'|'.join(chosen)})" for module, chosen in groups if chosen)
    return rf"^(?:base_model\.model\.)?model\.(?:language_model\.)?layers\.\d+\.(?:{alternatives})$"


def load_tokenizer(model_dir: str | Path):
    model_dir = Path(model_dir)
    tok_file = model_dir / "tokenizer.json"
    if not tok_file.is_file():
        raise CheckpointError(f"{tok_file}: missing. The HF tokenizer.json is required (tekken.json alone is "
                              "the mistral-common format, which ignores chat templates and assistant masks).")
    tok = load_tokenizer_checked(model_dir)
    check_control_tokens(tok, source=str(tok_file))
    return tok


def _split_pattern(pre_tokenizer: dict | None) -> str | None:
    """The regex of the Split step of a tokenizer.json pre_tokenizer (alone or first in a Sequence)."""
    if not pre_tokenizer:
        return None
    if pre_tokenizer.get("type") == "Sequence":
        steps = pre_tokenizer.get("pretokenizers") or []
        return _split_pattern(steps[0]) if steps else None
    if pre_tokenizer.get("type") == "Split":
        return (pre_tokenizer.get("pattern") or {}).get("Regex")
    return None


def tekken_pattern(model_dir: Path) -> str | None:
    """The split pattern of the folder's tekken.json (mistral-common's own file), None without one."""
    tekken = model_dir / "tekken.json"
    return (_read_json(tekken).get("config") or {}).get("pattern") if tekken.is_file() else None


def load_tokenizer_checked(model_dir: Path):
    """The tokenizers backend, its split pattern made tekken.json's.

    Folders saved with transformers < 5 may carry an older split pattern, and transformers then warns about every
    Mistral folder without knowing whether this one is affected. tekken.json holds the pattern the model was trained
    with: the same pattern loads as it is (and without the warning); a different one in the usual place (the Split
    that opens the pre-tokenizer) is replaced by tekken's, with a warning; anything else stops the run, since the
    text would be split otherwise than in pretraining. Without tekken.json there is nothing to compare with and
    transformers decides.
    """
    import warnings

    from tokenizers import Regex
    from tokenizers.pre_tokenizers import Split
    from transformers import PreTrainedTokenizerFast  # the tokenizers backend ("TokenizersBackend" in 5.x)

    want = tekken_pattern(model_dir)
    if want is None:
        return PreTrainedTokenizerFast.from_pretrained(str(model_dir))
    # Compared here against tekken.json, so transformers' own guess (and its warning) is not needed.
    tok = PreTrainedTokenizerFast.from_pretrained(str(model_dir), fix_mistral_regex=False)
    pre = json.loads(tok.backend_tokenizer.to_str()).get("pre_tokenizer") or {}
    have = _split_pattern(pre)
    if have == want:
        return tok
    if pre.get("type") != "Sequence" or have is None:
        raise CheckpointError(f"{model_dir / 'tokenizer.json'}: its pre-tokenizer ({pre.get('type')}) has no split "
                              f"pattern to compare with {model_dir / 'tekken.json'}'s {want!r}: the text would be split "
                              "otherwise than the model was trained on. Download tokenizer.json and tekken.json again "
                              f"from one revision of {BF16_RELEASE}")
    tok.backend_tokenizer.pre_tokenizer[0] = Split(pattern=Regex(want), behavior="isolated")
    warnings.warn(f"{model_dir / 'tokenizer.json'}: its pre-tokenizer pattern differs from tekken.json's (a folder "
                  "saved by an older transformers); tekken.json's pattern is used", stacklevel=2)
    return tok


def check_control_tokens(tok, source: str = "tokenizer") -> None:
    wrong = {t: (tok.convert_tokens_to_ids(t), i) for t, i in CONTROL_TOKEN_IDS.items()
             if tok.convert_tokens_to_ids(t) != i}
    if wrong:
        detail = ", ".join(f"{t} -> {got} (expected {want})" for t, (got, want) in wrong.items())
        raise CheckpointError(f"{source}: control-token ids do not match Ministral 3's Tekken tokenizer: {detail}")
    ids = tok.encode(THINK_OPEN, add_special_tokens=False)
    if ids != [THINK_OPEN_ID]:
        raise CheckpointError(f"{source}: the text '{THINK_OPEN}' encodes to {ids}, not the single control id "
                              f"{THINK_OPEN_ID}; the reasoning format would be trained as plain text.")


def read_text_config(model_dir: str | Path):
    """The Ministral3Config of the language model, from a VLM (text_config) or text-only config.json."""
    from transformers import Ministral3Config

    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; --model-path must be a Hugging Face model folder")
    raw = _read_json(path)
    quantization = raw.get("quantization_config") or (raw.get("text_config") or {}).get("quantization_config")
    if quantization:
        method = quantization.get("quant_method", "?") if isinstance(quantization, dict) else quantization
        raise CheckpointError(f"{path}: declares a quantization_config (quant_method {method!r}): this is a quantized "
                              f"release (such as the FP8 Instruct one), and LoRA here trains on BF16 weights. Download "
                              f"the BF16 Reasoning release, {BF16_RELEASE}, instead (docs/model.md)")
    layout = raw.get("model_type")
    if layout == "mistral3":
        text = dict(raw.get("text_config") or {})
        if text.get("model_type") != "ministral3":
            raise CheckpointError(f"{path}: text_config.model_type is {text.get('model_type')!r}, expected 'ministral3'")
    elif layout == "ministral3":
        text = dict(raw)
    else:
        raise CheckpointError(f"{path}: model_type {layout!r} is neither 'mistral3' (VLM) nor 'ministral3' (text)")
    for key in ("model_type", "architectures", "transformers_version", "dtype", "torch_dtype"):
        text.pop(key, None)
    try:
        cfg = Ministral3Config(**text)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: the text config is not a valid Ministral3Config: {e}") from None
    cfg.architectures = ["Ministral3ForCausalLM"]
    return cfg, layout


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); the file is damaged or incomplete: download it "
                              "again") from None


# The released VLM's tensor names: in memory (Mistral3ForConditionalGeneration in transformers 5) -> on disk.
VLM_DISK_PREFIXES = {"model.language_model.": "language_model.model.", "lm_head.": "language_model.lm_head.",
                     "model.vision_tower.": "vision_tower.", "model.multi_modal_projector.": "multi_modal_projector."}


def vlm_disk_name(memory_name: str) -> str:
    """The on-disk name of a Mistral3ForConditionalGeneration tensor (docs/model.md, "Weight names")."""
    for prefix, disk in VLM_DISK_PREFIXES.items():
        if memory_name.startswith(prefix):
            return disk + memory_name[len(prefix):]
    raise ValueError(f"{memory_name!r}: not a tensor of the Mistral3 VLM layout")


def text_key(disk_key: str, layout: str) -> str | None:
    """Map an on-disk tensor name to Ministral3ForCausalLM's name; None for non-text tensors."""
    if layout == "ministral3":
        return disk_key
    for prefix, new in (("language_model.model.", "model."), ("language_model.lm_head.", "lm_head."),
                        ("model.language_model.", "model."), ("lm_head.", "lm_head.")):
        if disk_key.startswith(prefix):
            return new + disk_key[len(prefix):]
    return None  # vision_tower.*, multi_modal_projector.*


def safetensors_files(model_dir: Path) -> list[Path]:
    """The weight files, every one of them checked to exist before any is read."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index}: has no weight_map; the index is damaged: download it again")
        files = [model_dir / f for f in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index}: lists {len(missing)} shard(s) that are not in {model_dir}: "
                                  f"{', '.join(missing)}; the download is incomplete")
        return files
    single = model_dir / "model.safetensors"
    if single.is_file():
        return [single]
    if (model_dir / "consolidated.safetensors").is_file():
        raise CheckpointError(f"{model_dir}: only consolidated.safetensors (Mistral-native names, permuted q/k) "
                              "is present; download the Hugging Face model*.safetensors files instead")
    raise CheckpointError(f"{model_dir}: no model.safetensors or model.safetensors.index.json")


def refuse_quantized_shards(files: list[Path]) -> None:
    """Stop on quantized tensors (F8_E4M3, ...) in the shards, from their headers alone, before any weight is read."""
    from safetensors import SafetensorError, safe_open

    for file in files:
        try:
            with safe_open(str(file), framework="pt", device="cpu") as f:
                found = next(((k, f.get_slice(k).get_dtype()) for k in f.keys()
                              if f.get_slice(k).get_dtype() in QUANTIZED_DTYPES), None)
        except SafetensorError:
            continue  # load_text_model names the damaged file
        if found:
            raise CheckpointError(f"{file}: tensor {found[0]!r} is stored as {found[1]}: this is a quantized release "
                                  f"(such as the FP8 Instruct one), and LoRA here trains on BF16 weights. Download the "
                                  f"BF16 Reasoning release, {BF16_RELEASE}, instead (docs/model.md)")


# Bytes per element of the safetensors dtypes a Ministral 3 checkpoint may hold unquantized.
DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2}


def text_shards(model_dir: str | Path) -> list[tuple[int, int]]:
    """Per weight file, in the order load_text_model reads them: (bytes of its language-model tensors on disk,
    their element count), from the headers alone. The memory plan's load peak is made from these."""
    from safetensors import SafetensorError, safe_open

    model_dir = Path(model_dir)
    _, layout = read_text_config(model_dir)
    shards = []
    for file in safetensors_files(model_dir):
        disk = numel = 0
        try:
            with safe_open(str(file), framework="pt", device="cpu") as f:
                for key in f.keys():
                    if text_key(key, layout) is None:
                        continue
                    sl = f.get_slice(key)
                    n = math.prod(sl.get_shape())
                    numel += n
                    disk += n * DTYPE_BYTES.get(sl.get_dtype(), 2)
        except SafetensorError:
            continue  # load_text_model names the damaged file
        shards.append((disk, numel))
    return shards


def _fields_giving(cfg, on_disk: tuple, wanted: tuple) -> str:
    """The text-config fields whose values make up the wanted dimensions that differ from the file's."""
    dims = {w for d, w in zip(on_disk, wanted) if d != w} if len(on_disk) == len(wanted) else set(wanted)
    fields = [f"{k}={v}" for k, v in cfg.to_dict().items() if isinstance(v, int) and not isinstance(v, bool)
              and (v in dims or any(w == v * (cfg.head_dim or 1) for w in dims))]
    return "from " + ", ".join(fields) if fields else "from its sizes"


def load_text_model(model_dir: str | Path, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu"):
    """Ministral3ForCausalLM with every language-model tensor read from the folder; vision weights stay on disk."""
    from safetensors import SafetensorError, safe_open
    from transformers import Ministral3ForCausalLM

    model_dir = Path(model_dir)
    cfg, layout = read_text_config(model_dir)
    # Build on the meta device: no random init of 8B parameters that would be overwritten anyway.
    with torch.device("meta"):
        model = Ministral3ForCausalLM(cfg)
    expected = set(model.state_dict().keys())
    state: dict[str, torch.Tensor] = {}
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    files = safetensors_files(model_dir)
    refuse_quantized_shards(files)
    for file in files:
        try:
            with safe_open(str(file), framework="pt", device="cpu") as f:
                keys = [(key, text_key(key, layout)) for key in f.keys()]
                keys = [(key, name) for key, name in keys if name is not None]
                for key, name in keys:
                    if name not in expected:
                        raise CheckpointError(f"{file}: tensor {key!r} does not belong to Ministral3ForCausalLM "
                                              f"(mapped to {name!r}); is this the right checkpoint?")
                    on_disk = tuple(f.get_slice(key).get_shape())
                    if on_disk != shapes[name]:
                        raise CheckpointError(f"{file}: tensor {key!r} has shape {list(on_disk)}, but "
                                              f"{model_dir / 'config.json'} describes {list(shapes[name])} "
                                              f"({_fields_giving(cfg, on_disk, shapes[name])}); the config does "
                                              "not belong to these weights")
                for key, name in keys:
                    # bf16 on disk and bf16 wanted: a view of the memory-mapped file, read only when used.
                    state[name] = f.get_tensor(key).to(device=device, dtype=dtype)
        except SafetensorError as e:
            size = file.stat().st_size
            raise CheckpointError(f"{file}: not a readable safetensors file ({e}; {size:,} bytes on disk): it is "
                                  "truncated or corrupt; download it again") from None
    missing = sorted(expected - state.keys())
    if missing:
        raise CheckpointError(f"{model_dir}: {len(missing)} language-model tensors are missing from the checkpoint "
                              f"(first: {', '.join(missing[:5])}); refusing to train on random weights")
    model.load_state_dict(state, strict=True, assign=True)
    # Rotary inv_freq buffers are computed, not stored: rebuild them on the real device.
    rotary = model.model.rotary_emb
    with torch.device(device):
        model.model.rotary_emb = type(rotary)(config=cfg)
    model.to(device)
    model.generation_config.pad_token_id = cfg.pad_token_id
    return model
