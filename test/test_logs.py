"""djinn-server's logs: ``--log-format json`` and ``--log-level`` (issue 14).

Every line the server writes in JSON mode must parse as one JSON object with ``ts``,
``level`` and ``msg``, whatever a client sends: a HELLO whose client name holds quotes,
a newline, control characters and bytes that are not UTF-8 is logged (at debug) with the
name escaped, the bad bytes replaced by U+FFFD. Levels filter: info shows start and
stop but no sessions; debug adds sessions and error replies. Text mode never lets a
client's newline start a second line.
"""

import json
import os
import signal
import subprocess

import msgpack
from conftest import SERVER_BIN, free_port, subprocess_env
from proto import ERROR, HELLO, HEARTBEAT, PROTO_VERSION, REPLY, Raw

EVIL = b'evil "name"\\\n\x01 caf\xc3\xa9 \xff\xfe end'


def _run(*flags):
    """A server with ``flags``; a raw client says HELLO as EVIL, sends a heartbeat for a
    session that does not exist, and leaves; then SIGTERM. Returns stderr lines."""
    ep = f"tcp://127.0.0.1:{free_port()}"
    r, w = os.pipe()
    proc = subprocess.Popen(
        [SERVER_BIN, "--listen", ep, "--device", "cpu", "--announce-fd", str(w), *flags],
        pass_fds=(w,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=subprocess_env(),
    )
    os.close(w)
    try:
        with os.fdopen(r) as f:
            assert f.readline().startswith("DJINN_ENDPOINT ")
        raw = Raw(ep, timeout=20)
        # packed by hand: a str field with bytes that are not UTF-8
        hello = {"type": HELLO, "sid": 0, "seq": 7, "body": {"version": PROTO_VERSION}}
        hello["body"]["client"] = EVIL
        h, _ = raw.request([msgpack.packb(hello, use_bin_type=False)])
        assert h["type"] == REPLY, h
        h, _ = raw.call(HEARTBEAT, sid=12345)
        assert h["type"] == ERROR, h
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=60)[1].decode("utf-8")  # strict: lines are UTF-8
        assert proc.returncode == 0, err
        return err.splitlines()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_json_lines_parse_and_carry_hostile_client_names_escaped():
    lines = [json.loads(x) for x in _run("--log-format", "json", "--log-level", "debug")]
    assert all({"ts", "level", "msg"} <= set(x) for x in lines), lines
    assert all(x["ts"].endswith("Z") and len(x["ts"]) == 24 for x in lines), lines
    (opened,) = [x for x in lines if x["msg"] == "session opened"]
    assert opened["level"] == "debug"
    assert opened["client"] == 'evil "name"\\\n\x01 caf\u00e9 \ufffd\ufffd end'
    assert len(opened["session"]) == 16 and int(opened["session"], 16) != 0
    (err,) = [x for x in lines if x["msg"] == "error reply"]
    assert err["session"] == f"{12345:016x}" and err["status"] == "SESSION", err
    assert "unknown session" in err["error"]
    msgs = [x["msg"] for x in lines]
    assert msgs[0].startswith("listening on tcp://127.0.0.1:") and msgs[-1] == "stopped"


def test_info_level_shows_lifecycle_only_and_text_stays_one_line_per_event():
    lines = _run()  # text, info
    assert lines[0].startswith("djinn-server: listening on tcp://127.0.0.1:"), lines
    assert lines[-1] == "djinn-server: stopped", lines
    assert not any("session opened" in x or "error reply" in x for x in lines), lines
    debug = _run("--verbose")
    (opened,) = [x for x in debug if x.startswith("djinn-server: session opened")]
    assert 'client=evil "name"\\?? caf\u00e9 ' in opened, opened
    assert all(x.startswith("djinn-server: ") for x in debug), debug


def test_bad_log_flags_are_refused():
    for flags, words in (
        (["--log-format", "xml"], "--log-format is text or json"),
        (["--log-level", "loud"], "--log-level is error, warn, info or debug"),
    ):
        r = subprocess.run([SERVER_BIN, *flags], capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and words in r.stderr, r.stderr
