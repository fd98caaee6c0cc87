"""./run.sh export: the VLM-named adapter (lineage included) and the streamed merge of the whole VLM."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from train.tools.export_run import main as export_main

ROOT = Path(__file__).resolve().parent.parent
# A fixed prompt in the contract's shape: <s>[SYSTEM_PROMPT]..[/SYSTEM_PROMPT][INST]..[/INST][THINK]..
PROMPT = torch.tensor([[1, 17, 1300, 1301, 18, 3, 1500, 1501, 4, 34, 1600, 1700, 1800]])


def text_logits_with_adapter(model_dir, run_dir) -> torch.Tensor:
    """The reference: the text model with the run's lineage merged and its adapter applied, all in fp32."""
    from train.tools.generation import load_for_inference
    with torch.no_grad():
        return load_for_inference(model_dir, run_dir, torch.device("cpu"), torch.float32)(input_ids=PROMPT).logits


def vlm(model_dir, adapter=None):
    from peft import PeftModel
    from transformers import Mistral3ForConditionalGeneration
    model = Mistral3ForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    return (PeftModel.from_pretrained(model, str(adapter)) if adapter else model).eval()


def vlm_logits(model_dir, adapter=None) -> torch.Tensor:
    with torch.no_grad():
        return vlm(model_dir, adapter)(input_ids=PROMPT).logits


def test_vlm_adapter_applies_the_lineage_to_the_released_layout_in_one_step(sft_on_dapt, tiny_model_dir, tmp_path):
    dapt, sft = sft_on_dapt
    out = tmp_path / "export"
    assert export_main([str(sft), "--out", str(out)]) == 0
    # The peft adapter as training wrote it travels along, with the training_args.json that names its lineage.
    for name in ("adapter_model.safetensors", "adapter_config.json", "training_args.json", "tokenizer.json"):
        assert (out / name).read_bytes() == (sft / name).read_bytes(), name
    adapter = out / "vlm_adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    # DAPT r8 on all projections + SFT r4 on three of them: one adapter of rank 12 on every projection, scale 1.
    assert (config["r"], config["lora_alpha"]) == (12, 12)
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    assert all(".model.language_model.layers." in k for k in tensors) and len(tensors) == 2 * 7 * 3
    assert [a["path"] for a in json.loads((adapter / "export_info.json").read_text())["adapters"]] == \
        [str(dapt.resolve()), str(sft.resolve())]

    reference = text_logits_with_adapter(tiny_model_dir, sft)
    base = vlm_logits(tiny_model_dir)
    exported = vlm_logits(tiny_model_dir, adapter)
    assert (base - reference).abs().max() > 0.5  # the adapters do something, so a no-op load would be caught
    assert torch.allclose(exported, reference, atol=1e-4), (exported - reference).abs().max()
    model = vlm(tiny_model_dir, adapter)
    targeted = [n for n, m in model.named_modules() if hasattr(m, "lora_A")]
    assert targeted and not any("vision_tower" in n or "projector" in n for n in targeted)


