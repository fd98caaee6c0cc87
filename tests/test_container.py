"""The container files, checked without a Docker engine (none on the development machine or in CI).

What matters is what `docker compose run --rm trainer ./run.sh ...` relies on: a non-root image with the
project's pinned requirements and run.sh's setup stamp already in place, a GPU reservation, and the
models/ and data/ folders mounted where run.sh looks for them. The seed playbook's own form,
`docker compose run --rm trainer bash scripts/container/train.sh ...`, is run here as the container would run
it: in a copy of the build context laid out by the Dockerfile's own step.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"
DOCKERIGNORE = ROOT / ".dockerignore"


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comment lines dropped and continuation lines joined."""
    out, buf = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue  # Docker drops comment lines, even in the middle of a continued instruction
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1]
            continue
        buf += line
        if buf.strip():
            keyword, _, args = buf.strip().partition(" ")
            out.append((keyword.upper(), args.strip()))
        buf = ""
    return out


def project_requirements() -> dict[str, Requirement]:
    reqs = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            reqs[req.name.lower()] = req
    return reqs


@pytest.fixture(scope="module")
def instructions():
    return dockerfile_instructions(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load(COMPOSE.read_text())


def _args(instructions, keyword):
    return [args for kw, args in instructions if kw == keyword]


def _index(instructions, predicate):
    return next(i for i, ins in enumerate(instructions) if predicate(*ins))


def test_parser_joins_continuations_and_drops_comments():
    ins = dockerfile_instructions("FROM x\n# c\nRUN a \\\n# inner\n && b\nCMD [\"y\"]\n")
    assert ins == [("FROM", "x"), ("RUN", "a  && b"), ("CMD", '["y"]')]


def test_runs_as_non_root_user(instructions):
    users = _args(instructions, "USER")
    assert users, "the Dockerfile never switches away from root"
    defaults = dict(a.split("=", 1) for a in _args(instructions, "ARG") if "=" in a)
    final = re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m.group(1), m.group(0)), users[-1]).split(":")[0]
    assert "$" not in final, f"USER {users[-1]} uses an ARG without a default"
    assert final not in {"root", "0"}
    # The project's files and the venv are created after the switch, so the user owns them and
    # run.sh setup can update the venv if a requirement file changes.
    user_at = max(i for i, (kw, _) in enumerate(instructions) if kw == "USER")
    pip_at = _index(instructions, lambda kw, a: kw == "RUN" and "pip install" in a)
    assert user_at < pip_at


def test_installs_requirements_then_project_via_run_sh(instructions):
    copy_reqs = _index(instructions, lambda kw, a: kw == "COPY" and "requirements.txt" in a and " . ." not in a)
    pip = _index(instructions, lambda kw, a: kw == "RUN" and re.search(r"pip install .*-r requirements\.txt", a))
    copy_all = _index(instructions, lambda kw, a: kw == "COPY" and re.search(r"(^|\s)\.\s+\.$", a))
    setup = _index(instructions, lambda kw, a: kw == "RUN" and "./run.sh setup" in a)
    # Requirements get their own cached layer before the source is copied; run.sh's own setup then
    # installs the project and writes the stamp that makes later `./run.sh` calls skip pip.
    assert copy_reqs < pip < copy_all < setup
    assert "-r requirements-dev.txt" in instructions[pip][1], "the stamp covers requirements-dev.txt too"


def test_venv_is_the_one_run_sh_uses(instructions):
    env = " ".join(_args(instructions, "ENV"))
    m = re.search(r"\bVENV=(\S+)", env)
    assert m, "ENV VENV=... is how run.sh finds the image's venv"
    venv = m.group(1)
    assert re.search(rf"PATH={re.escape(venv)}/bin:", env)
    run_sh = (ROOT / "run.sh").read_text()
    assert 'VENV="${VENV:-' in run_sh, "run.sh no longer honours VENV from the environment"
    # The stamp inputs are exactly what run.sh hashes; all three must reach the image.
    hashed = re.search(r"local files=\(([^)]+)\)", run_sh).group(1).split()
    assert sorted(hashed) == ["pyproject.toml", "requirements-dev.txt", "requirements.txt"]


def test_default_command_is_run_sh(instructions):
    cmds = _args(instructions, "CMD")
    assert cmds and json.loads(cmds[-1]) == ["./run.sh"]
    # No ENTRYPOINT, so `docker compose run --rm trainer ./run.sh --phase sft ...` (or torchrun) replaces the
    # command as written.
    assert not _args(instructions, "ENTRYPOINT")


