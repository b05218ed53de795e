"""The GPU half (issue 15), on a machine with a CUDA device; skipped cleanly without one.

Nothing here has run yet (README, "What has run on a GPU"). What it checks there:

- a server on ``cuda:0`` (built against the CUDA torch, so every ATen CUDA allocation
  goes through the device VMU arena, ``server/djn_dvmu.c``) computes what the CPU
  computes, through allocation churn and frees, and keeps serving;
- the same with ``DJINN_CUDA_ALLOCATOR=caching`` (ATen's allocator), the escape hatch;
- the arena as ``torch.cuda.memory.CUDAPluggableAllocator`` (``benchmarks/vmu_alloc.c``)
  in a plain torch process: results equal the CPU's across two streams, and the Data
  segment is empty again once the tensors are gone.

Without a GPU, one test runs: ``make bench-gpu``'s GPU rows skip cleanly (status 0).
"""

import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, run_python, start_server, stop_server, subprocess_env

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CLIENT = r"""
import torch, djinn
torch.manual_seed(0)
a, b = torch.randn(256, 512), torch.randn(512, 128)
for i in range(50):  # churn the Data heap: sizes grow, old results are dropped
    x = torch.randn(64 + 16 * i, 128)
    r = (x.to('remote') @ b.to('remote').T).softmax(-1).cpu()
    assert torch.allclose(r, (x @ b.T).softmax(-1), atol=1e-4), i
y = (a.to('remote') @ b.to('remote')).relu().sum(0).cpu()
assert torch.allclose(y, (a @ b).relu().sum(0), rtol=1e-3, atol=1e-3)
print("ok")
"""


@gpu
@pytest.mark.parametrize("allocator", ["vmu", "caching"])
def test_server_on_cuda_matches_cpu(allocator):
    env = subprocess_env(
        DJINN_CUDA_ALLOCATOR="caching" if allocator == "caching" else None,
        DJINN_CUDA_DATA_BYTES=1 << 30,
        DJINN_CUDA_SLAB_BYTES=1 << 27,
    )
    proc, ep = start_server("--device", "cuda:0", "--lease-ms", "0", env=env)
    try:
        r = run_python(CLIENT, subprocess_env(DJINN_SERVER=ep), timeout=300)
        assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
        assert proc.poll() is None  # still serving
    finally:
        stop_server(proc)


PLUGGABLE = r"""
import ctypes, sys, torch
so = sys.argv[1]
torch.cuda.memory.change_current_allocator(
    torch.cuda.memory.CUDAPluggableAllocator(so, "djn_vmu_alloc", "djn_vmu_free"))
torch.manual_seed(0)
a, b = torch.randn(300, 200), torch.randn(200, 100)
side = torch.cuda.Stream()
outs = []
for i in range(20):
    with torch.cuda.stream(side if i % 2 else torch.cuda.current_stream()):
        x = a.cuda() @ b.cuda()
        outs.append((x * i).cpu())
torch.cuda.synchronize()
for i, o in enumerate(outs):
    assert torch.allclose(o, (a @ b) * i, rtol=1e-3, atol=1e-3), i
del x, outs
torch.cuda.synchronize()
lib = ctypes.CDLL(so)
st = (ctypes.c_uint64 * 3)()
assert lib.djn_vmu_data_stats(0, st) == 0
print("used", st[0], "capacity", st[1])
"""


@gpu
def test_vmu_as_pluggable_allocator(tmp_path):
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    import gpu_bench

    so = gpu_bench.build_vmu_so(str(tmp_path))
    assert os.path.exists(so), so
    env = dict(os.environ, DJINN_CUDA_DATA_BYTES=str(1 << 28), DJINN_CUDA_SLAB_BYTES=str(1 << 24))
    r = subprocess.run(
        [sys.executable, "-c", PLUGGABLE, so],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    used = int(r.stdout.split()[1])
    assert used < 1 << 20  # what is left: a cuBLAS workspace at most


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machines without a GPU")
def test_gpu_bench_skips_without_gpu(tmp_path):
    r = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", "gpu_bench.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "no CUDA device here" in r.stdout
    assert not os.listdir(tmp_path)  # no results file claims a GPU run
