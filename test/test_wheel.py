"""The wheel: `make wheel`, then `pip install` into a fresh venv (torch first, as a user
does), and the README's ten-line example runs there with the wheel's embedded server.

No compiler is involved on the target: the wheel carries djinn._C, the djinn-server
binary and the C libraries they need (djinn.libs/); torch comes from the venv. The venv
is outside the repository and runs with a clean environment, so nothing of the build
tree can be picked up by accident.
"""

import glob
import os
import re
import subprocess
import sys

import pytest
from conftest import REPO
from deploy_util import read_line

pytestmark = pytest.mark.slow


def _ten_lines():
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    section = readme[readme.index("## Ten lines") :]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    r = subprocess.run(
        ["make", "-s", "wheel"], cwd=REPO, capture_output=True, text=True, timeout=900, check=False
    )
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = glob.glob(os.path.join(REPO, "dist", "djinn-*.whl"))
    root = tmp_path_factory.mktemp("fresh")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJINN_", "PYTHON"))}
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=120)
    pip = [str(root / "venv" / "bin" / "python"), "-m", "pip", "install", "-q"]
    for what in (["torch==2.13.0"], [wheel + "[exporter]"]):
        r = subprocess.run(
            pip + what, cwd=root, env=env, capture_output=True, text=True, timeout=600, check=False
        )
        assert r.returncode == 0, r.stderr
    return root, env


def test_ten_line_example_runs_from_the_installed_wheel(venv):
    root, env = venv
    py = str(root / "venv" / "bin" / "python")
    (root / "ten.py").write_text(_ten_lines())
    r = subprocess.run(
        [py, "ten.py"], cwd=root, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert re.fullmatch(r"tensor\(\[(\d, ){7}\d\]\)", lines[0]), lines
    assert "'fetch_bytes': 64" in lines[1], lines  # 8 int64 argmax results fetched
    assert "aten::addmm" in lines[2], lines
    # the package and its server come from the venv, not from the build tree
    where = subprocess.run(
        [py, "-c", "import djinn; print(djinn.__file__, djinn._server_binary())"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    site = str(root / "venv" / "lib")
    assert where.stdout.split()[0].startswith(site) and where.stdout.split()[1].startswith(site)


def test_installed_server_finds_bundled_libraries_and_torch(venv):
    root, _env = venv
    (binary,) = glob.glob(
        str(root / "venv" / "lib" / "python*" / "site-packages" / "djinn" / "bin" / "djinn-server")
    )
    ldd = subprocess.run(
        ["ldd", binary], capture_output=True, text=True, timeout=60, check=False
    ).stdout
    assert "not found" not in ldd, ldd
    libs = dict(re.findall(r"^\s*(\S+) => (\S+)", ldd, re.MULTILINE))
    for name in ("libzmq", "libmsgpackc", "libxxhash", "libsodium"):
        (path,) = [p for n, p in libs.items() if n.startswith(name)]
        assert "/djinn.libs/" in path, (name, path)
    for name in ("libtorch.so", "libc10.so"):
        assert libs[name].startswith(str(root / "venv")), libs[name]


def test_console_scripts_start_and_scrape_a_server(venv):
    root, env = venv
    bindir = root / "venv" / "bin"
    r, w = os.pipe()
    server = subprocess.Popen(
        [
            str(bindir / "djinn-server"),
            "--listen",
            "tcp://127.0.0.1:*",
            "--device",
            "cpu",
            "--announce-fd",
            str(w),
        ],
        pass_fds=(w,),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(w)
    try:
        with os.fdopen(r, "rb") as announce:
            ep = read_line(announce, 60, "DJINN_ENDPOINT ", "the server's endpoint").split()[1]
        # the launcher exec'd the binary: the process we started is the server itself
        assert os.readlink(f"/proc/{server.pid}/exe").endswith("/djinn/bin/djinn-server")
        once = subprocess.run(
            [str(bindir / "djinn-exporter"), "--once", "--server", ep],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert once.returncode == 0, once.stderr
        assert f'djinn_up{{server="{ep}"}} 1.0' in once.stdout
    finally:
        server.terminate()
        assert server.wait(30) == 0
