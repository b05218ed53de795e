"""make demo: a small Llama-architecture model generating on torch.device('remote').

The model is built from a transformers config with random weights (no download), runs
greedy generation with a KV cache on an embedded local djinn-server and on the CPU, and
prints both token lists (they must match), the time per token and the bytes moved.
"""

import copy
import time

import torch

import djinn


def main():
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging

    logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        vocab_size=1024,
        max_position_embeddings=256,
    )
    cpu_model = LlamaForCausalLM(cfg).eval()
    prompt = torch.randint(0, cfg.vocab_size, (1, 16))
    new_tokens = 24

    print(
        f"djinn demo: Llama-architecture model, {sum(p.numel() for p in cpu_model.parameters()) / 1e6:.1f} M "
        f"parameters, prompt {prompt.shape[1]} tokens, {new_tokens} new tokens (greedy, KV cache)"
    )

    with torch.no_grad():
        t0 = time.perf_counter()
        ref = cpu_model.generate(prompt, max_new_tokens=new_tokens, do_sample=False, use_cache=True)
        t_cpu = time.perf_counter() - t0

        djinn.reset_bytes_moved()
        t0 = time.perf_counter()
        model = copy.deepcopy(cpu_model).to("remote")
        torch.remote.synchronize()
        t_load = time.perf_counter() - t0
        load = djinn.bytes_moved()

        djinn.reset_bytes_moved()
        t0 = time.perf_counter()
        out = model.generate(
            prompt.to("remote"), max_new_tokens=new_tokens, do_sample=False, use_cache=True
        )
        tokens = out.cpu()
        t_remote = time.perf_counter() - t0
        gen = djinn.bytes_moved()

    print(f"server: {torch.remote.endpoint()} ({torch.remote.device_name(0)})")
    print("cpu    tokens:", ref[0, prompt.shape[1] :].tolist())
    print("remote tokens:", tokens[0, prompt.shape[1] :].tolist())
    same = torch.equal(ref, tokens)
    print("match:", same)
    print(
        f"time per token: cpu {1e3 * t_cpu / new_tokens:.1f} ms, remote {1e3 * t_remote / new_tokens:.1f} ms"
    )
    print(f"model upload: {load['upload_bytes'] / 1e6:.2f} MB in {t_load:.2f} s")
    print(
        f"generate: sent {gen['bytes_sent'] / 1e3:.1f} kB, received {gen['bytes_received'] / 1e3:.1f} kB "
        f"in {gen['messages']} messages ({gen['nodes']} ops captured, {gen['dynamic_syncs']} data-dependent syncs)"
    )
    full = sum(4 * cfg.vocab_size * (prompt.shape[1] + i) for i in range(new_tokens))
    print(f"returning every logits tensor in full would have received {full / 1e6:.2f} MB")
    if not same:
        raise SystemExit("remote and CPU tokens differ")


if __name__ == "__main__":
    main()