def test_pinned_versions_agree_with_requirements(instructions):
    reqs = project_requirements()
    torch_pin = [s.version for s in reqs["torch"].specifier if s.operator == "=="]
    assert torch_pin, "requirements.txt no longer pins torch exactly"
    args = dict(a.split("=", 1) for a in _args(instructions, "ARG") if "=" in a)
    assert args.get("TORCH_VERSION") == torch_pin[0]
    # Any requirement spelled out in a pip install line must be allowed by requirements.txt.
    for run in _args(instructions, "RUN"):
        for spec in re.findall(r"""["']?([A-Za-z0-9_.\-\[\]]+(?:==|>=|<=|~=)[^\s"']+)["']?""", run):
            try:
                req = Requirement(spec)
            except InvalidRequirement:
                continue  # a shell token that only looks like a requirement
            ours = reqs.get(req.name.lower())
            if ours is None:
                continue
            for s in req.specifier:
                if s.operator == "==":
                    assert ours.specifier.contains(s.version, prereleases=True), (spec, str(ours))


def test_base_image_python_fits_pyproject(instructions):
    base = _args(instructions, "FROM")[0].split()[-1]
    m = re.match(r"python:(\d+\.\d+)", base)
    assert m, f"unexpected base image {base}"
    requires = re.search(r'requires-python\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert SpecifierSet(requires).contains(m.group(1) + ".0")


def test_compose_trainer_service(compose, instructions):
    svc = compose["services"]["trainer"]
    assert svc["build"] == "." or svc["build"]["context"] == "."
    workdir = _args(instructions, "WORKDIR")[-1]
    assert svc["working_dir"] == workdir
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    mounts = {}
    for v in svc["volumes"]:
        if isinstance(v, str):
            src, dst = v.split(":")[:2]
        else:
            src, dst = v["source"], v["target"]
        mounts[src.rstrip("/")] = dst.rstrip("/")
    assert mounts.get("./models") == f"{workdir}/models"
    assert mounts.get("./data") == f"{workdir}/data"
    assert svc.get("command", ["./run.sh"]) in (["./run.sh"], "./run.sh")
    assert svc.get("platform", "linux/amd64") == "linux/amd64"


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule, closely enough: the last matching pattern wins; a pattern also
    excludes everything under a matching folder; a leading **/ matches at any depth, including the top."""
    verdict = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in patterns:
        negate = raw.startswith("!")
        pat = raw[1:] if negate else raw
        pat = pat.strip("/")
        variants = {pat, pat[3:]} if pat.startswith("**/") else {pat}
        if any(fnmatch.fnmatchcase(p, v) for p in prefixes for v in variants):
            verdict = not negate
    return verdict


def test_dockerignore_keeps_what_the_build_needs():
    patterns = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines()
                if ln.strip() and not ln.lstrip().startswith("#")]
    for local_state in (".venv/bin/python", ".git/HEAD", "models/tiny/model.safetensors", "scratch/x.json",
                        "train/__pycache__/main.cpython-311.pyc", "data/processed/sft/train.jsonl"):
        assert _ignored(local_state, patterns), local_state
    needed = ["run.sh", "requirements.txt", "requirements-dev.txt", "pyproject.toml", "train/__init__.py",
              "data/__init__.py", "templates/mistral3_chat_template_assistant_mask.jinja", "contract/tokens.py"]
    needed += [p.relative_to(ROOT).as_posix() for p in (ROOT / "data" / "raw").rglob("*") if p.is_file()]
    for path in needed:
        assert not _ignored(path, patterns), path


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed")
def test_hadolint_clean():
    res = subprocess.run(["hadolint", "--failure-threshold", "warning", str(DOCKERFILE)],
                         check=False, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def _compose_cli() -> list[str] | None:
    """`docker compose` (v2 plugin) or, failing that, the standalone `docker-compose`; neither needs an engine
    to validate and render a compose file."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"],
                                                  check=False, capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


@pytest.mark.skipif(_compose_cli() is None, reason="neither docker compose nor docker-compose installed")
def test_compose_cli_validates_and_renders():
    res = subprocess.run([*_compose_cli(), "-f", str(COMPOSE), "config"], cwd=ROOT, check=False,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    rendered = yaml.safe_load(res.stdout)["services"]["trainer"]
    assert rendered["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"


# ------------------------------------------------------------------------- the seed playbook's commands

LAYOUT_STEP = "python -m train.tools.image_layout"
PLAYBOOK_TEMPLATE = "scripts/templates/mistral3_chat_template_assistant_mask.jinja"
MODEL = "models/Ministral-3-8B-Thinking"
# The README's phase commands as the playbook writes them, after `docker compose run --rm trainer`.
PLAYBOOK = {
    "dapt": ["bash", "scripts/container/train.sh", "--phase", "dapt", "--model-path", MODEL, "--dapt-dir",
             "data/processed/dapt", "--output-dir", "models/fine-tuned-dapt", "--precision", "bf16", "--use-lora"],
    "sft": ["bash", "scripts/container/train.sh", "--phase", "sft", "--model-path", MODEL, "--sft-dir",
            "data/processed/sft", "--output-dir", "models/fine-tuned-sft", "--precision", "bf16",
            "--assistant-only-loss", "--strict-assistant-only-loss", "--chat-template-path", PLAYBOOK_TEMPLATE,
            "--no-packing", "--use-lora"],
}


def cpu_sizes() -> list[str]:
    """Appended so each phase runs in seconds on the tiny model and a CPU; the precision is the one the flow
    picks here (fp32 on a CPU without native bf16, where bf16 is emulated and several times slower)."""
    import torch

    from train.device import default_precision
    return ["--device", "cpu", "--precision", default_precision(torch.device("cpu")), "--max-steps", "1",
            "--grad-accum", "1", "--micro-batch-size", "1", "--eval-max-batches", "1"]


def test_dockerfile_makes_the_playbook_paths_in_the_working_directory(instructions):
    workdir = _args(instructions, "WORKDIR")[-1]
    copy_all = _index(instructions, lambda kw, a: kw == "COPY" and re.search(r"(^|\s)\.\s+\.$", a))
    layout = _index(instructions, lambda kw, a: kw == "RUN" and a == f"{LAYOUT_STEP} {workdir}")
    assert copy_all < layout
    # The repository itself keeps its top-level layout: the paths exist only in the image.
    tracked = subprocess.run(["git", "ls-files", "scripts"], cwd=ROOT, capture_output=True, text=True).stdout
    assert tracked == ""


def copy_build_context(dest: Path) -> None:
    """What `COPY . .` puts into the image: the checkout with .dockerignore applied."""
    patterns = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines()
                if ln.strip() and not ln.lstrip().startswith("#")]
    for folder, dirs, files in os.walk(ROOT):
        rel = Path(folder).relative_to(ROOT)
        dirs[:] = [d for d in dirs if not _ignored((rel / d).as_posix(), patterns)]
        for name in files:
            if not _ignored((rel / name).as_posix(), patterns):
                (dest / rel).mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(folder) / name, dest / rel / name)


