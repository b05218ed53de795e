"""deploy/kubernetes: schema validation (kubernetes-validate, strict), the references
between the manifests, the generated Secrets, the endpoint discovery the Job uses, and
the server's command and probes run against the real binary.

A manifest that validates can still be wrong together with the others (a Service
selecting no pod, a probe on the wrong port, a Secret key nobody writes): those are
checked one by one below.
"""

import json
import os
import re
import shlex
import subprocess
import time

import kubernetes_validate
import pytest
import yaml
import zmq.auth
from conftest import PYTHON, REPO, free_port, stop_server, subprocess_env
from deploy_util import make_secrets, parse

K8S = os.path.join(REPO, "deploy", "kubernetes")
OLDEST = "1.29"  # the oldest Kubernetes these manifests are meant for


def _manifests():
    docs = {}
    for name in sorted(os.listdir(K8S)):
        if name.endswith(".yaml") and name != "kustomization.yaml":
            with open(os.path.join(K8S, name)) as f:
                for doc in yaml.safe_load_all(f):
                    docs[(doc["kind"], doc["metadata"]["name"])] = (name, doc)
    return docs


DOCS = _manifests()


def _get(kind, name):
    return DOCS[(kind, name)][1]


def _validate(doc, version):
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        raise AssertionError(
            f"{doc['kind']}/{doc['metadata']['name']} against {version}: {path}: {e.message}"
        ) from None
    # a missing schema (typo in kind/apiVersion) raises SchemaNotFoundError: a failure too


@pytest.mark.parametrize("version", [OLDEST, kubernetes_validate.utils.latest_version()])
def test_manifests_validate_against_the_kubernetes_schemas(version):
    kinds = {k for k, _ in DOCS}
    assert {"Namespace", "DaemonSet", "Service", "NetworkPolicy", "Job"} <= kinds
    for _, doc in DOCS.values():
        _validate(doc, version)


def test_generated_secrets_validate_and_hold_loadable_certificates(tmp_path):
    docs = make_secrets.make("djinn", ["eval", "alice"], ["ops"], keys_dir=str(tmp_path))
    for doc in docs:
        _validate(doc, OLDEST)
    names = {d["metadata"]["name"]: d for d in docs}
    assert set(names) == {
        "djinn-server-keys",
        "djinn-clients",
        "djinn-exporter-key",
        "djinn-client-eval",
        "djinn-client-alice",
        "djinn-client-ops",
    }
    # the files on disk are the same format: the server's --keys dir and client bundles
    srv = tmp_path / "server"
    pub, sec = zmq.auth.load_certificate(str(srv / "server.key_secret"))
    assert (
        sec is not None
        and zmq.auth.load_certificate(str(tmp_path / "eval" / "server.key"))[0] == pub
    )
    clients = sorted(p.name for p in (srv / "clients").iterdir())
    assert clients == ["alice.key", "eval.key", "exporter.key", "ops.key"]
    for name in ("eval", "exporter", "ops"):
        cpub, csec = zmq.auth.load_certificate(str(tmp_path / name / f"{name}.key_secret"))
        assert csec is not None
        assert zmq.auth.load_certificate(str(srv / "clients" / f"{name}.key"))[0] == cpub
        assert oct((tmp_path / name / f"{name}.key_secret").stat().st_mode & 0o777) == "0o600"
    # operators are marked in their public certificate, tenants are not
    for name, operator in (("exporter", True), ("ops", True), ("eval", False)):
        text = (srv / "clients" / f"{name}.key").read_text()
        assert ('role = "operator"' in text) == operator, name
    with pytest.raises(ValueError):
        make_secrets.make("djinn", ["server"], [])


def _pod(kind, name):
    return _get(kind, name)["spec"]["template"]


def _container(pod, name):
    (c,) = [c for c in pod["spec"]["containers"] if c["name"] == name]
    return c


def _ports(pod):
    return {
        p["name"]: p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", [])
    }


