"""Control-token facts of Ministral 3's Tekken tokenizer (docs/model.md), shared by every package."""

# The control tokens this project relies on; load_tokenizer asserts each id before anything trains.
CONTROL_TOKEN_IDS = {
    "<unk>": 0, "<s>": 1, "</s>": 2, "[INST]": 3, "[/INST]": 4, "<pad>": 11,
    "[SYSTEM_PROMPT]": 17, "[/SYSTEM_PROMPT]": 18, "[THINK]": 34, "[/THINK]": 35,
}
# Further named slots of the released tokenizer, used only to lay out the stand-in model's vocabulary.
# mistral-common's Tekken loader looks the tool and fill-in-the-middle ones up by name, so they are all here.
OTHER_CONTROL_TOKEN_IDS = {
    "[AVAILABLE_TOOLS]": 5, "[/AVAILABLE_TOOLS]": 6, "[TOOL_RESULTS]": 7, "[/TOOL_RESULTS]": 8, "[TOOL_CALLS]": 9,
    "[IMG]": 10, "[IMG_BREAK]": 12, "[IMG_END]": 13, "[PREFIX]": 14, "[MIDDLE]": 15, "[SUFFIX]": 16,
    "[TOOL_CONTENT]": 19, "[ARGS]": 32, "[CALL_ID]": 33,
}
BOS, EOS, PAD = "<s>", "</s>", "<pad>"
THINK_OPEN, THINK_CLOSE = "[THINK]", "[/THINK]"
BOS_ID, EOS_ID, PAD_ID = 1, 2, 11
THINK_OPEN_ID, THINK_CLOSE_ID = 34, 35
INST_OPEN_ID, INST_CLOSE_ID = 3, 4
SYSTEM_OPEN_ID, SYSTEM_CLOSE_ID = 17, 18
# Tekken reserves ids 0..999 for control tokens; any id below this is a control token.
NUM_CONTROL_SLOTS = 1000
# The label of a position the loss ignores (PyTorch's cross-entropy default ignore_index).
IGNORE_INDEX = -100