@pytest.fixture(scope="module")
def image_app(tmp_path_factory, tiny_model_dir) -> Path:
    """/app as the image has it, with compose's bind mounts: ./models (holding the tiny model under the real
    model's folder name) and ./data (the checkout's, copied with the context here)."""
    stamp = Path(sys.prefix) / ".setup-stamp"
    if not stamp.is_file():
        pytest.skip(f"{sys.prefix} was not made by ./run.sh setup: run.sh in the copy would reinstall it")
    app = tmp_path_factory.mktemp("image") / "app"
    copy_build_context(app)
    step = subprocess.run([sys.executable, "-m", "train.tools.image_layout", str(app)], cwd=app,
                          capture_output=True, text=True)
    assert step.returncode == 0, step.stderr
    (app / "models").mkdir(exist_ok=True)
    (app / MODEL).symlink_to(tiny_model_dir, target_is_directory=True)
    return app


def in_container(app: Path, command: list[str]) -> None:
    """The part of `docker compose run --rm trainer COMMAND` inside the container: compose's working directory,
    the image's VENV (here the venv running the tests, so run.sh's setup finds its stamp current)."""
    env = os.environ | {"VENV": sys.prefix, "PYTHONPATH": ""}
    res = subprocess.run(command, cwd=app, env=env, capture_output=True, text=True)
    assert res.returncode == 0, f"{' '.join(command)}: exit {res.returncode}\n{res.stderr[-4000:]}"


@pytest.mark.slow
def test_the_playbook_commands_run_as_written_in_the_image_layout(image_app):
    app = image_app
    assert (app / PLAYBOOK_TEMPLATE).read_bytes() == (ROOT / "templates" / Path(PLAYBOOK_TEMPLATE).name).read_bytes()
    # The data step first (any verb goes through train.sh), then the two phases: DAPT, and SFT on top of it with
    # the template path as the playbook spells it; --merge also exercises train.main's merged export.
    in_container(app, ["bash", "scripts/container/train.sh", "data", "--model-path", MODEL, "--sft-max", "40"])
    in_container(app, PLAYBOOK["dapt"] + cpu_sizes() + ["--max-length", "128"])
    in_container(app, PLAYBOOK["sft"] + cpu_sizes() + ["--max-length", "1024", "--base-adapter",
                                                       "models/fine-tuned-dapt", "--merge"])

    dapt, sft = app / "models" / "fine-tuned-dapt", app / "models" / "fine-tuned-sft"
    args = json.loads((sft / "training_args.json").read_text())
    assert args["finished"] is True and args["chat_template_path"] == PLAYBOOK_TEMPLATE
    template = (ROOT / "templates" / Path(PLAYBOOK_TEMPLATE).name).read_bytes()
    assert args["chat_template_sha256"] == hashlib.sha256(template).hexdigest()
    assert (sft / "chat_template.jinja").read_bytes() == template
    assert args["lineage"]["base_adapter"] == str(dapt.resolve())
    assert json.loads((dapt / "training_args.json").read_text())["finished"] is True
    for run in (dapt, sft):
        assert (run / "adapter_model.safetensors").is_file() and (run / "vlm_adapter" / "adapter_config.json").is_file()
    info = json.loads((sft / "merged" / "export_info.json").read_text())
    assert [a["path"] for a in info["adapters"]] == [str(dapt.resolve()), str(sft.resolve())]
    assert json.loads((sft / "merged" / "config.json").read_text())["model_type"] == "mistral3"
