"""./run.sh serve-check against a stand-in OpenAI-compatible server (no engine needed): agreement, the
contract rate and the adapter's no-op check are computed from what the server answers."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from train.tools import serve_check


@pytest.fixture()
def server():
    """Answers model "good" with a fixed reasoning_content/content reply, "raw" with the same turn left as
    [THINK]..[/THINK] text (a server without a reasoning parser), "stripped" with that text less its control
    tokens (llama-cpp-python's server), "base" with something else."""
    answers = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self._reply({"data": [{"id": "good"}, {"id": "raw"}, {"id": "stripped"}, {"id": "base"}]})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            assert body["temperature"] == 0 and body["messages"][0]["role"] == "system"
            assert body["repeat_penalty"] == body["repetition_penalty"] == 1.0   # greedy on llama.cpp too
            reasoning, answer = answers[body["messages"][1]["content"]]
            message = {"good": {"reasoning_content": reasoning, "content": answer},
                       "raw": {"content": f"[THINK]{reasoning}[/THINK]{answer}"},
                       "stripped": {"content": (reasoning + answer).replace("[THINK]", "").replace("[/THINK]", "")},
                       "base": {"content": "something else"}}[body["model"]]
            self._reply({"choices": [{"message": message, "finish_reason": "stop"}]})

        def _reply(self, data):
            raw = json.dumps(data).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args):
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}/v1", answers
    httpd.shutdown()


def test_serve_check_reports_agreement_contract_and_the_adapter(server, tiny_model_dir, tmp_path, capsys):
    url, answers = server
    questions = serve_check.QUESTIONS[:3]
    local = serve_check.local_turns(tiny_model_dir, None, questions, 6, "cpu")
    answers.update({q: (t["reasoning"], t["answer"]) for q, t in zip(questions, local)})
    argv = [url, "--model-path", str(tiny_model_dir), "--questions", "3", "--max-tokens", "6", "--device", "cpu"]
    assert serve_check.main(argv + ["--model", "good", "--base-model", "base"]) == 0
    out = capsys.readouterr().out
    assert "3/3 answers equal to local transformers" in out and "the adapter changed 3/3 answers" in out
    assert serve_check.main(argv + ["--model", "raw"]) == 0
    assert "carry no [THINK] markers" not in capsys.readouterr().out
    # Control tokens dropped by the server: the text agrees, and the report says why it cannot judge the contract.
    assert serve_check.main(argv + ["--model", "stripped", "--out", str(tmp_path / "stripped.json")]) == 0
    out = capsys.readouterr().out
    assert "3/3 answers equal" in out and "3/3 served turns carry no [THINK] markers" in out
    report = json.loads((tmp_path / "stripped.json").read_text())
    assert report["contract"] == 0 and all(not r["served"]["reasoning"] for r in report["rows"])
    # The base served as the "adapter": every answer differs from local, and nothing changed: exit 1, named.
    assert serve_check.main(argv + ["--model", "base", "--base-model", "base"]) == 1
    assert "served as a NO-OP" in capsys.readouterr().out


def test_split_turn():
    assert serve_check.split_turn("[THINK]a[/THINK]b") == ("a", "b")
    assert serve_check.split_turn("no think") == ("", "no think")
