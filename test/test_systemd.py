"""deploy/systemd: the units name what the wheel installs and the files make_secrets.py
writes, and their commands, expanded as systemd expands them, start the real server
and exporter, with JSON logs, drained by SIGTERM within TimeoutStopSec.

systemd itself is not run (no init system in a test); ``expand`` follows systemd.service(5):
``${VAR}`` is one word, ``$VAR`` alone in a word splits on whitespace.
"""

import configparser
import json
import os
import re
import shlex
import signal
import subprocess

from conftest import PYTHON, REPO, SERVER_BIN, free_port, subprocess_env
from deploy_util import make_secrets, parse, read_line

UNITS = os.path.join(REPO, "deploy", "systemd")


def _unit(name):
    cp = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    cp.optionxform = str
    with open(os.path.join(UNITS, name)) as f:
        cp.read_file(f)
    return cp


def _env_file(path):
    env = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                k, _, v = line.partition("=")
                env[k] = v
    return env


def _environment(unit):
    """Environment= lines of [Service] (several lines: read them all)."""
    env = {}
    with open(os.path.join(UNITS, unit)) as f:
        for line in f:
            if line.startswith("Environment="):
                for item in shlex.split(line[len("Environment=") :]):
                    k, _, v = item.partition("=")
                    env[k] = v
    return env


def expand(cmdline, env):
    words = []
    for w in shlex.split(cmdline):
        m = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", w)
        if m:
            words += env.get(m.group(1), "").split()
        else:
            words.append(
                re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m.group(1), ""), w)
            )
    return words


def test_units_name_the_installed_scripts_and_the_generated_key_files(tmp_path):
    server, exporter = _unit("djinn-server.service"), _unit("djinn-exporter.service")
    sbin = shlex.split(server["Service"]["ExecStart"])[0]
    ebin = shlex.split(exporter["Service"]["ExecStart"])[0]
    # the wheel installs exactly these two commands into the venv's bin/
    assert sbin.endswith("/venv/bin/djinn-server") and ebin == sbin.replace(
        "djinn-server", "djinn-exporter"
    )
    with open(os.path.join(REPO, "pyproject.toml")) as f:
        assert 'djinn-exporter = "djinn.exporter:main"' in f.read()
    with open(os.path.join(REPO, "setup.py")) as f:
        assert '"deploy/wheel/djinn-server"' in f.read()
    # stop: SIGTERM (drain), bounded
    assert server["Service"]["KillSignal"] == "SIGTERM"
    assert int(server["Service"]["TimeoutStopSec"]) >= 30
    # the drain ends before systemd's SIGKILL, with room for the process to exit
    drain = int(_env_file(os.path.join(UNITS, "djinn-server.env"))["DJINN_DRAIN_TIMEOUT"])
    assert 0 < drain <= int(server["Service"]["TimeoutStopSec"]) - 10
    # the exporter's certificates are where make_secrets.py --keys-dir puts them when
    # DIR/exporter is copied to /etc/djinn/exporter, and the server's keys dir is DIR/server
    make_secrets.make("djinn", [], [], keys_dir=str(tmp_path))
    env = _environment("djinn-exporter.service")
    for var in ("DJINN_CLIENT_CERT", "DJINN_SERVER_CERT"):
        path = env[var]
        assert path.startswith("/etc/djinn/exporter/")
        assert (tmp_path / "exporter" / os.path.basename(path)).exists(), path
    keys = expand(server["Service"]["ExecStart"], {})
    kdir = keys[keys.index("--keys") + 1]
    assert kdir == "/etc/djinn/keys"
    assert (tmp_path / "server" / "server.key_secret").exists()
    # the exporter reads the server on the port the env file makes it listen on
    listen = _env_file(os.path.join(UNITS, "djinn-server.env"))["DJINN_LISTEN"]
    eargs = shlex.split(exporter["Service"]["ExecStart"])
    assert eargs[eargs.index("--server") + 1].rsplit(":", 1)[1] == listen.rsplit(":", 1)[1]


def test_units_start_the_real_server_and_exporter_and_stop_on_sigterm(tmp_path):
    make_secrets.make("djinn", [], [], keys_dir=str(tmp_path))
    port = free_port()
    env = _env_file(os.path.join(UNITS, "djinn-server.env"))
    env["DJINN_LISTEN"] = f"tcp://127.0.0.1:{port}"
    env["DJINN_DEVICES"] = "cpu"
    argv = expand(_unit("djinn-server.service")["Service"]["ExecStart"], env)
    argv = [SERVER_BIN] + [
        str(tmp_path / "server") if a == "/etc/djinn/keys" else a for a in argv[1:]
    ]
    r, w = os.pipe()
    proc = subprocess.Popen(
        argv + ["--announce-fd", str(w)],
        pass_fds=(w,),
        env=subprocess_env(**env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    os.close(w)
    try:
        with os.fdopen(r, "rb") as f:
            read_line(f, 60, "DJINN_ENDPOINT ", "the server's announcement")
        eenv = {
            k: str(tmp_path / "exporter" / os.path.basename(v)) if k.endswith("_CERT") else v
            for k, v in _environment("djinn-exporter.service").items()
        }
        eargs = shlex.split(_unit("djinn-exporter.service")["Service"]["ExecStart"])[1:]
        eargs = [f"tcp://127.0.0.1:{port}" if a.startswith("tcp://") else a for a in eargs]
        once = subprocess.run(
            [PYTHON, "-m", "djinn.exporter", "--once", *eargs],
            env=subprocess_env(**eenv),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert parse(once.stdout).get("djinn_up", server=f"tcp://127.0.0.1:{port}") == 1, (
            once.stderr
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(int(_unit("djinn-server.service")["Service"]["TimeoutStopSec"]))
        err = proc.stderr.read().decode()
    assert rc == 0, err[-3000:]
    # --log-format json from DJINN_SERVER_FLAGS: every line one JSON object
    lines = [json.loads(x) for x in err.splitlines()]
    assert all({"ts", "level", "msg"} <= set(x) for x in lines), lines
    msgs = [x["msg"] for x in lines]
    assert msgs[0].startswith("listening on tcp://127.0.0.1:"), msgs
    assert [m for m in msgs if m.startswith("drain")] == [
        "draining: no new sessions; exiting once queued fragments ran",
        "drained: every queued fragment ran",
    ], msgs
    assert msgs[-1] == "stopped", msgs
