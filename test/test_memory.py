"""The memory kernel, end to end against real servers: Text sharing and copy-on-write,
the Data segment, the stack slab and its planner, and the plan cache.

Clients run as subprocesses against a private server so each test sees its own
counters; waits poll the server's counters with a bound, never sleep."""

import json
import os
import subprocess
import textwrap

import msgpack
import pytest

from conftest import PYTHON, REPO, poll, start_server, stop_server, subprocess_env
from proto import GRAPH_CACHED

# Slab bytes the executor may reach beyond what the planner reserved (kernels' own
# temporaries bump above the planned region): the design's target for the planner.
SLAB_SLACK = 1.15

STATS = """
    def stats(i=0):
        s = torch.remote.server_stats()
        return s, s["devices"][i]
"""


def _py(code, env, timeout=240, args=()):
    """Run code in a fresh interpreter; its stdout, or an assertion with its stderr."""
    p = subprocess.run(
        [PYTHON, "-c", textwrap.dedent(code), *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert p.returncode == 0, f"client failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p.stdout


def _run(code, endpoint, timeout=240, **env):
    out = _py(code, subprocess_env(DJINN_SERVER=endpoint, **env), timeout=timeout)
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    assert lines, out
    return json.loads(lines[-1])


@pytest.fixture
def srv():
    proc, ep = start_server("--lease-ms", "0")
    yield ep
    stop_server(proc)


def test_two_sessions_share_one_copy_of_the_weights(srv):
    """The second upload of the same bytes stores nothing new and sends no bytes."""
    code = """
    import json, sys, torch, djinn
    torch.manual_seed(0)
    w = torch.randn(512, 512)                    # 1 MiB: content-addressed
    a = w.to('remote'); torch.remote.synchronize()
    s = torch.remote.server_stats()
    print(json.dumps({"text_bytes": s["text_bytes"], "text_refs": s["text_refs"],
                      "dedup": djinn.bytes_moved()["dedup_bytes"], "sum": float(a.sum())}))
    sys.stdout.flush()
    sys.stdin.readline()                         # stay alive until told
    """
    env = subprocess_env(DJINN_SERVER=srv)
    first = subprocess.Popen(
        [PYTHON, "-c", textwrap.dedent(code)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        one = json.loads(first.stdout.readline())
        two = _run(code.replace("sys.stdin.readline()", "pass"), srv)
    finally:
        first.communicate("\n", timeout=60)
    assert one["text_bytes"] == 512 * 512 * 4 and one["dedup"] == 0
    assert two["text_bytes"] == one["text_bytes"], "the second session stored a second copy"
    assert two["text_refs"] == 2 and two["dedup"] == 512 * 512 * 4
    assert two["sum"] == one["sum"]


def test_in_place_write_is_invisible_to_the_other_session(srv):
    code = """
    import json, sys, torch, djinn
    torch.manual_seed(0)
    w = torch.randn(256, 256)
    a = w.to('remote')
    if sys.argv[-1] == "writer":
        a.mul_(2)                                # copy-on-write into this session's Data
    torch.remote.synchronize()
    print(json.dumps({"sum": float(a.sum()), "expect": float((w * (2 if sys.argv[-1] == "writer" else 1)).sum())}))
    """
    env = subprocess_env(DJINN_SERVER=srv)
    reader = subprocess.Popen(
        [
            PYTHON,
            "-c",
            textwrap.dedent(code).replace(
                "torch.remote.synchronize()", "torch.remote.synchronize(); sys.stdin.readline()"
            )
            + "\n",
            "reader",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        wr = json.loads(_py(code, env, timeout=120, args=["writer"]).strip().splitlines()[-1])
        out, _ = reader.communicate("\n", timeout=60)
    finally:
        if reader.poll() is None:
            reader.kill()
    rd = json.loads(out.strip().splitlines()[-1])
    assert wr["sum"] == pytest.approx(wr["expect"], rel=1e-5)
    assert rd["sum"] == pytest.approx(rd["expect"], rel=1e-5), (
        "the reader saw the writer's mutation"
    )


def test_identical_forward_hits_the_plan_cache_and_sends_no_graph(srv):
    r = _run(
        STATS
        + """
    import json, torch, djinn
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 8)).to('remote')
    x = torch.randn(4, 64).to('remote'); torch.remote.synchronize()
    def fwd():
        djinn.reset_bytes_moved()
        y = net(x).cpu()
        return y, djinn.bytes_moved()
    y1, c1 = fwd()
    y2, c2 = fwd()
    s, d = stats()
    print(json.dumps({"same": bool(torch.equal(y1, y2)), "sent1": c1["bytes_sent"], "sent2": c2["bytes_sent"],
                      "cached2": c2["plan_cache_sends"], "hits": s["plan_cache_hits"],
                      "hit_us": s["sched_us_hit_avg"], "miss_us": s["sched_us_miss_avg"]}))
    """,
        srv,
    )
    assert r["same"]
    assert r["cached2"] == 1 and r["hits"] >= 1
    assert r["sent2"] < r["sent1"] / 3, r  # bindings only: no nodes on the wire


def test_plan_cache_eviction_is_transparent():
    """Two fragments alternating through a one-entry plan cache evict each other: every
    run after an eviction is a resend, and each result equals CPU's."""
    proc, ep = start_server("--lease-ms", "0", "--plan-cache", "1")
    try:
        r = _run(
            """
        import json, torch, djinn
        torch.manual_seed(0)
        xc = torch.randn(8, 8)
        x = xc.to('remote')
        outs = []
        for i in range(3):                      # alternate two fragments through a 1-entry cache
            outs.append(float((x * 2).sum().cpu())); outs.append(float((x + 1).sum().cpu()))
        c = djinn.bytes_moved()
        print(json.dumps({"outs": outs, "resends": c["plan_cache_resends"],
                          "cpu": [float((xc * 2).sum()), float((xc + 1).sum())],
                          "again": float((x * 2).sum())}))
        """,
            ep,
        )
    finally:
        stop_server(proc)
    assert r["outs"][0::2] == [r["cpu"][0]] * 3, (r["outs"], r["cpu"])
    assert r["outs"][1::2] == [r["cpu"][1]] * 3, (r["outs"], r["cpu"])
    assert r["again"] == r["cpu"][0]  # after four evictions, the first fragment still agrees
    assert r["resends"] >= 1


# A two-layer Llama on CPU (`cpu`), its copy on the server (`m`) and a prompt (`p`).
_TINY_LLAMA = """
    import copy, json, torch, djinn
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=128, max_position_embeddings=64)
    cpu = LlamaForCausalLM(cfg).eval()
    m = copy.deepcopy(cpu).to('remote')
    p = torch.randint(0, 128, (1, 6))
"""

_PIPELINED_DECODE = _TINY_LLAMA + textwrap.indent(
    """
def decode(model, dev, steps=10):       # greedy, HF's default DynamicCache: shapes grow
    with torch.no_grad():
        out = model(p.to(dev), use_cache=True)
        toks = []
        for _ in range(steps):
            nxt = out.logits[:, -1:].argmax(-1)
            toks.append(int(nxt.item()))
            out = model(nxt.to(dev), past_key_values=out.past_key_values, use_cache=True)
        return toks, out.logits.cpu()

ref, ref_logits = decode(cpu, 'cpu')
got, logits = decode(m, 'remote')
c = djinn.bytes_moved()
print(json.dumps({"ref": ref, "got": got, "flushes": c["flushes"], "nodes": c["nodes"],
                  "close": torch.allclose(logits, ref_logits, rtol=1e-4, atol=1e-5),
                  "cached": c["plan_cache_sends"], "resends": c["plan_cache_resends"]}))
""",
    "    ",
)


def test_pipelined_decode_hits_the_plan_cache_piece_by_piece(srv):
    """With DJINN_PIPELINE_NODES a decode step leaves in pieces, unwaited, so the server
    runs one while the client captures the next; each piece is a plan-cache hit from the
    second step on, and the tokens are CPU's."""
    r = _run(_PIPELINED_DECODE, srv, DJINN_PIPELINE_NODES="16")
    assert r["got"] == r["ref"] and r["close"], r
    assert r["nodes"] / r["flushes"] <= 16, r  # pieces of at most 16 nodes
    assert r["cached"] >= r["flushes"] / 2, r  # most pieces went without their nodes
    assert r["resends"] == 0, r


def test_generate_sends_a_palette_per_token(srv):
    """Issue 11's decode, as users write it: HF's default generate() (greedy, batch 1,
    DynamicCache). From its fourth step on each piece of a step goes by pattern, so a
    token sends at most 512 bytes: the 12 tokens a longer generate() adds over a shorter
    one (same prompt, plan cache warm) cost at most 12 x 512 bytes. Before, the first
    piece of each step freed two handles more than the step that filed it and went with
    plain lists, about 1 KB a token. The tokens are CPU's."""
    code = _TINY_LLAMA + textwrap.indent(
        """
def gen(model, dev, n):
    with torch.no_grad():
        out = model.generate(p.to(dev), max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0].tolist()
gen(m, 'remote', 8)            # files the plan cache's entries, and refiles one (s_refile)
sent = []
for n in (12, 24):
    b0 = djinn.bytes_moved()["bytes_sent"]
    got = gen(m, 'remote', n)
    sent.append(djinn.bytes_moved()["bytes_sent"] - b0)
print(json.dumps({"ref": gen(cpu, 'cpu', 24), "got": got, "sent": sent}))
""",
        "    ",
    )
    r = _run(code, srv)
    assert r["got"] == r["ref"], r
    per_token = (r["sent"][1] - r["sent"][0]) / 12
    assert 0 < per_token <= 512, r


def test_a_decode_piece_carries_only_its_palette(srv, tmp_path):
    """From the third step on, each piece of a decode step is a GRAPH_CACHED of `fp`, `pal`
    and `pid` alone (7.4): the allocs and frees move by the pattern, the template and the
    semantics are the entry's. The tokens are CPU's, and the frees the pattern makes
    really free: a second decode leaves the session holding what the first left."""
    code = (
        STATS
        + _PIPELINED_DECODE
        + """
    def held():
        torch.ones(1, device='remote').cpu()   # carries the frees of what decode dropped
        return stats()[0]["session_bytes"]
    h1 = held(); again, _ = decode(m, 'remote'); h2 = held()
    print(json.dumps({"ref": ref, "got": got, "again": again, "h": [h1, h2]}))
    """
    )
    r = _run(code, srv, DJINN_PIPELINE_NODES="16", DJINN_RECORD_DIR=str(tmp_path))
    assert r["got"] == r["ref"] and r["again"] == r["ref"], r
    assert r["h"][1] == r["h"][0], r
    keys = {}
    for f in sorted(os.listdir(tmp_path)):
        data = (tmp_path / f).read_bytes()  # [nframes][len lo][len hi][header]...
        n = data[1] | data[2] << 8
        obj = msgpack.unpackb(data[3 : 3 + n], raw=False, strict_map_key=False)
        if obj["type"] == GRAPH_CACHED:
            body = obj["body"]
            form = "pid" if "pid" in body else "pat" if "pat" in body else "other"
            keys.setdefault(form, []).append(sorted(set(body) - {"fetch"}))
    assert len(keys.get("pid", [])) >= 20, keys.keys()
    assert all(k == ["fp", "pal", "pid"] for k in keys["pid"]), keys["pid"]
    assert all("tpl" in k for k in keys["pat"]), keys["pat"]


def test_pipelined_decode_survives_evictions(srv):
    """A two-entry plan cache evicts the pieces of a step while later pieces, sent without
    waiting, are in flight: the server refuses those until the evicted piece is resent
    (7.4), the client resends them all, and the tokens are still CPU's."""
    proc, ep = start_server("--lease-ms", "0", "--plan-cache", "2")
    try:
        r = _run(_PIPELINED_DECODE, ep, DJINN_PIPELINE_NODES="16")
    finally:
        stop_server(proc)
    assert r["got"] == r["ref"] and r["close"], r
    assert r["resends"] >= 1 and r["cached"] >= 1, r


def test_generate_keeps_the_kv_cache_in_data_and_close_returns_it(srv):
    r = _run(
        STATS
        + _TINY_LLAMA
        + """
    with torch.no_grad():
        out = m(p.to('remote'), use_cache=True)
        kv = out.past_key_values
        torch.remote.synchronize()
        s, d = stats()
        ref = cpu.generate(p, max_new_tokens=6, do_sample=False)
        gen = m.generate(p.to('remote'), max_new_tokens=6, do_sample=False).cpu()
    s2, d2 = stats()
    print(json.dumps({"session_bytes": s["session_bytes"], "data_used": d["data_used"],
                      "slab_in_use": d2["slab_in_use"], "slab_high": d2["slab_high_water"],
                      "planned": d2["planned_fragments"], "peak": d2["plan_peak_sum"],
                      "lb": d2["plan_lower_bound_sum"], "deferred": d2["slab_resets_deferred"],
                      "runs": d2["planned_runs"], "reserved": d2["plan_reserved_sum"],
                      "reached": d2["plan_high_water_sum"],
                      "same": bool(torch.equal(ref, gen))}))
    """,
        srv,
    )
    assert r["same"]
    kv_bytes = (
        2 * 2 * 1 * 2 * 6 * 16 * 4
    )  # layers x (k,v) x batch x kv heads x seq x head_dim x f32
    assert r["session_bytes"] >= kv_bytes, "the KV cache is not held in the session's Data segment"
    assert r["data_used"] >= r["session_bytes"]
    assert r["slab_in_use"] == 0 and r["deferred"] == 0, (
        "the slab was not reset after the fragments"
    )
    assert r["planned"] > 0 and r["slab_high"] > 0
    assert r["lb"] <= r["peak"], "a plan below the lower bound overlaps live tensors"
    # the plan is judged by what the executor reached, not by its own arithmetic: the slab
    # high-water of every planned run against the planned peaks of the same runs
    assert r["runs"] >= r["planned"] > 0
    assert 0 < r["reserved"] <= r["reached"], r
    # the client has exited: its session closed and its Data bytes went back
    poll(
        lambda: _server_private_bytes(srv) == 0,
        timeout=20,
        desc="Data bytes of closed sessions back to zero",
    )


def _server_private_bytes(ep):
    """Private bytes held by all sessions, as a fresh client (holding nothing) sees them."""
    out = _py(
        "import torch, djinn, json; s = torch.remote.server_stats(); print(json.dumps(s['bytes_in_use']))",
        subprocess_env(DJINN_SERVER=ep),
        timeout=60,
    )
    return json.loads(out.strip().splitlines()[-1])


def test_fragment_larger_than_the_slab_fails_clearly_and_the_session_continues():
    proc, ep = start_server("--lease-ms", "0", "--slab-bytes", str(1 << 20))
    try:
        r = _run(
            """
        import json, torch, djinn
        x = torch.randn(512, 512).to('remote')          # 1 MiB input, lives in Data
        err = ""
        try:
            y = (x @ x) @ x                              # intermediates need > 1 MiB of slab
            y = torch.cat([y, y, y, y]).sum()
            float(y)
        except djinn.RemoteError as e:
            err = str(e)
        ok = float((torch.ones(4, device='remote') * 3).sum())   # the session keeps working
        print(json.dumps({"err": err, "ok": ok}))
        """,
            ep,
        )
    finally:
        stop_server(proc)
    assert "stack slab" in r["err"] and "out of memory" in r["err"], r["err"]
    assert r["ok"] == 12.0


@pytest.mark.xfail(
    strict=True,
    reason="the executor does not place kernels' outputs at their planned offsets: ATen "
    "allocates a functional op's result itself, above the planned region. Directing that "
    "allocation to the planned slot gives wrong tokens, because the planner's lifetimes "
    "ignore aliasing (a view keeps its base's storage alive past the base's last use); "
    "the fix needs alias-aware lifetimes. Strict: this turns red once the plan is used.",
)
def test_executor_reaches_the_planned_slab_peak(srv):
    r = _run(
        """
    import copy, json, torch, djinn
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=128, max_position_embeddings=64)
    cpu = LlamaForCausalLM(cfg).eval()
    m = copy.deepcopy(cpu).to('remote')
    p = torch.randint(0, 128, (1, 6))
    d0 = torch.remote.server_stats()["devices"][0]
    with torch.no_grad():
        ref = cpu.generate(p, max_new_tokens=6, do_sample=False)
        gen = m.generate(p.to('remote'), max_new_tokens=6, do_sample=False).cpu()
    d = torch.remote.server_stats()["devices"][0]
    print(json.dumps({"same": bool(torch.equal(ref, gen)),
                      "reserved": d["plan_reserved_sum"] - d0["plan_reserved_sum"],
                      "reached": d["plan_high_water_sum"] - d0["plan_high_water_sum"]}))
    """,
        srv,
    )
    assert r["same"]
    assert 0 < r["reserved"] <= r["reached"] <= SLAB_SLACK * r["reserved"], (
        f"the executor reached {r['reached']} B of slab where the plans said {r['reserved']} B "
        f"({r['reached'] / r['reserved']:.2f}x)"
    )
