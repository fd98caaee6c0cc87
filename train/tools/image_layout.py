"""The seed playbook's paths inside the training image (docs/usage.md, "Container").

    python -m train.tools.image_layout ROOT        (the Dockerfile runs it on /app)

The playbook's commands are `docker compose run --rm trainer bash scripts/container/train.sh --phase ...`, with
`--chat-template-path scripts/templates/mistral3_chat_template_assistant_mask.jinja`. The repository keeps its
own top-level layout (run.sh, templates/), so those paths are made in the image's working directory instead:

    ROOT/scripts/container/train.sh   hands every argument to ROOT/run.sh: the phases and every other verb
    ROOT/scripts/templates            a link to ROOT/templates: the same template files, not copies

tests/test_container.py runs this same step on a copy of the build context and then the playbook's commands.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from contract.errors import UserError

TRAIN_SH = """#!/usr/bin/env bash
# The seed playbook's entry point in the training image: every argument goes to run.sh, so
# `bash scripts/container/train.sh --phase sft ...` is `./run.sh --phase sft ...` (docs/usage.md, "Container").
# Made by `python -m train.tools.image_layout`; not part of the repository.
exec "$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/run.sh" "$@"
"""


def make_layout(root: str | Path) -> list[Path]:
    """Create (or refresh) the playbook paths under root; returns them."""
    root = Path(root)
    if not (root / "run.sh").is_file() or not (root / "templates").is_dir():
        raise UserError(f"{root}: not the project root (run.sh and templates/ expected there)")
    train_sh = root / "scripts" / "container" / "train.sh"
    train_sh.parent.mkdir(parents=True, exist_ok=True)
    train_sh.write_text(TRAIN_SH)
    train_sh.chmod(0o755)
    templates = root / "scripts" / "templates"
    if templates.is_symlink():
        templates.unlink()
    elif templates.exists():
        raise UserError(f"{templates}: exists and is not the link this step makes; remove it first")
    templates.symlink_to(Path("..") / "templates", target_is_directory=True)
    return [train_sh, templates]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="train.tools.image_layout", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", metavar="ROOT", help="the project root inside the image (/app)")
    a = ap.parse_args(argv)
    try:
        for path in make_layout(a.root):
            print(f"image layout: {path}{' -> ' + str(path.readlink()) if path.is_symlink() else ''}")
    except UserError as e:
        print(f"image_layout: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
