"""Greedy generation from a GGUF file through llama-cpp-python, for the GGUF checks (tests/test_serving.py).

Runs inside the llama.cpp engine venv, so it imports nothing of the toolkit:
    .venv-llamacpp/bin/python train/tools/llamacpp_generate.py < {"gguf": PATH, "prompts": [[ids]], "max_new_tokens": N}
prints {"generations": [[ids]], "tokenized": [[ids]], "llama_cpp_python": VERSION, "chat_template": the GGUF's}. Prompts are token ids (rendered and tokenized by
the caller), so the comparison with transformers is of the forward pass and decoding, token for token; the
prompt's tokenization is checked separately ("tokenize" in the request: texts to tokenize with the GGUF's vocabulary).
"""
import json
import sys


def main() -> int:
    import llama_cpp

    request = json.load(sys.stdin)
    llm = llama_cpp.Llama(model_path=request["gguf"], n_ctx=request.get("n_ctx", 2048), n_threads=1,
                          n_batch=512, seed=0, verbose=False)
    eos = llm.token_eos()
    generations = []
    for prompt in request["prompts"]:
        llm.reset()
        out = []
        # temp 0 is llama.cpp's greedy sampler; no repeat penalty, as transformers' greedy decoding has none.
        for token in llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
            out.append(int(token))
            if token == eos or len(out) >= request["max_new_tokens"]:
                break
        generations.append(out)
    tokenized = [llm.tokenize(t.encode("utf-8"), add_bos=False, special=True) for t in request.get("tokenize", [])]
    json.dump({"generations": generations, "tokenized": tokenized, "llama_cpp_python": llama_cpp.__version__,
               "chat_template": llm.metadata.get("tokenizer.chat_template")}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
