"""The benchmark suite runs end to end: ``benchmarks/run.py --smoke`` in a fresh process.

It checks the shape of what the suite writes (JSON with numbers for every system each row
measured, a markdown table, PNG charts), never a time: benchmarks compare, tests check
that they run. The subprocess gets its own embedded server (``DJINN_SERVER`` unset), as
``make bench`` does.
"""

import glob
import json
import math
import os
import subprocess

import pytest

from conftest import PYTHON, REPO, subprocess_env

GROUPS = {"micro", "bandwidth", "small", "transformer", "large", "multitenant"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    r = subprocess.run(
        [PYTHON, os.path.join(REPO, "benchmarks", "run.py"), "--smoke", "--out", str(out)],
        env=subprocess_env(DJINN_SERVER=None),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
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
    assert {"local", "djinn", "rpc", "naive"} <= set(res["systems"]), (
        res["systems"],
        res["skipped"],
    )
    assert {r["group"] for r in res["rows"]} == GROUPS
    seen = set()
    for r in res["rows"]:
        assert isinstance(r["name"], str) and r["name"] and isinstance(r["unit"], str), r
        assert r["better"] in ("lower", "higher"), r
        assert "djinn" in r["systems"] and len(r["systems"]) >= 2, r
        for s in r["systems"]:
            v = r["values"][s]
            assert isinstance(v, (int, float)) and math.isfinite(v) and v >= 0, (r["name"], s, v)
            seen.add(s)
        for other in ("local", "rpc", "naive"):
            q = r["ratios"][f"djinn/{other}"]
            if other in r["systems"] and r["values"][other] > 0:
                assert isinstance(q, float) and math.isfinite(q), (r["name"], other, q)
        assert r["target_met"] in (True, False, None)
        if r["target_met"] is not None:
            assert r["target"], r
    assert seen == {"local", "djinn", "rpc", "naive"}
    # the baselines ran the shared workloads, not just one row each
    for s in ("rpc", "naive"):
        groups = {r["group"] for r in res["rows"] if s in r["systems"]}
        assert {"micro", "bandwidth", "small", "transformer", "large"} <= groups, (s, groups)


@pytest.mark.slow
def test_smoke_writes_markdown_and_charts(smoke):
    out, stdout = smoke
    with open(glob.glob(os.path.join(out, "*-smoke.json"))[0]) as f:
        res = json.load(f)
    md = os.path.join(out, "RESULTS-smoke.md")
    assert os.path.exists(md), os.listdir(out)
    text = open(md).read()
    assert "| workload | unit | local | djinn | rpc | naive |" in text
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
