"""Issue 28, item 15: the training template is checked against the model folder's own template, token for token."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from train.template_parity import TemplateDrift, check_template_parity, first_difference

ROOT = Path(__file__).resolve().parent.parent
TRAINING = ROOT / "templates/mistral3_chat_template_assistant_mask.jinja"


def drifted(src: Path, dst: Path) -> Path:
    """The folder's template with one extra newline after [/INST], as a regenerated template may have."""
    shutil.copytree(src, dst)
    t = dst / "chat_template.jinja"
    assert "[/INST]" in t.read_text()
    t.write_text(t.read_text().replace("[/INST]", "[/INST]\n"))
    return dst


def test_the_stand_in_template_matches_the_training_template(tiny_model_dir, tiny_tokenizer):
    assert first_difference(tiny_model_dir, TRAINING, tiny_tokenizer) is None


def test_a_drifted_folder_template_stops_a_strict_run_and_warns_otherwise(tiny_model_dir, tiny_tokenizer, tmp_path):
    folder = drifted(tiny_model_dir, tmp_path / "drifted")
    with pytest.raises(TemplateDrift, match=r"probe conversation 1, token \d+: .*mistral3_chat_template_assistant_mask"
                                            r".jinja gives .*, .*drifted/chat_template.jinja gives"):
        check_template_parity(folder, TRAINING, tiny_tokenizer, strict=True, warn=print)
    warned = []
    check_template_parity(folder, TRAINING, tiny_tokenizer, strict=False, warn=warned.append)
    assert len(warned) == 1 and "non-strict mode" in warned[0]


def test_strict_sft_refuses_to_train_on_a_drifted_folder(tiny_model_dir, tmp_path, capsys):
    import json

    from contract.prompt import system_prompt_for
    from train.main import main
    folder = drifted(tiny_model_dir, tmp_path / "drifted")
    system = system_prompt_for(str(folder))
    data = tmp_path / "sft"
    data.mkdir()
    row = json.dumps({"id": "x", "messages": [
        {"role": "system", "content": system}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "[THINK]a[/THINK]b"}]}) + "\n"
    for split in ("train", "validation"):
        (data / f"{split}.jsonl").write_text(row)
    rc = main(["--phase", "sft", "--model-path", str(folder), "--sft-dir", str(data), "--output-dir",
               str(tmp_path / "out"), "--device", "cpu", "--precision", "fp32", "--max-steps", "1"])
    err = capsys.readouterr().err
    assert rc == 1 and "render different tokens" in err and "Traceback" not in err
