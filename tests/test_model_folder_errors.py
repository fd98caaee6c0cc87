"""Issue 18, item 4: a damaged model folder ends the run before training, naming the file and what is wrong."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import write_dapt_data
from train.main import main
from train.pretrained import CheckpointError, load_text_model



def damaged_copy(src: Path, dst: Path, damage) -> Path:
    shutil.copytree(src, dst)
    damage(dst)
    return dst


def truncate(folder: Path) -> None:
    f = folder / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def garble_header(folder: Path) -> None:
    f = folder / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(b"\xff" * 16 + data[16:])


def split_into_two_shards_one_missing(folder: Path) -> None:
    """An index that lists a second shard the download never delivered."""
    from safetensors import safe_open
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    weight_map = {k: "model-00001-of-00002.safetensors" for k in keys}
    weight_map["language_model.model.norm.weight"] = "model-00002-of-00002.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def wrong_intermediate_size(folder: Path) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg["text_config"]["intermediate_size"] += 128
    (folder / "config.json").write_text(json.dumps(cfg))


def broken_config_json(folder: Path) -> None:
    (folder / "config.json").write_text((folder / "config.json").read_text()[:-40])


@pytest.mark.parametrize("damage, file, words", [
    (truncate, "model.safetensors", ["not a readable safetensors file", "truncated or corrupt", "bytes on disk"]),
    (garble_header, "model.safetensors", ["not a readable safetensors file", "truncated or corrupt"]),
    (split_into_two_shards_one_missing, "model.safetensors.index.json",
     ["lists 1 shard(s) that are not in", "model-00002-of-00002.safetensors", "incomplete"]),
    (wrong_intermediate_size, "model.safetensors", ["has shape", "intermediate_size=", "does not belong"]),
    (broken_config_json, "config.json", ["not valid JSON", "line"]),
])
def test_damaged_folder_is_named_with_what_is_wrong(tiny_model_dir, tmp_path, damage, file, words):
    folder = damaged_copy(tiny_model_dir, tmp_path / "model", damage)
    with pytest.raises(CheckpointError) as info:
        load_text_model(folder)
    message = str(info.value)
    assert str(folder / file) in message, message
    for w in words:
        assert w in message, (w, message)


def test_damaged_folder_ends_the_run_before_training_without_a_traceback(tiny_model_dir, tmp_path, capsys):
    folder = damaged_copy(tiny_model_dir, tmp_path / "model", truncate)
    data = write_dapt_data(tmp_path / "dapt")
    out = tmp_path / "out"
    rc = main(["--phase", "dapt", "--model-path", str(folder), "--dapt-dir", str(data), "--output-dir", str(out),
               "--max-length", "64", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1
    assert f"{folder / 'model.safetensors'}: not a readable safetensors file" in err
    assert "Traceback" not in err and "SafetensorError" not in err.split("(")[0]
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").read_text()


# ------------------------------------------------------------- issue 28, items 13 and 14: the real release's files


def declare_fp8(folder: Path) -> None:
    """The FP8 Instruct release's config.json field (weights left as they are: the config alone must stop it)."""
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"] = {"activation_scheme": "static", "quant_method": "fp8", "weight_block_size": None}
    (folder / "config.json").write_text(json.dumps(cfg))


def store_one_tensor_as_fp8(folder: Path) -> None:
    """A shard whose header says F8_E4M3 for one tensor, as the FP8 release's shards do, with no config field."""
    import torch
    from safetensors.torch import load_file, save_file
    tensors = load_file(str(folder / "model.safetensors"))
    name = next(k for k in tensors if k.endswith("q_proj.weight"))
    tensors[name] = tensors[name].to(torch.float8_e4m3fn)
    save_file(tensors, str(folder / "model.safetensors"))


