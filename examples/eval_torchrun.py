"""Data-parallel evaluation on 'remote' with torchrun: N ranks, one shared copy of the weights.

    djinn-server --listen tcp://127.0.0.1:5555 &
    DJINN_SERVER=tcp://127.0.0.1:5555 DJINN_TEXT_MIN_BYTES=0 \\
        python -m torch.distributed.run --nproc_per_node=2 examples/eval_torchrun.py

Every rank is a separate process and therefore a separate djinn session. Each builds the
same seeded tiny Llama, moves it to 'remote' and evaluates its shard of a synthetic
dataset (next-token loss and accuracy); the per-rank sums are combined with all_reduce
(gloo, CPU). Rank 0 also evaluates the whole dataset on the CPU in a single process and
prints one JSON line, ``{"match": true, ...}`` when the combined result equals it.

Weights are uploaded as content-addressed "Text": the server hashes them and keeps one
copy however many sessions upload the same bytes. Uploads of at least
DJINN_TEXT_MIN_BYTES (default 65536) bytes are treated so; this model's tensors are
smaller, so set DJINN_TEXT_MIN_BYTES=0 to share all of them. The JSON line reports the
server's Text counters, read after a barrier while every rank's session is open, next to
what one copy of the model would be: ``text_bytes == expected_text_bytes`` (not N times
it) and ``text_refs == world_size * tensors``. Rank 0 uploads first; the other ranks offer
the hashes of their weights and send no bytes (``dedup_bytes_per_rank``).

Options: --sequences N (64), --seq-len L (16), --batch B (8), --seed S (0).
"""

import argparse
import copy
import json
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F

import djinn


def build_model(seed):
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging

    logging.set_verbosity_error()
    cfg = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        max_position_embeddings=64,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # norms start as all-ones: make them distinct, as in a trained model
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def dataset(n, seq_len, vocab, seed):
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randint(0, vocab, (n, seq_len), generator=g)


@torch.no_grad()
def evaluate(model, seqs, batch, device):
    """Sums over the next-token predictions of `seqs`: (loss, correct, count), float64."""
    loss = torch.zeros((), dtype=torch.float64)
    correct = count = 0
    for i in range(0, len(seqs), batch):
        x = seqs[i : i + batch].to(device)
        logits = model(x).logits[:, :-1]
        target = x[:, 1:]
        loss += (
            F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum"
            )
            .cpu()
            .double()
        )
        correct += int((logits.argmax(-1) == target).sum().item())
        count += target.numel()
    return torch.tensor([loss.item(), float(correct), float(count)], dtype=torch.float64)


def text_expectation(model):
    """What one copy of the model costs in the Text segment: distinct contents, their
    bytes, and the number of tensors each session binds."""
    tensors = [t for t in list(model.parameters()) + list(model.buffers()) if t.numel()]
    distinct = {}
    for t in tensors:
        b = t.detach().contiguous().numpy().tobytes()
        distinct.setdefault(b, len(b))
    min_bytes = int(os.environ.get("DJINN_TEXT_MIN_BYTES", "65536"))
    shared = [t for t in tensors if t.numel() * t.element_size() >= min_bytes]
    shared_distinct = {t.detach().contiguous().numpy().tobytes() for t in shared}
    return {
        "tensors": len(shared),
        "tensor_bytes": sum(t.numel() * t.element_size() for t in shared),
        "expected_text_entries": len(shared_distinct),
        "expected_text_bytes": sum(len(b) for b in shared_distinct),
        "param_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "all_tensors": len(tensors),
        "all_distinct_bytes": sum(distinct.values()),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sequences", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    cpu_model = build_model(args.seed)
    # rank 0 uploads the weights first; the other ranks then offer their hashes and find
    # every tensor on the server already (no bytes sent: counted as dedup_bytes)
    for turn in (0, 1):
        if (rank == 0) == (turn == 0):
            model = copy.deepcopy(cpu_model).to("remote")
            torch.remote.synchronize()  # every weight is on the server (uploaded or found by hash)
        dist.barrier()
    # here every rank's session is open and holds the weights
    stats = djinn.remote.memory_stats() if rank == 0 else None
    moved = [None] * world
    dist.all_gather_object(
        moved, {k: djinn.bytes_moved()[k] for k in ("upload_bytes", "dedup_bytes")}
    )
    dist.barrier()  # nobody uploads data before rank 0 has read the counters

    seqs = dataset(args.sequences, args.seq_len, cpu_model.config.vocab_size, args.seed)
    mine = evaluate(model, seqs[rank::world], args.batch, "remote")
    parts = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(parts, mine)
    total = mine.clone()
    dist.all_reduce(total)

    if rank == 0:
        ref = evaluate(cpu_model, seqs, args.batch, "cpu")
        loss, acc = total[0].item() / total[2].item(), total[1].item() / total[2].item()
        ref_loss, ref_acc = ref[0].item() / ref[2].item(), ref[1].item() / ref[2].item()
        match = (
            torch.allclose(total, ref, rtol=1e-5, atol=1e-6)  # loss sums
            and total[1].item() == ref[1].item()
            and total[2].item() == ref[2].item()
            and torch.allclose(torch.stack(parts).sum(0), total, rtol=1e-9)
        )
        print(
            json.dumps(
                {
                    "match": match,
                    "world_size": world,
                    "loss": loss,
                    "accuracy": acc,
                    "cpu_loss": ref_loss,
                    "cpu_accuracy": ref_acc,
                    "tokens": int(total[2].item()),
                    "per_rank": [p.tolist() for p in parts],
                    "upload_bytes_per_rank": [m["upload_bytes"] for m in moved],
                    "dedup_bytes_per_rank": [m["dedup_bytes"] for m in moved],
                    "memory_stats": stats,
                    "text_bytes": stats["text.bytes"],
                    "text_entries": stats["text.entries"],
                    "text_refs": stats["text.refs"],
                    "sessions_open": stats["server.sessions"],
                    **text_expectation(cpu_model),
                    "session": f"{djinn.remote.session_id():x}",
                }
            ),
            flush=True,
        )
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
