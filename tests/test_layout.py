"""The codebase's layout rules (docs/architecture.md, "Layout"): the loop apart from the tools, tools talking
through entry points, one error base class, no reference to documents outside the repository."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from contract.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "train" / "tools"


# Pointers to documents outside the repository, spelled in pieces so this file does not cite them itself.
FOREIGN_DOCS = tuple("".join(parts) for parts in (("DESIGN", " §"), ("DESIGN", " section"), ("DESIGN", ".md"),
                                                   ("..", "/shared"), ("/work", "/shared")))


def imports_of(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) for every import statement in the file, nested ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out.extend((a.name, []) for a in node.names)
    return out


def test_the_loop_never_imports_a_tool():
    loop_modules = sorted(p for p in (ROOT / "train").glob("*.py"))
    assert len(loop_modules) > 10
    offenders = [(p.name, m) for p in loop_modules for m, _ in imports_of(p) if m.startswith("train.tools")]
    assert not offenders, offenders


def test_tools_call_each_other_only_through_their_entry_points():
    tools = {p.stem for p in TOOLS.glob("*.py") if p.stem != "__init__"}
    libraries = {p.stem for p in TOOLS.glob("*.py") if "def main(" not in p.read_text(encoding="utf-8")}
    offenders = []
    for path in TOOLS.glob("*.py"):
        for module, names in imports_of(path):
            other = module.removeprefix("train.tools.")
            if other in tools and other != path.stem and other not in libraries and set(names) - {"main"}:
                offenders.append((path.name, module, names))
    assert not offenders, offenders


def test_no_file_points_outside_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    bad = []
    for name in tracked:
        path = ROOT / name
        if name.startswith("data/raw/") or path.suffix not in {".py", ".md", ".sh", ".yaml", ".jinja", ".txt", ""}:
            continue
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for needle in FOREIGN_DOCS:
            if needle in text:
                bad.append((name, needle))
    assert not bad, bad


def test_user_facing_errors_share_one_base_class():
    from contract.prompt import PromptContractError
    from data.build import UsageError
    from train.batching import DataError
    from train.checkpointing import CheckpointCorrupt
    from train.config import ConfigError
    from train.main import TrainingAborted
    from train.masking import StrictMaskingError, TemplateNotFound
    from train.pretrained import CheckpointError
    for cls in (PromptContractError, UsageError, DataError, CheckpointCorrupt, ConfigError, TrainingAborted,
                StrictMaskingError, TemplateNotFound, CheckpointError):
        assert issubclass(cls, UserError), cls


def test_a_user_error_ends_the_run_with_its_message_and_exit_1(tmp_path, capsys, tiny_text_model_dir):
    from train.main import main
    rc = main(["--phase", "dapt", "--model-path", str(tiny_text_model_dir), "--dapt-dir", str(tmp_path / "nope"),
               "--output-dir", str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1
    assert f"{tmp_path / 'nope' / 'train.jsonl'}: not found" in err and "Traceback" not in err


def test_loop_state_round_trips_through_its_checkpoint_form():
    from train.state import LoopState
    state = LoopState(step=7, epoch=2, micro_index=12, consecutive_skips=1, skipped_steps=3, eval_loss_before=4.25)
    assert LoopState.from_dict(state.to_dict() | {"fingerprint": {"seed": 1}}) == state
    with pytest.raises(KeyError, match="micro_index"):
        LoopState.from_dict({k: v for k, v in state.to_dict().items() if k != "micro_index"})


def test_debugging_flags_have_their_own_help_heading():
    out = subprocess.run([sys.executable, "-m", "train.main", "--help"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    options = out.split("\n\n", 2)[2]  # past the usage line and the description
    head, debug = options.split("debugging options:")
    for flag in ("--debug-nan-steps", "--stop-after-steps", "--profile-steps", "--detect-anomaly"):
        assert flag in debug and flag not in head, flag
    assert "--lr LR" in head and "--lr LR" not in debug


def test_replay_runs_as_its_own_module():
    out = subprocess.run([sys.executable, "-m", "train.forensics", "--help"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert "--replay" in out


def test_lora_target_regex_is_built_from_the_names():
    import re

    from train.pretrained import LINEAR_PROJECTIONS, lora_target_regex
    full = lora_target_regex(LINEAR_PROJECTIONS)
    for name in LINEAR_PROJECTIONS:
        module = "self_attn" if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
        assert re.fullmatch(full, f"base_model.model.model.layers.3.{module}.{name}")
        assert re.fullmatch(full, f"model.language_model.layers.0.{module}.{name}")
        only = lora_target_regex([name])
        assert re.fullmatch(only, f"model.layers.1.{module}.{name}")
        assert not any(re.fullmatch(only, f"model.layers.1.{m}.{o}") for o in LINEAR_PROJECTIONS if o != name
                       for m in ("self_attn", "mlp"))
    assert not re.fullmatch(full, "model.vision_tower.transformer.layers.0.attention.q_proj")
    with pytest.raises(ValueError, match="qkv_proj"):
        lora_target_regex("q_proj,qkv_proj")
