"""The prompt contract: system prompt = SYSTEM_PROMPT.txt (exact bytes, from the model folder)
+ SEPARATOR + the C64 specialization (contract/c64_specialization.txt).

Any system message replaces the model's default one, so the default must be carried inside ours;
appending (never replacing) keeps the model's own reasoning instruction intact.
"""
from __future__ import annotations

from pathlib import Path

from contract.errors import UserError
from contract.tokens import BOS

SPECIALIZATION_PATH = Path(__file__).with_name("c64_specialization.txt")
SEPARATOR = "\n\n"

# The SYSTEM_PROMPT.txt of the stand-in model (train/tools/tiny_model.py), also used by the data step when no
# model folder is given: same form as the released one (think first, with a literal [THINK]...[/THINK]
# example), our own words.
STAND_IN_SYSTEM_PROMPT = (
    "Before you answer, work the problem out privately as an inner monologue, then write the reply. "
    "Use the language of the question for both parts.\n\n"
    "Lay your response out exactly like this:[THINK]Your rough working: notes, drafts, checks, as long "
    "as you need until you are sure of the result.[/THINK]The final, self-contained answer for the user."
)

MISSING_SYSTEM_PROMPT = "missing_system_prompt"
SYSTEM_PROMPT_MISMATCH = "system_prompt_mismatch"
SYSTEM_PROMPT_NOT_FIRST = "system_prompt_not_first"


class PromptContractError(UserError):
    pass


def read_model_system_prompt(model_dir: str | Path) -> str:
    """SYSTEM_PROMPT.txt from the model folder, byte for byte (strict UTF-8, no stripping)."""
    path = Path(model_dir) / "SYSTEM_PROMPT.txt"
    if not path.is_file():
        raise PromptContractError(f"{path}: missing. The C64 system prompt is built on the model's own "
                                  "SYSTEM_PROMPT.txt; copy it from the downloaded checkpoint.")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise PromptContractError(f"{path}: not valid UTF-8 at byte {e.start}") from e


def specialization() -> str:
    return SPECIALIZATION_PATH.read_text(encoding="utf-8").strip("\n")


def build_system_prompt(model_system_prompt: str) -> str:
    return model_system_prompt + SEPARATOR + specialization()


def system_prompt_for(model_dir: str | Path) -> str:
    return build_system_prompt(read_model_system_prompt(model_dir))


def _system_text(content) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(c, dict) and c.get("type") == "text" for c in content):
        return "".join(c.get("text", "") for c in content)
    return None


def check_conversation(messages: list[dict], expected_system: str) -> list[str]:
    """Failure codes (empty when the conversation carries the contract's system prompt unchanged)."""
    if not messages or messages[0].get("role") != "system":
        if any(m.get("role") == "system" for m in messages or []):
            return [SYSTEM_PROMPT_NOT_FIRST]
        return [MISSING_SYSTEM_PROMPT]
    if any(m.get("role") == "system" for m in messages[1:]):
        return [SYSTEM_PROMPT_NOT_FIRST]
    if _system_text(messages[0].get("content")) != expected_system:
        return [SYSTEM_PROMPT_MISMATCH]
    return []


def check_rendered_prompt(text: str, expected_system: str) -> list[str]:
    """A rendered prompt must open with <s>[SYSTEM_PROMPT]{expected}[/SYSTEM_PROMPT]."""
    head = f"{BOS}[SYSTEM_PROMPT]"
    if not text.startswith(head):
        return [MISSING_SYSTEM_PROMPT]
    if not text.startswith(f"{head}{expected_system}[/SYSTEM_PROMPT]"):
        return [SYSTEM_PROMPT_MISMATCH]
    return []


def with_system_prompt(messages: list[dict], system: str) -> list[dict]:
    """The conversation with the contract's system message first (an existing one is replaced)."""
    rest = [m for m in messages if m.get("role") != "system"]
    return [{"role": "system", "content": system}] + rest
