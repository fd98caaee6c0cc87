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