def test_manifests_agree_with_each_other():
    ds = _get("DaemonSet", "djinn-server")
    pod = _pod("DaemonSet", "djinn-server")
    labels = pod["metadata"]["labels"]
    ports = _ports(pod)
    assert set(ds["spec"]["selector"]["matchLabels"].items()) <= set(labels.items())
    server, exporter = _container(pod, "server"), _container(pod, "exporter")
    # the server has GPUs, listens on its declared port, takes its keys from a volume
    assert (
        server["resources"]["limits"]["nvidia.com/gpu"]
        == server["resources"]["requests"]["nvidia.com/gpu"]
    )
    args = server["args"]
    assert args[args.index("--listen") + 1] == f"tcp://0.0.0.0:{ports['djinn']}"
    keys = args[args.index("--keys") + 1]
    assert any(m["mountPath"] == keys for m in server["volumeMounts"])
    # probes: djinn-server --check over loopback on the server's port, with its keys
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        cmd = server[probe]["exec"]["command"]
        assert cmd[:3] == ["djinn-server", "--check", f"tcp://127.0.0.1:{ports['djinn']}"], cmd
        assert cmd[cmd.index("--keys") + 1] == keys
    # Prometheus scrapes the exporter's port, and the exporter reads this server
    ann = pod["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert int(ann["prometheus.io/port"]) == ports["metrics"]
    eargs = exporter["args"]
    assert int(eargs[eargs.index("--port") + 1]) == ports["metrics"]
    assert eargs[eargs.index("--server") + 1] == f"tcp://127.0.0.1:{ports['djinn']}"
    # every secret file a container is told about is mounted and generated
    generated = {d["metadata"]["name"]: d["data"] for d in make_secrets.make("djinn", ["eval"], [])}
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}

    def mounted_file(container, path, vols):
        for m in container["volumeMounts"]:
            if path.startswith(m["mountPath"] + "/"):
                sec = vols[m["name"]]["secret"]
                key = path[len(m["mountPath"]) + 1 :]
                items = {i["path"]: i["key"] for i in sec.get("items", [])}
                assert not items or key in items, (path, items)
                assert items.get(key, key) in generated[sec["secretName"]], (path, sec)
                return True
        return False

    env = {e["name"]: e["value"] for e in exporter["env"]}
    assert mounted_file(exporter, env["DJINN_CLIENT_CERT"], vols)
    assert mounted_file(exporter, env["DJINN_SERVER_CERT"], vols)
    for v in vols.values():
        if "secret" in v:
            assert v["secret"]["secretName"] in generated, v
    init = "\n".join(pod["spec"]["initContainers"][0]["command"])
    for f in ("server.key", "server.key_secret"):
        assert f in generated["djinn-server-keys"] and f"/secrets/server/{f}" in init
    # the headless Service selects these pods, on their named ports
    svc = _get("Service", "djinn-server")
    assert svc["spec"]["clusterIP"] == "None"
    assert set(svc["spec"]["selector"].items()) <= set(labels.items())
    svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
    for p in svc_ports.values():
        assert p["targetPort"] in ports
    # the NetworkPolicy guards these pods and admits the Job's pods on the server port
    netpol = _get("NetworkPolicy", "djinn-server")["spec"]
    assert set(netpol["podSelector"]["matchLabels"].items()) <= set(labels.items())
    for rule in netpol["ingress"]:
        assert all(p["port"] in ports for p in rule["ports"])
    job_pod = _pod("Job", "djinn-eval")
    (client_rule,) = [r for r in netpol["ingress"] if r["ports"][0]["port"] == "djinn"]
    want = client_rule["from"][0]["podSelector"]["matchLabels"]
    assert set(want.items()) <= set(job_pod["metadata"]["labels"].items())
    # the Job finds the Service's pods by DNS and runs the torchrun example
    script = "\n".join(_container(job_pod, "eval")["command"])
    ns = svc["metadata"]["namespace"]
    m = re.search(r"python -m djinn.discover (\S+) (\d+)", script)
    assert m and m.group(1) == f"djinn-server.{ns}.svc.cluster.local", script
    assert int(m.group(2)) == svc_ports["djinn"]["port"]
    assert "torch.distributed.run" in script and "eval_torchrun.py" in script
    assert os.path.exists(os.path.join(REPO, "examples", "eval_torchrun.py"))
    jenv = {e["name"]: e["value"] for e in _container(job_pod, "eval")["env"]}
    jvols = {v["name"]: v for v in job_pod["spec"]["volumes"]}
    generated_eval = generated["djinn-client-eval"]
    for var in ("DJINN_CLIENT_CERT", "DJINN_SERVER_CERT"):
        assert os.path.basename(jenv[var]) in generated_eval
        assert mounted_file(_container(job_pod, "eval"), jenv[var], jvols)


