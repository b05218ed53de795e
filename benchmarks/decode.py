"""Greedy decoding written out step by step, so each step can be timed.

Prefill ``ids`` (1 x P), then ``steps`` decode steps with a KV cache, argmax each time.
Two ways to run the same loop:

- ``decode_direct(model, ids, steps, device)``: the model and its cache live on
  ``device`` (local ``cpu``/``cuda``, or ``remote``). Each step reads back only the next
  token id (``.item()``); on ``remote`` everything else stays on the server.
- ``decode_client(client, name, ids, steps)``: a baseline server holds
  ``baselines.StepLM(model)``; every step sends the token and the whole KV cache and gets
  the logits and the grown KV cache back (what a stateless, return-everything server does).

- ``decode_generate(model, ids, steps, device)``: Hugging Face's default ``generate()``
  (greedy, batch 1, its own ``DynamicCache``), as users write it, timed per token by a
  stopping criterion that notes the clock (and, on ``remote``, the bytes moved) each
  time ``generate()`` asks it whether to stop, that is once per token.

Each returns a dict: ``tokens``, ``prefill_s``, ``step_s`` (list), ``step_bytes`` (bytes
moved per decode step where measurable, else None), ``step_sent`` (the part of it
the client sent; for RPC the tensor payload) and ``full_return_bytes`` (local: logits + KV cache bytes of each step's outputs,
what returning every output costs).
"""

import time

import torch

from baselines import kv_flatten


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _djinn_bytes():
    import djinn

    c = djinn.bytes_moved()
    return c["bytes_sent"], c["bytes_received"]


def decode_direct(model, ids, steps, device):
    remote = torch.device(device).type == "remote"
    step_s, step_bytes, sent, full = [], [], [], []
    with torch.no_grad():
        _sync(device)
        t0 = time.perf_counter()
        x = ids.to(device)
        out = model(input_ids=x, use_cache=True)
        cache = out.past_key_values
        nxt = out.logits[:, -1:].argmax(-1)
        tokens = [int(nxt.item())]
        prefill_s = time.perf_counter() - t0
        for _ in range(steps):
            b0 = _djinn_bytes() if remote else (0, 0)
            t0 = time.perf_counter()
            out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            nxt = out.logits[:, -1:].argmax(-1)
            tokens.append(int(nxt.item()))
            step_s.append(time.perf_counter() - t0)
            if remote:
                b1 = _djinn_bytes()
                step_bytes.append(b1[0] - b0[0] + b1[1] - b0[1])
                sent.append(b1[0] - b0[0])
            else:
                full.append(out.logits.nbytes + sum(t.nbytes for t in kv_flatten(cache)))
    return {
        "tokens": tokens,
        "prefill_s": prefill_s,
        "step_s": step_s,
        "step_bytes": step_bytes or None,
        "step_sent": sent or None,
        "full_return_bytes": full or None,
    }


def _nbytes(objs):
    return sum(t.nbytes for t in objs if isinstance(t, torch.Tensor))


def decode_client(client, name, ids, steps):
    """Decode through a baseline client holding ``StepLM`` under ``name``.

    Bytes per step: measured on the socket for the naive server; for RPC the tensor
    payload (TensorPipe's framing is not visible), which is a lower bound."""
    measured = hasattr(client, "bytes_sent")
    step_s, step_bytes, step_sent = [], [], []
    t0 = time.perf_counter()
    outs = client.call(name, ids)
    logits, kv = outs[0], outs[1:]
    nxt = logits[:, -1:].argmax(-1)
    tokens = [int(nxt.item())]
    prefill_s = time.perf_counter() - t0
    for _ in range(steps):
        b0 = client.bytes_sent + client.bytes_received if measured else 0
        s0 = client.bytes_sent if measured else 0
        t0 = time.perf_counter()
        outs = client.call(name, nxt, *kv)
        logits, kv = outs[0], outs[1:]
        nxt = logits[:, -1:].argmax(-1)
        tokens.append(int(nxt.item()))
        step_s.append(time.perf_counter() - t0)
        if measured:
            step_bytes.append(client.bytes_sent + client.bytes_received - b0)
            step_sent.append(client.bytes_sent - s0)
        else:
            # what went in (token + previous KV, one position shorter) and what came back
            # (logits + new KV)
            kv_bytes = _nbytes(kv)
            per_position = kv_bytes // max(1, kv[0].shape[-2])
            step_bytes.append(nxt.nbytes + 2 * kv_bytes - per_position + logits.nbytes)
            step_sent.append(nxt.nbytes + kv_bytes - per_position)
    return {
        "tokens": tokens,
        "prefill_s": prefill_s,
        "step_s": step_s,
        "step_bytes": step_bytes,
        "step_sent": step_sent,
        "full_return_bytes": None,
    }


def decode_generate(model, ids, steps, device):
    """HF ``generate()`` for ``steps + 1`` new tokens; a step is the time between two
    consecutive stopping-criterion calls, each of which follows one token (generate()
    reads back whether every sequence finished at each step, so the clock sees work
    done). ``prefill_s`` runs from the call to the first token."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    remote = torch.device(device).type == "remote"
    marks = []

    class _Clock(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            _sync(device)
            marks.append((time.perf_counter(), *(_djinn_bytes() if remote else (0, 0))))
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    with torch.no_grad():
        _sync(device)
        t0 = time.perf_counter()
        out = model.generate(
            ids.to(device),
            max_new_tokens=steps + 1,
            min_new_tokens=steps + 1,
            do_sample=False,
            pad_token_id=0,
            stopping_criteria=StoppingCriteriaList([_Clock()]),
        )
        tokens = out[0, ids.shape[1] :].tolist()
    step_s = [b[0] - a[0] for a, b in zip(marks, marks[1:])]
    step_bytes = [b[1] - a[1] + b[2] - a[2] for a, b in zip(marks, marks[1:])]
    step_sent = [b[1] - a[1] for a, b in zip(marks, marks[1:])]
    return {
        "tokens": tokens,
        "prefill_s": marks[0][0] - t0,
        "step_s": step_s,
        "step_bytes": step_bytes if remote else None,
        "step_sent": step_sent if remote else None,
        "full_return_bytes": None,
    }
