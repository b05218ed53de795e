"""djinn.ray on a real local Ray cluster (one node, loopback only, started by the test).

The node declares one GPU (``num_gpus=1``): Ray schedules on it as on a GPU node and
sets CUDA_VISIBLE_DEVICES, and the server, finding no CUDA device in this CPU build of
torch, runs on the CPU. That exercises the default mode (one server per GPU node, all
its GPUs); the CPU-only mode (``num_gpus=0``) runs on the same cluster.

One driver process does it all (a Ray cluster takes seconds to start): CPU servers,
a client computing on one, ``stop()``; then default-mode servers left running when
the driver exits, which must stop with the job.
"""

import json

import pytest
from conftest import run_python, subprocess_env
from deploy_util import port_closed, wait_gone

pytestmark = pytest.mark.slow

DRIVER = r"""
import json, os, subprocess, sys, time
import ray
import djinn.ray
from deploy_util import stats, wait_gone

ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, object_store_memory=100 << 20,
         log_to_driver=False)
assert [n["NodeManagerAddress"] for n in ray.nodes()] == ["127.0.0.1"], ray.nodes()
report = {}

try:
    djinn.ray.start_servers(num_gpus=2)
except RuntimeError as e:
    report["too_many_gpus"] = str(e)

# CPU-only mode: a client computes on the server, then stop()
cpu = djinn.ray.start_servers(num_gpus=0, server_args=["--lease-ms", "0"])
env = dict(os.environ, **cpu.env())
r = subprocess.run([sys.executable, "-c",
                    "import torch, djinn; x = torch.arange(4.0).to('remote');"
                    "print((x * x).sum().item())"], env=env, capture_output=True, text=True,
                   timeout=120)
report["cpu"] = {"endpoints": cpu.endpoints, "infos": cpu.infos, "client": r.stdout.strip(),
                 "client_err": r.stderr[-2000:],
                 "devices": [d["name"] for d in stats(cpu.endpoints[0])["body"]["devices"]],
                 "sessions_opened": stats(cpu.endpoints[0])["body"]["sessions_opened"]}
report["cpu"]["stop_codes"] = cpu.stop()
wait_gone([i["pid"] for i in cpu.infos])

# default mode: one server per GPU node with all its GPUs; left running at exit
gpu = djinn.ray.start_servers()
h = stats(gpu.endpoints[0])
report["gpu"] = {"endpoints": gpu.endpoints, "infos": gpu.infos, "answers": h["type"] == 64,
                 "alive": gpu.alive()}
print("REPORT " + json.dumps(report), flush=True)
"""


def test_one_server_per_node_cpu_and_gpu_modes_stopped_with_the_job():
    # loopback only: Ray's single-machine mode (no cluster: the node address is 127.0.0.1),
    # no usage reporting
    env = subprocess_env(
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0,
        RAY_USAGE_STATS_ENABLED=0,
        RAY_DISABLE_DOCKER_CPU_WARNING=1,
        DJINN_CONNECT_TIMEOUT=30,
        DJINN_TIMEOUT=60,
    )
    env["PYTHONPATH"] = env["PYTHONPATH"] + ":" + __import__("os").path.dirname(__file__)
    r = run_python(DRIVER, env, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    (line,) = [ln for ln in r.stdout.splitlines() if ln.startswith("REPORT ")]
    rep = json.loads(line[len("REPORT ") :])

    assert "no alive Ray node has 2 GPUs" in rep["too_many_gpus"]

    cpu = rep["cpu"]
    assert len(cpu["endpoints"]) == 1 and cpu["endpoints"][0].startswith("tcp://127.0.0.1:")
    assert cpu["client"] == "14.0", cpu["client_err"]
    assert cpu["sessions_opened"] == 1
    assert cpu["devices"] == ["cpu"]
    assert cpu["stop_codes"] == [0]  # SIGTERM: a clean stop
    assert cpu["infos"][0]["cuda_visible_devices"] in (None, "")  # asked for no GPU

    gpu = rep["gpu"]
    assert gpu["answers"] and gpu["alive"] == [True]
    assert gpu["infos"][0]["cuda_visible_devices"] == "0"  # Ray gave it the node's GPU
    assert gpu["endpoints"] != cpu["endpoints"]
    # the driver exited without stop(): the server stops with the job
    wait_gone([i["pid"] for i in gpu["infos"]], timeout=60)
    assert port_closed(gpu["endpoints"][0])
