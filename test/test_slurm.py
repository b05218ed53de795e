"""deploy/slurm/djinn.sbatch with stand-ins for Slurm's commands, run on this machine.

``srun``, ``scontrol`` and ``hostname`` on PATH are shims: ``scontrol show hostnames``
prints the fake nodes, ``srun`` runs one copy of its command per task locally (with
SLURM_PROCID, SLURM_NODEID and SLURMD_NODENAME set, SIGTERM forwarded, and
--kill-on-bad-exit honoured) and logs its arguments, ``hostname`` prints 127.0.0.1 so the
advertised endpoints are reachable on loopback. The script, the servers and the job's
command are the real ones.
"""

import json
import os
import subprocess
import textwrap

import pytest
from conftest import PYTHON, REPO, SERVER_BIN, subprocess_env
from deploy_util import port_closed

SCRIPT = os.path.join(REPO, "deploy", "slurm", "djinn.sbatch")

SRUN = textwrap.dedent("""\
    #!{python}
    import json, os, signal, subprocess, sys
    args = sys.argv[1:]
    opts = {{}}
    while args and args[0].startswith("-"):
        k, _, v = args.pop(0).partition("=")
        opts[k] = v
    with open(os.environ["FAKE_SRUN_LOG"], "a") as f:
        f.write(json.dumps({{"opts": opts, "cmd": args[:1]}}) + "\\n")
    nodes = os.environ["FAKE_SLURM_NODES"].split()
    ntasks = int(opts.get("--ntasks") or opts.get("--nodes") or 1)
    procs = []
    for i in range(ntasks):
        env = dict(os.environ, SLURM_PROCID=str(i), SLURM_NODEID=str(i),
                   SLURMD_NODENAME=nodes[i % len(nodes)])
        procs.append(subprocess.Popen(args, env=env))
    def forward(sig, _frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(sig)
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    rc = 0
    pending = list(procs)
    while pending:
        pid, status = os.wait()
        for p in pending:
            if p.pid == pid:
                pending.remove(p)
                p.returncode = os.waitstatus_to_exitcode(status)
                rc = max(rc, abs(p.returncode))
                if p.returncode and opts.get("--kill-on-bad-exit") == "1":
                    forward(signal.SIGTERM, None)
    sys.exit(rc)
""")

PAYLOAD = """
import json, os, sys
sys.path.insert(0, os.environ["DEPLOY_TEST_DIR"])
from deploy_util import stats
eps = os.environ["DJINN_SERVER"].split(",")
print("PAYLOAD " + json.dumps({ep: stats(ep)["body"]["uptime_ms"] for ep in eps}), flush=True)
import torch, djinn   # one client over the exported list: a device per server
n = torch.remote.device_count()
sums = [(torch.ones(2, device=f"remote:{i}") * i).sum().item() for i in range(n)]
print("CLIENT " + json.dumps([n, sums, [s["endpoint"] for s in djinn.remote.servers()]]), flush=True)
sys.exit(3)
"""


@pytest.fixture
def slurm(tmp_path):
    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "srun").write_text(SRUN.format(python=PYTHON))
    (shims / "scontrol").write_text(
        '#!/bin/bash\n[ "$1 $2" = "show hostnames" ] && [ "$3" = "$SLURM_JOB_NODELIST" ] '
        "|| exit 2\nfor n in $FAKE_SLURM_NODES; do echo $n; done\n"
    )
    (shims / "hostname").write_text("#!/bin/sh\necho 127.0.0.1\n")
    for f in shims.iterdir():
        f.chmod(0o755)

    def run(nodes, *command, timeout=120, **env):
        e = subprocess_env(
            **{
                "PATH": f"{shims}:{os.environ['PATH']}",
                "SLURM_JOB_ID": "42",
                "SLURM_JOB_NODELIST": f"node[1-{len(nodes)}]",
                "FAKE_SLURM_NODES": " ".join(nodes),
                "FAKE_SRUN_LOG": tmp_path / "srun.log",
                "DJINN_SERVER_BIN": SERVER_BIN,
                "DJINN_LISTEN_HOST": "127.0.0.1",
                "DJINN_SERVER_FLAGS": "--device cpu",
                "DJINN_START_TIMEOUT": 60,
                "DEPLOY_TEST_DIR": os.path.dirname(__file__),
                **env,
            }
        )
        return subprocess.run(
            ["bash", SCRIPT, *command],
            env=e,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    run.log = tmp_path / "srun.log"
    return run


def test_one_server_per_node_listed_for_the_job_and_stopped_after(slurm, tmp_path):
    eps_file = tmp_path / "endpoints"
    r = slurm(["gpu1", "gpu2", "gpu3"], PYTHON, "-c", PAYLOAD, DJINN_ENDPOINTS_FILE=eps_file)
    assert r.returncode == 3, r.stdout + r.stderr  # the job's command's exit code
    (line,) = [ln for ln in r.stdout.splitlines() if ln.startswith("PAYLOAD ")]
    uptimes = json.loads(line[len("PAYLOAD ") :])
    # three servers, three endpoints advertised with the node's hostname, each answering
    assert len(uptimes) == 3
    assert all(ep.startswith("tcp://127.0.0.1:") for ep in uptimes)
    assert eps_file.read_text().strip() == ",".join(uptimes)
    assert f"djinn: 3 servers: {','.join(uptimes)}" in r.stdout
    # the job's command used all three through one client (DJINN_SERVER with commas)
    (client,) = [ln for ln in r.stdout.splitlines() if ln.startswith("CLIENT ")]
    assert json.loads(client[len("CLIENT ") :]) == [3, [0.0, 2.0, 4.0], list(uptimes)]
    # one step, one task per node, overlapping the job's other steps
    (step,) = [json.loads(x) for x in slurm.log.read_text().splitlines()]
    assert step["cmd"] == ["bash"]
    for opt, val in (
        ("--overlap", ""),
        ("--nodes", "3"),
        ("--ntasks", "3"),
        ("--ntasks-per-node", "1"),
        ("--kill-on-bad-exit", "1"),
    ):
        assert step["opts"].get(opt) == val, (opt, step["opts"])
    # the servers stopped before the job did
    for ep in uptimes:
        assert port_closed(ep), ep


def test_a_server_that_cannot_start_fails_the_job_before_its_command(slurm, tmp_path):
    marker = tmp_path / "ran"
    r = slurm(["gpu1", "gpu2"], "touch", str(marker), DJINN_SERVER_FLAGS="--no-such-flag")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "did not start" in r.stderr
    assert "of 2 servers started" in r.stderr
    assert not marker.exists()
