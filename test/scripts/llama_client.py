"""Clients of test_sessions.py::test_many_clients_at_once.

    python test/scripts/llama_client.py N

imports torch and transformers once, then forks N client processes *before* anything
touches 'remote' (so each child opens a session of its own; importing transformers eight
times over would dominate the test on a 2-core host). Each child, seeded with its rank:

  * moves a small MLP and a tiny Llama to 'remote';
  * waits (bounded, polling the server's counters) until all N sessions have been opened,
    so the N clients really run at the same time;
  * runs the MLP forward and a greedy generate of 4 tokens with a KV cache, and compares
    both with the same models on the CPU;
  * prints ``OK <rank> <session id hex> <sessions opened on the server>`` or
    ``FAIL <rank> <what differed>``, and exits normally (closing its session).

The launcher waits for every child and exits with the number of children that failed.
"""
import copy
import os
import sys
import time

import torch
import torch.nn as nn
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.utils import logging

import djinn


def client(rank, n):
    logging.set_verbosity_error()
    problems = []
    torch.manual_seed(rank)
    mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8))
    rmlp = copy.deepcopy(mlp).to("remote")
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=128, max_position_embeddings=64)
    cpu_model = LlamaForCausalLM(cfg).eval()
    model = copy.deepcopy(cpu_model).to("remote")
    x = torch.randn(4, 16)
    prompt = torch.randint(0, cfg.vocab_size, (1, 6))

    # sessions_opened, not sessions_open: no client closes before it has seen all n
    # opened, so when the n-th opens all n are open at once (and a fast client's exit
    # cannot make a slow one wait for a count that will never come back)
    deadline = time.monotonic() + 120
    while (opened := djinn.server_stats()["sessions_opened"]) < n:
        if time.monotonic() > deadline:
            problems.append(f"only {opened} of {n} sessions opened after 120 s")
            break
        time.sleep(0.05)  # polling interval

    with torch.no_grad():
        want, got = mlp(x), rmlp(x.to("remote")).cpu()
        if not torch.allclose(got, want, rtol=1e-5, atol=1e-6):
            problems.append(f"mlp max|diff|={(got - want).abs().max().item():.3g}")
        ref = cpu_model.generate(prompt, max_new_tokens=4, do_sample=False, use_cache=True, pad_token_id=0)
        out = model.generate(prompt.to("remote"), max_new_tokens=4, do_sample=False, use_cache=True,
                             pad_token_id=0).cpu()
    if not torch.equal(out, ref):
        problems.append(f"generate remote={out[0, 6:].tolist()} cpu={ref[0, 6:].tolist()}")
    sid = djinn.remote.session_id()
    line = f"FAIL {rank} " + "; ".join(problems) if problems else f"OK {rank} {sid:x} {opened}"
    emit(line)
    return 0 if not problems else 1


def emit(line):
    """One write(2) per line: the forked clients share one pipe, and a line written in
    one call (under PIPE_BUF) is never interleaved with another's."""
    os.write(1, (line.replace("\n", " ") + "\n").encode())


def main(n):
    sys.stdout.flush()  # nothing buffered may be inherited by (and repeated from) the children
    pids = []
    for rank in range(n):
        pid = os.fork()
        if pid == 0:
            try:
                rc = client(rank, n)
            except BaseException as e:  # noqa: BLE001 - reported, then a normal exit
                emit(f"FAIL {rank} {type(e).__name__}: {e}")
                rc = 1
            sys.stdout.flush()
            sys.exit(rc)  # a normal exit: djinn's atexit handler closes the session
        pids.append(pid)
    failed = 0
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        failed += os.waitstatus_to_exitcode(status) != 0
    return failed


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
