"""The benchmark suite runs end to end: ``benchmarks/run.py --smoke`` in a fresh process.

It checks what the suite writes (JSON with numbers for every system each row measured, a
markdown table, PNG charts) and that each number is plausible: every value measured, in a
range its unit allows, every ratio finite and positive, djinn's decode bytes below a full
return, computed values labelled. It never compares a time with a target: benchmarks
compare, tests check that what they report could be true. The subprocess gets its own embedded server (``DJINN_SERVER`` unset), as
``make bench`` does.
"""

import glob
import json
import math
import os
import subprocess

import pytest

from conftest import PYTHON, REPO, subprocess_env

GROUPS = {"micro", "bandwidth", "security", "small", "transformer", "large", "multitenant"}
SYSTEMS = {"local", "djinn", "rpc", "naive", "zmq"}

# What a number in each unit can be on any machine this suite runs on: a value outside is
# a broken measurement (a zero, a unit slip, a timer read twice), not a slow machine.
PLAUSIBLE = {
    "us": (0.01, 1e6),  # a round trip or an op: 10 ns .. 1 s
    "us/op": (0.01, 1e5),
    "ms": (1e-4, 6e5),  # a transfer or a forward: 100 ns .. 10 min
    "ms/GiB": (1e-3, 1e5),  # zeroing: a TB/s .. 10 MB/s
    "bytes": (1, 1e10),
    "MB": (1e-3, 1e5),
    "tok/s": (1e-2, 1e7),
}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    r = subprocess.run(
        [PYTHON, os.path.join(REPO, "benchmarks", "run.py"), "--smoke", "--out", str(out)],
        env=subprocess_env(DJINN_SERVER=None),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=480,
    )
    assert r.returncode == 0, (
        f"run.py --smoke exited {r.returncode}\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    )
    return out, r.stdout


@pytest.mark.slow
def test_smoke_writes_well_formed_json(smoke):
    out, _ = smoke
    paths = glob.glob(os.path.join(out, "*-smoke.json"))
    assert len(paths) == 1, os.listdir(out)
    with open(paths[0]) as f:
        res = json.load(f)
    for key in (
        "machine",
        "date",
        "mode",
        "server_device",
        "local_device",
        "torch",
        "systems",
        "rows",
        "errors",
        "skipped",
        "charts",
        "series",
    ):
        assert key in res, key
    assert res["mode"] == "smoke"
    assert res["errors"] == {}, res["errors"]
    assert SYSTEMS <= set(res["systems"]), (
        res["systems"],
        res["skipped"],
    )
    assert {r["group"] for r in res["rows"]} == GROUPS
    seen = set()
    for r in res["rows"]:
        assert isinstance(r["name"], str) and r["name"] and isinstance(r["unit"], str), r
        assert r["better"] in ("lower", "higher"), r
        assert "djinn" in r["systems"] and len(r["systems"]) >= 2, r
        lo, hi = PLAUSIBLE[r["unit"]]
        for s in r["systems"]:
            v = r["values"][s]
            assert isinstance(v, float) and math.isfinite(v), (r["name"], s, v)
            assert lo <= v <= hi, f"{r['name']}: {s} = {v} {r['unit']} outside [{lo}, {hi}]"
            seen.add(s)
        for s in set(SYSTEMS) - set(r["systems"]):
            assert r["values"][s] is None, (r["name"], s)
        for other in SYSTEMS - {"djinn"}:
            q = r["ratios"][f"djinn/{other}"]
            if other in r["systems"]:
                assert isinstance(q, float) and math.isfinite(q) and q > 0, (r["name"], other, q)
                assert q == pytest.approx(r["values"]["djinn"] / r["values"][other]), r["name"]
            else:
                assert q is None, (r["name"], other, q)
        assert set(r["computed"]) <= set(r["systems"]), r["name"]
        if r["target"] and "informational" not in r["target"]:
            assert r["target_met"] in (True, False), r  # every value it needs was measured
        else:
            assert r["target_met"] is None, r
    assert seen == SYSTEMS
    # the baselines ran the shared workloads, not just one row each
    for s in ("rpc", "naive"):
        groups = {r["group"] for r in res["rows"] if s in r["systems"]}
        assert {"micro", "bandwidth", "small", "transformer", "large"} <= groups, (s, groups)


def _row(res, pred):
    rows = [r for r in res["rows"] if pred(r)]
    assert len(rows) == 1, [r["name"] for r in res["rows"]]
    return rows[0]


@pytest.mark.slow
def test_smoke_numbers_say_what_they_claim(smoke):
    """The relations a reader draws from the table hold in what was measured."""
    out, _ = smoke
    with open(glob.glob(os.path.join(out, "*-smoke.json"))[0]) as f:
        res = json.load(f)
    # djinn's decode step moves less than returning every output (logits + KV) would
    b = _row(res, lambda r: r["group"] == "transformer" and "bytes moved per decode" in r["name"])
    full = b["extra"]["full_return_bytes_per_step"]
    assert 0 < b["extra"]["djinn_sent_per_step"] < b["values"]["djinn"] < full, b
    assert 0 < b["extra"]["djinn_reduction_vs_full_return"] < 1
    assert b["extra"]["djinn_reduction_vs_full_return"] == pytest.approx(
        1 - b["values"]["djinn"] / full
    )
    for s in ("rpc", "naive"):  # the baselines send the KV cache both ways
        assert b["values"][s] > b["values"]["djinn"], (s, b["values"])
    assert all(b["extra"]["tokens_match_local"].values()), b["extra"]["tokens_match_local"]
    # what djinn sends per step (the plan-cache hit) is the row above's sent part, and
    # less than what the baselines send (token and the whole KV cache)
    sent = _row(res, lambda r: r["group"] == "transformer" and "bytes sent per decode" in r["name"])
    assert sent["values"]["djinn"] == pytest.approx(b["extra"]["djinn_sent_per_step"])
    for s in ("rpc", "naive"):
        assert sent["values"][s] > sent["values"]["djinn"], (s, sent["values"])
    # HF's default generate() runs too, locally and on djinn, with the same tokens, and
    # sends a fraction of what a baseline sends per step
    gp = _row(res, lambda r: "default generate() per-token p50" in r["name"])
    assert set(gp["systems"]) == {"local", "djinn"} and gp["extra"]["tokens_match_local"], gp
    assert gp["values"]["djinn"] > 0 and gp["values"]["local"] > 0, gp
    gs = _row(res, lambda r: "default generate() bytes sent per token" in r["name"])
    assert 0 < gs["values"]["djinn"] < sent["values"]["rpc"], (gs["values"], sent["values"])
    # the wire's floor is in the round trip and in every transfer, over djinn's transport
    rtt = _row(res, lambda r: r["name"] == "1-op round trip x.add(1).item()")
    assert "zmq" in rtt["systems"] and rtt["extra"]["zmq_transport"] in ("ipc", "tcp")
    for r in res["rows"]:
        if r["group"] == "bandwidth":
            assert {"local", "djinn", "rpc", "naive", "zmq"} == set(r["systems"]), r["name"]
            for s, gbs in r["extra"]["GB/s"].items():
                assert gbs == pytest.approx(r["extra"]["bytes"] / r["values"][s] / 1e6), (r, s)
    # CURVE on and off, side by side, with the cost as their ratio
    sec = [r for r in res["rows"] if r["group"] == "security" and "CURVE on" in r["name"]]
    assert len(sec) == 3, [r["name"] for r in res["rows"] if r["group"] == "security"]
    for r in sec:
        off = _row(res, lambda x: x["name"] == r["name"].replace("CURVE on", "CURVE off"))
        assert set(off["systems"]) == set(r["systems"]) == {"djinn", "zmq"}, r
        assert all(r["extra"]["curve_off"][s] == off["values"][s] for s in ("djinn", "zmq"))
        for s in ("djinn", "zmq"):
            assert r["extra"]["curve_cost"][s] == pytest.approx(r["values"][s] / off["values"][s])
    # zeroing: the server's own counters saw the freed blocks
    scrub = [r for r in res["rows"] if r["unit"] == "ms/GiB"]
    assert len(scrub) == 2
    for r in scrub:
        assert r["extra"]["scrub_bytes"] >= r["extra"]["block_bytes"] * r["extra"]["blocks"], r
        assert r["extra"]["scrub_ns"] > 0, r
    # a computed value is labelled in the JSON and in the table
    held = _row(res, lambda r: "weights held" in r["name"])
    assert "local" in held["computed"], held
    assert held["values"]["local"] == pytest.approx(
        held["extra"]["tenants"] * held["extra"]["model_bytes"] / 1e6
    )
    md = open(os.path.join(out, "RESULTS-smoke.md")).read()
    line = next(x for x in md.splitlines() if x.startswith(f"| {held['name']} |"))
    assert " †" in line, line
    assert "is computed, not measured" in md


@pytest.mark.slow
def test_smoke_writes_markdown_and_charts(smoke):
    out, stdout = smoke
    with open(glob.glob(os.path.join(out, "*-smoke.json"))[0]) as f:
        res = json.load(f)
    md = os.path.join(out, "RESULTS-smoke.md")
    assert os.path.exists(md), os.listdir(out)
    text = open(md).read()
    assert "| workload | unit | local | djinn | rpc | naive | zmq |" in text
    for r in res["rows"]:
        assert f"| {r['name']} |" in text, r["name"]
        assert r["name"][:40] in stdout  # the printed table has every row too
    pngs = glob.glob(os.path.join(out, "*.png"))
    assert pngs, os.listdir(out)
    assert sorted(os.path.basename(p) for p in pngs) == sorted(res["charts"])
    for p in pngs:
        assert p.endswith("-smoke.png"), p  # git-ignored names
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", p
    # smoke mode never touches the committed results
    assert not os.path.exists(os.path.join(out, "RESULTS.md"))