def test_merge_writes_the_whole_vlm_in_the_base_layout(sft_on_dapt, tiny_model_dir, tmp_path):
    from transformers import Mistral3ForConditionalGeneration

    from train.pretrained import text_key
    from train.tools.generation import load_for_inference
    _, sft = sft_on_dapt
    # A sharded copy of the base, so the shard layout is something to keep; --model-path points the export at it.
    base = tmp_path / "base"
    Mistral3ForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).save_pretrained(
        base, max_shard_size="2MB")
    for f in tiny_model_dir.iterdir():
        if not (base / f.name).exists():
            shutil.copy(f, base / f.name)
    index = json.loads((base / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2
    # The released folder also carries Mistral's native layout: the unmerged base, which a server would serve.
    (base / "params.json").write_text("{}")
    save_file({"tok_embeddings.weight": torch.zeros(2, 2)}, str(base / "consolidated.safetensors"))

    assert export_main([str(sft), "--merge", "--out", str(tmp_path / "export"), "--model-path", str(base)]) == 0
    merged = tmp_path / "export" / "merged"
    assert json.loads((merged / "model.safetensors.index.json").read_text()) == index
    assert sorted(p.name for p in merged.glob("*.safetensors")) == shards
    for name in ("config.json", "generation_config.json", "chat_template.jinja", "SYSTEM_PROMPT.txt", "tokenizer.json",
                 "tokenizer_config.json"):
        assert (merged / name).read_bytes() == (base / name).read_bytes(), name
    assert not (merged / "params.json").exists() and not (merged / "consolidated.safetensors").exists()
    from contract.prompt import system_prompt_for
    assert (merged / "SERVED_SYSTEM_PROMPT.txt").read_text(encoding="utf-8") == system_prompt_for(base)
    assert json.loads((merged / "export_info.json").read_text())["versions"]["torch"] == torch.__version__

    # Every adapted weight is bf16(W + sum of scale * B @ A) of the whole lineage, as peft's own merge computes it
    # in fp32; everything else, the vision tower included, is the base's bytes.
    expected = load_for_inference(base, sft, torch.device("cpu"), torch.float32).merge_and_unload().state_dict()
    n_merged = 0
    for shard in shards:
        before, after = load_file(str(base / shard)), load_file(str(merged / shard))
        assert before.keys() == after.keys()
        for key, old in before.items():
            new = after[key]
            assert new.dtype == old.dtype == torch.bfloat16 and new.shape == old.shape, key
            name = text_key(key, "mistral3")
            if name and not torch.equal(expected[name].to(torch.bfloat16), old):
                n_merged += 1
                ulp = expected[name].abs() * 2 ** -7  # a summation-order difference may flip the last bf16 bit
                assert ((new.float() - expected[name]).abs() <= ulp).all(), key
            else:
                assert torch.equal(new, old), key
    assert n_merged == 7 * 3  # 3 layers x 7 projections

    model, info = Mistral3ForConditionalGeneration.from_pretrained(merged, dtype=torch.float32,
                                                                   output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        logits = model.eval()(input_ids=PROMPT).logits
    reference = text_logits_with_adapter(tiny_model_dir, sft)
    base_logits = vlm_logits(tiny_model_dir)
    # Stated tolerance: the merged folder is bf16, so its logits carry the rounding of every merged weight;
    # 3% of the largest logit (1-2% measured on the tiny model). The adapters move the logits several times more.
    tolerance = 0.03 * reference.abs().max()
    assert (logits - reference).abs().max() <= tolerance
    assert (base_logits - reference).abs().max() > 3 * tolerance


def test_export_refuses_an_adapter_that_would_load_as_a_no_op(sft_on_dapt, tmp_path, capsys):
    _, sft = sft_on_dapt
    run = tmp_path / "run"
    shutil.copytree(sft, run, ignore=shutil.ignore_patterns("checkpoints", "vlm_adapter"))
    tensors = load_file(str(run / "adapter_model.safetensors"))
    for key in [k for k in tensors if ".layers.0.mlp.down_proj." in k]:
        tensors[key.replace(".layers.0.", ".layers.7.")] = tensors[key].clone()  # the tiny model has 3 layers
    save_file(tensors, str(run / "adapter_model.safetensors"))
    assert export_main([str(run)]) == 1
    err = capsys.readouterr().err
    assert "do not exist in" in err and "model.layers.7." in err and "Traceback" not in err
    assert not (run / "vlm_adapter").exists()
    assert export_main([str(tmp_path / "nowhere")]) == 1
    assert "no such run folder" in capsys.readouterr().err


MEMORY_PROBE = textwrap.dedent('''
    import json, resource, sys
    from pathlib import Path
    import torch
    from safetensors.torch import save_file
    root, budget = Path(sys.argv[1]), int(sys.argv[2])
    base, run = root / "base", root / "run"
    base.mkdir(); run.mkdir()
    H, I, L, V, R = 1024, 4096, 8, 1000, 8
    (base / "config.json").write_text(json.dumps(dict(model_type="ministral3", hidden_size=H, intermediate_size=I,
        num_hidden_layers=L, num_attention_heads=8, num_key_value_heads=2, head_dim=128, vocab_size=V)))
    (base / "SYSTEM_PROMPT.txt").write_text("You are a helpful assistant.")   # the export writes the served prompt
    shapes = {"model.embed_tokens.weight": (V, H), "lm_head.weight": (V, H), "model.norm.weight": (H,)}
    for l in range(L):
        shapes |= {f"model.layers.{l}.self_attn.{p}.weight": (s, H) for p, s in
                   (("q_proj", H), ("k_proj", 256), ("v_proj", 256), ("o_proj", H))}
        shapes |= {f"model.layers.{l}.mlp.{p}.weight": s for p, s in
                   (("gate_proj", (I, H)), ("up_proj", (I, H)), ("down_proj", (H, I)))}
    save_file({k: torch.zeros(s, dtype=torch.bfloat16) for k, s in shapes.items()}, str(base / "model.safetensors"))
    lora = {}
    for k, s in shapes.items():
        if k.startswith("model.layers."):
            m = "base_model.model." + k.removesuffix(".weight")
            lora |= {m + ".lora_A.weight": torch.full((R, s[1]), 0.01), m + ".lora_B.weight": torch.full((s[0], R), 0.01)}
    save_file(lora, str(run / "adapter_model.safetensors"))
    (run / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": R, "lora_alpha": 2 * R}))
    (run / "training_args.json").write_text(json.dumps({"model_path": str(base)}))
    n_params = sum(torch.Size(s).numel() for s in shapes.values())
    del lora

    from train.export import export_merged
    data = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmData"))
    # From here on, private writable memory (heap, tensors, copy-on-write maps) may grow by `budget` bytes only.
    resource.setrlimit(resource.RLIMIT_DATA, (data + budget, resource.RLIM_INFINITY))
    export_merged(run, root / "merged")
    try:
        torch.empty(n_params, dtype=torch.bfloat16)
    except RuntimeError:
        print("limit binds: no room for a bf16 copy of the model, let alone fp32; bytes:", 2 * n_params)
''')


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_DATA and /proc/self/status are Linux's")
def test_merge_streams_without_a_copy_of_the_model(tmp_path):
    # 124 M parameters (247 MB in bf16, 494 MB in fp32) merged under a 160 MB memory limit. The limit counts
    # what a merge allocates and not the files it reads, so a merge that built the model in memory fails here.
    res = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(tmp_path), str(160 << 20)], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "limit binds" in res.stdout, res.stdout
    from safetensors import safe_open
    with safe_open(str(tmp_path / "merged" / "model.safetensors"), "pt") as f:
        # W = 0 and every LoRA entry 0.01 at rank 8, scale 2: each merged entry is 2 * 8 * 0.01 * 0.01.
        up = f.get_slice("model.layers.5.mlp.up_proj.weight")[:2, :3]
        assert torch.equal(up, torch.full((2, 3), 0.0016).to(torch.bfloat16))
        assert torch.equal(f.get_slice("model.norm.weight")[:4], torch.zeros(4, dtype=torch.bfloat16))


def test_a_merged_config_never_carries_a_quantization_config(tmp_path):
    from train.export import _drop_quantization_config
    config = tmp_path / "config.json"
    fp8 = {"quant_method": "fp8", "weight_block_size": [128, 128]}
    config.write_text(json.dumps({"model_type": "mistral3", "quantization_config": fp8,
                                  "text_config": {"hidden_size": 8, "quantization_config": fp8}}))
    _drop_quantization_config(config)
    assert json.loads(config.read_text()) == {"model_type": "mistral3", "text_config": {"hidden_size": 8}}
    before = config.read_bytes()
    _drop_quantization_config(config)   # nothing to drop: the file is left as it was
    assert config.read_bytes() == before
