"""Issue 18, item 7: two torchrun nodes on localhost train exactly like one node with two processes."""
from __future__ import annotations

import subprocess

import pytest
import torch
from safetensors.torch import load_file

from conftest import free_port
from test_distributed import ROOT, TORCHRUN, args, cpu_env, small_dapt, torchrun  # noqa: F401  (small_dapt: fixture)


@pytest.mark.slow
def test_two_nodes_train_like_one_node_with_two_processes(tiny_text_model_dir, small_dapt, tmp_path):  # noqa: F811
    extra = ("--max-steps", "3", "--save-interval", "100")
    one_node = tmp_path / "one-node"
    torchrun(args(tiny_text_model_dir, small_dapt, one_node, 2, *extra), tmp_path)

    # The same job as two nodes of one process each: the command of docs/usage.md ("Several processes and
    # several nodes") with both nodes on 127.0.0.1, the c10d rendezvous on a free port, gloo on CPU.
    two_nodes = tmp_path / "two-nodes"
    port = free_port()
    nodes = [subprocess.Popen([str(TORCHRUN), "--nnodes=2", "--nproc-per-node=1", f"--node-rank={rank}",
                               "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=c64-test",
                               str(ROOT / "train/main.py"), *args(tiny_text_model_dir, small_dapt, two_nodes, 2, *extra)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cpu_env(), cwd=tmp_path)
             for rank in (0, 1)]
    for node in nodes:
        _, err = node.communicate(timeout=600)
        assert node.returncode == 0, err[-4000:]

    log = (two_nodes / "train.log").read_text()
    assert "2 process(es)" in log
    a, b = load_file(str(one_node / "adapter_model.safetensors")), load_file(str(two_nodes / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.equal(a[k], b[k]), k  # the same ranks, rows, collectives and order of additions: bit for bit