def test_a_quantized_config_is_refused_before_any_weight_is_read(tiny_model_dir, tmp_path, capsys, monkeypatch):
    folder = damaged_copy(tiny_model_dir, tmp_path / "fp8", declare_fp8)
    import train.pretrained as pretrained
    monkeypatch.setattr(pretrained, "safetensors_files", lambda d: pytest.fail("weights looked for"))
    rc = main(["--phase", "dapt", "--model-path", str(folder), "--dapt-dir", str(write_dapt_data(tmp_path / "d")),
               "--output-dir", str(tmp_path / "out"), "--device", "cpu", "--precision", "fp32", "--max-steps", "1"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert f"{folder / 'config.json'}: declares a quantization_config (quant_method 'fp8')" in err
    assert "mistralai/Ministral-3-8B-Reasoning-2512" in err


def test_fp8_tensors_in_a_shard_header_are_refused(tiny_model_dir, tmp_path):
    folder = damaged_copy(tiny_model_dir, tmp_path / "fp8-shard", store_one_tensor_as_fp8)
    with pytest.raises(CheckpointError, match=r"model.safetensors: tensor '.*q_proj.weight' is stored as F8_E4M3: this "
                                              r"is a quantized release .* Download the BF16 Reasoning release"):
        load_text_model(folder)


def with_tekken(folder: Path, pattern: str, tokenizer_pattern: str | None = None, saved_by: str | None = None) -> Path:
    """tekken.json (mistral-common's file: only its split pattern matters here) beside the tokenizer.json."""
    (folder / "tekken.json").write_text(json.dumps({"config": {"pattern": pattern}}))
    if tokenizer_pattern is not None:
        tok = json.loads((folder / "tokenizer.json").read_text())
        tok["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = tokenizer_pattern
        (folder / "tokenizer.json").write_text(json.dumps(tok))
    if saved_by is not None:
        cfg = json.loads((folder / "config.json").read_text())
        cfg["transformers_version"] = saved_by
        (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def split_pattern(tok) -> str:
    return json.loads(tok.backend_tokenizer.to_str())["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"]


def test_pre_tokenizer_pattern_is_checked_against_tekken(tiny_model_dir, tmp_path, caplog):
    from train.pretrained import load_tokenizer
    good = json.loads((tiny_model_dir / "tokenizer.json").read_text())["pre_tokenizer"]["pretokenizers"][0]
    good = good["pattern"]["Regex"]
    older = good.replace(r"\p{N}|", r"\p{N}{1,3}|")   # another split of digits, as an older save may carry
    assert older != good

    # Same pattern, saved by transformers 4: loads as it is, and without transformers' blanket warning.
    same = with_tekken(damaged_copy(tiny_model_dir, tmp_path / "same", lambda d: None), good, saved_by="4.57.1")
    caplog.clear()
    assert split_pattern(load_tokenizer(same)) == good
    assert "incorrect regex pattern" not in caplog.text

    # tokenizer.json carries the older pattern: tekken.json's is used, with a warning, and digits split as it says.
    fixed = with_tekken(damaged_copy(tiny_model_dir, tmp_path / "fixed", lambda d: None), good, older, "4.57.1")
    with pytest.warns(UserWarning, match="tekken.json's pattern is used"):
        tok = load_tokenizer(fixed)
    assert split_pattern(tok) == good
    assert tok.encode("1234", add_special_tokens=False) == load_tokenizer(same).encode("1234", add_special_tokens=False)

    # A pre-tokenizer with no split to put tekken's pattern in: stop, naming both files.
    def no_split(folder):
        tok = json.loads((folder / "tokenizer.json").read_text())
        tok["pre_tokenizer"] = tok["pre_tokenizer"]["pretokenizers"][1]
        (folder / "tokenizer.json").write_text(json.dumps(tok))
    other = with_tekken(damaged_copy(tiny_model_dir, tmp_path / "other", no_split), good)
    with pytest.raises(CheckpointError, match=r"tokenizer.json: its pre-tokenizer \(ByteLevel\) has no split pattern "
                                              r"to compare with .*tekken.json's"):
        load_tokenizer(other)