def test_kustomization_lists_every_manifest():
    with open(os.path.join(K8S, "kustomization.yaml")) as f:
        kz = yaml.safe_load(f)
    files = {name for name, _ in DOCS.values()}
    assert set(kz["resources"]) == files
    for gen in kz["configMapGenerator"]:
        for f in gen["files"]:
            assert os.path.exists(os.path.join(K8S, f)), f


def test_discover_lists_endpoints_and_waits_bounded(capsys):
    from djinn.discover import main

    assert main(["localhost", "5555", "--ipv4"]) == 0
    assert capsys.readouterr().out.strip() == "tcp://127.0.0.1:5555"
    t0 = time.monotonic()
    assert (
        main(["localhost", "5555", "--ipv4", "--min", "2", "--timeout", "0.3", "--interval", "0.1"])
        == 1
    )
    assert time.monotonic() - t0 < 5
    assert "wanted 2" in capsys.readouterr().err
    assert main(["no-such-host.invalid", "5555", "--timeout", "0"]) == 1
    assert "0 address" in capsys.readouterr().err


def test_daemonset_drains_within_its_grace_period():
    """preStop, then SIGTERM: the server's drain must end inside the grace period."""
    pod = _pod("DaemonSet", "djinn-server")
    server = _container(pod, "server")
    args = server["args"]
    drain = int(args[args.index("--drain-timeout") + 1])
    pre = server["lifecycle"]["preStop"]["exec"]["command"]
    assert pre[0] == "sleep"
    assert drain > 0 and int(pre[1]) + drain + 10 <= pod["spec"]["terminationGracePeriodSeconds"]
    assert args[args.index("--log-format") + 1] == "json"


def test_daemonset_commands_run_against_the_real_server(tmp_path):
    """The server container's command (listen moved to loopback), its probe and the
    exporter container, with keys from make_secrets, against the real binary."""
    from conftest import SERVER_BIN
    from deploy_util import read_line

    make_secrets.make("djinn", ["eval"], [], keys_dir=str(tmp_path))
    pod = _pod("DaemonSet", "djinn-server")
    server, exporter = _container(pod, "server"), _container(pod, "exporter")
    ep = f"tcp://127.0.0.1:{free_port()}"
    keys = server["args"][server["args"].index("--keys") + 1]

    def local(argv):
        return [
            ep if a.startswith("tcp://") else str(tmp_path / "server") if a == keys else a
            for a in argv
        ]

    r, w = os.pipe()
    proc = subprocess.Popen(
        [SERVER_BIN, *local(server["args"]), "--device", "cpu", "--announce-fd", str(w)],
        pass_fds=(w,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    os.close(w)
    try:
        with os.fdopen(r, "rb") as f:
            read_line(f, 60, "DJINN_ENDPOINT ", "the server's announcement")
        probe = local(server["readinessProbe"]["exec"]["command"])
        rc = subprocess.run([SERVER_BIN, *probe[1:]], timeout=30, check=False).returncode
        assert rc == 0, shlex.join(probe)
        env = subprocess_env(
            DJINN_CLIENT_CERT=tmp_path / "exporter" / "exporter.key_secret",
            DJINN_SERVER_CERT=tmp_path / "exporter" / "server.key",
        )
        once = subprocess.run(
            [PYTHON, "-m", "djinn.exporter", "--once", *local(exporter["args"])],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert parse(once.stdout).get("djinn_up", server=ep) == 1, once.stderr
    finally:
        stop_server(proc)
    # --log-format json: every line of the server's log is one JSON object
    lines = [json.loads(x) for x in proc.stderr.read().decode().splitlines()]
    assert lines and all({"ts", "level", "msg"} <= set(x) for x in lines), lines
    assert lines[-1]["msg"] == "stopped", lines
