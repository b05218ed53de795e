"""The wire protocol, spoken by hand with pyzmq (DEALER).

Bad input of every kind must get an ERROR reply (type 65) whose body has a status
``code`` and a ``msg`` naming the problem, and must never take the server down: the
last test runs a normal djinn client computation against the same (shared) server.
Inputs that are known or suspected to crash a server are sent to a private one.

Well-formed requests are built by the protocol's own encoders (test/proto.py); only the
deliberately malformed ones are packed by hand. Inside GRAPH nodes, tensor references
(ext type 1) carry a *slot* into the body's ``binds`` array, not a handle.
"""

import struct

import msgpack
import pytest
import torch
import zmq

from conftest import assert_close
from proto import (
    CLOSE,
    DYNAMIC,
    E_ARGS,
    E_DEVICE,
    E_EVICTED,
    E_HANDLE,
    E_LIMIT,
    E_OP,
    E_PROTO,
    E_SESSION,
    E_VERSION,
    ERROR,
    F32,
    FETCH,
    GRAPH,
    GRAPH_CACHED,
    H0,
    HAVE,
    HEARTBEAT,
    HELLO,
    I64,
    PROTO_VERSION,
    REPLY,
    STATS,
    Raw,
    assert_error,
    dyn_tensor,
    encode,
    raw_header,
    tref,
)
from djinn._C import _proto
from proto import f32 as _f32

header = raw_header  # hand-packed frame 0: for malformed messages only


@pytest.fixture(scope="module")
def zctx():
    ctx = zmq.Context()
    yield ctx
    ctx.term()


@pytest.fixture
def raw(server, zctx):
    c = Raw(server, zctx)
    yield c
    # whatever the test sent, the shared server must still answer
    assert c.alive(), "the shared server stopped answering"
    c.close()


@pytest.fixture
def session(raw):
    raw.hello()
    return raw


def _add_out_graph(h_in, h_out, n=4, fetch=True):
    """x (uploaded, frame 1) + x -> out via aten::add.out; optionally fetch out."""
    t = lambda slot: tref(slot, F32, [n])  # noqa: E731
    body = {
        "dev": 0,
        "seed": None,
        "binds": [h_in, h_out],
        "allocs": [[h_in, 4 * n], [h_out, 4 * n]],
        "uploads": [[h_in, 1]],
        "nodes": [["aten::add", "out", [t(0), t(0), 1, t(1)], [t(1)], 0]],
        "frees": [],
        "fetch": [[h_out, 0, 4 * n]] if fetch else [],
    }
    return body


# ------------------------------------------------------------------ happy paths built by hand


def test_hello_reply_fields(raw):
    body = raw.hello()
    assert body["version"] == PROTO_VERSION
    assert body["devices"] == ["cpu"]
    assert isinstance(body["lease_ms"], int) and isinstance(body["heartbeat_ms"], int)
    assert body["server"].startswith("djinn-server")


def test_hand_built_graph_alloc_upload_add_out_fetch(session):
    h, frames = session.graph(_add_out_graph(H0, H0 + 512), frames=[_f32(1, 2, 3, 4)])
    assert h["type"] == REPLY, h
    assert h["seq"] == session.seq and h["sid"] == session.sid
    assert h["body"]["fetched"] == 1
    assert struct.unpack("<4f", frames[0]) == (2.0, 4.0, 6.0, 8.0)


def test_hand_built_graph_across_messages_and_frees(session):
    a, b, c = H0 + 0x10000, H0 + 0x10200, H0 + 0x10400
    h, _ = session.graph(_add_out_graph(a, b, fetch=False), frames=[_f32(1, 1, 1, 1)])
    assert h["type"] == REPLY, h
    # a later message sees the earlier one's results; 2x2 view, strided read of b
    t = tref(0, F32, [2, 2], [1, 2])  # b viewed transposed
    body = {
        "binds": [b, c],
        "allocs": [[c, 16]],
        "nodes": [["aten::mul", "out", [t, 3.0, tref(1, F32, [2, 2])], [tref(1, F32, [2, 2])], 0]],
        "fetch": [[c, 0, 16], [b, 4, 8]],
        "frees": [a, b],
    }
    h, frames = session.graph(body)
    assert h["type"] == REPLY, h
    assert h["body"]["fetched"] == 2
    assert struct.unpack("<4f", frames[0]) == (6.0,) * 4
    assert struct.unpack("<2f", frames[1]) == (2.0, 2.0)
    # freed handles are gone
    assert_error(session.graph({"fetch": [[b, 0, 4]]}), E_HANDLE, "unknown handle")


def test_fetch_message_type_behaves_like_graph(session):
    a, b = H0 + 0x20000, H0 + 0x20200
    h, _ = session.graph(_add_out_graph(a, b, fetch=False), frames=[_f32(5, 6, 7, 8)])
    assert h["type"] == REPLY
    h, frames = session.call(FETCH, {"fetch": [[b, 4, 8]]})
    assert h["type"] == REPLY, h
    assert struct.unpack("<2f", frames[0]) == (12.0, 14.0)


def test_dynamic_node_reports_result_metadata(session):
    x = H0 + 0x30000
    body = {
        "binds": [x],
        "uploads": [[x, 1]],
        "nodes": [["aten::nonzero", "", [tref(0, F32, [2, 2])], [], DYNAMIC]],
    }
    h, _ = session.graph(body, frames=[_f32(1, 0, 2, 3)])
    assert h["type"] == REPLY, h
    (res,) = h["body"]["dyn"]
    handle, offset, dtype, sizes, strides, nbytes = dyn_tensor(res)
    assert handle >= 1 << 62  # server-issued
    assert (offset, dtype, sizes) == (0, I64, [3, 2])
    assert nbytes >= 48
    h, frames = session.graph({"fetch": [[handle, 0, nbytes]], "frees": [handle]})
    assert h["type"] == REPLY, h
    data = struct.unpack(f"<{nbytes // 8}q", frames[0])
    st = torch.as_strided(torch.tensor(data), sizes, strides)
    assert st.tolist() == [[0, 0], [1, 0], [1, 1]]


def test_heartbeat_stats_close(session):
    h, _ = session.call(HEARTBEAT)
    assert h["type"] == REPLY and h["body"] == {}
    h, _ = session.call(STATS, sid=0)
    assert h["type"] == REPLY and h["body"]["sessions_open"] >= 1
    h, _ = session.call(CLOSE)
    assert h["type"] == REPLY
    assert_error(session.call(HEARTBEAT), E_SESSION, "unknown session")
    assert_error(session.graph({}), E_SESSION, "unknown session")


def test_reply_echoes_sequence_number(session):
    h, _ = session.call(HEARTBEAT, seq=987654321)
    assert h["seq"] == 987654321


# ------------------------------------------------------------------ malformed frames


@pytest.mark.parametrize(
    "frame,needle",
    [
        (b"garbage\xc1", "trailing bytes"),
        (b"\xc1", "invalid msgpack byte 0xc1"),
        (b"\xc1garbage", "invalid msgpack byte"),
        (b"\x00" * 64, "trailing bytes"),
        (bytes(range(256)), ""),
        (b"\xdd\xff\xff\xff\xff", "exceeds the message"),  # array claiming 2^32 items
        (
            b"\x84\xa4type\x09\xa3sid\x00\xa3seq\x01\xa4body\xdf\xff\xff\xff\xff",
            "exceeds the message",
        ),
        (b"\xd4\x05\x00", "unknown msgpack extension type 5"),
        (b"\xd4\x01\x00", "malformed tensor reference"),
        (b"\xc7\x03\x02abc", "malformed complex number"),
    ],
    ids=[
        "trailing",
        "bad_byte",
        "bad_first_byte",
        "zeros",
        "all_bytes",
        "huge_array",
        "huge_map",
        "unknown_ext",
        "short_tensor_ext",
        "short_complex_ext",
    ],
)
def test_garbage_frames(raw, frame, needle):
    body = assert_error(raw.request([frame]), E_PROTO, needle)
    assert body["msg"]


def test_empty_header_frame(raw):
    assert_error(raw.request([b""]), E_PROTO, "empty header frame")


def test_every_truncated_prefix_of_a_valid_hello(raw):
    hello = encode(HELLO, 0, 7, {"version": PROTO_VERSION, "client": "truncation test"})
    for i in range(1, len(hello)):
        body = assert_error(raw.request([hello[:i]]), E_PROTO)
        assert "truncated msgpack" in body["msg"] or "exceeds the message" in body["msg"], (i, body)
    # and the whole message is fine
    h, _ = raw.request([hello])
    assert h["type"] == REPLY and h["seq"] == 7


def test_header_that_is_an_array(raw):
    frame = msgpack.packb([HELLO, 0, 1, {"version": PROTO_VERSION}])
    assert_error(raw.request([frame]), E_PROTO, "header must be a map")


@pytest.mark.parametrize(
    "hdr,needle",
    [
        ({"type": HELLO, "sid": 0, "seq": 1}, "'body' must be a map"),
        ({"type": HELLO, "sid": 0, "seq": 1, "body": [1]}, "'body' must be a map"),
        ({"type": "hello", "sid": 0, "seq": 1, "body": {}}, "integer 'type', 'sid' and 'seq'"),
        ({"sid": 0, "seq": 1, "body": {}}, "integer 'type', 'sid' and 'seq'"),
        ({"type": HELLO, "sid": 0, "seq": 1.5, "body": {}}, "integer 'type', 'sid' and 'seq'"),
        ({"type": HELLO, "sid": 0, "seq": 1, "body": {}}, "HELLO needs an integer 'version'"),
        ({"type": HELLO, "sid": 0, "seq": 1, "body": {"version": 1 << 40}}, "version"),
    ],
    ids=[
        "no_body",
        "body_array",
        "type_str",
        "no_type",
        "seq_float",
        "hello_no_version",
        "hello_version_huge",
    ],
)
def test_header_field_types(raw, hdr, needle):
    assert_error(raw.request([msgpack.packb(hdr)]), E_PROTO, needle)


def test_unknown_message_type(raw):
    assert_error(raw.request([header(99, 0, 5)]), E_PROTO, "unknown message type 99", seq=5)
    assert_error(raw.request([header(REPLY, 0, 6)]), E_PROTO, "unknown message type 64", seq=6)


def test_hello_with_wrong_version(raw):
    body = assert_error(
        raw.request([header(HELLO, 0, 9, {"version": PROTO_VERSION + 1})]),
        E_VERSION,
        "version",
        seq=9,
    )
    assert str(PROTO_VERSION + 1) in body["msg"] and str(PROTO_VERSION) in body["msg"]


def test_nesting_too_deep(raw):
    deep = 1
    for _ in range(10):
        deep = [deep]
    assert_error(raw.request([header(STATS, 0, 3, {"x": deep})]), E_PROTO, "nesting deeper")


# ------------------------------------------------------------------ sessions and handles


def test_graph_for_unknown_session(raw):
    h, _ = raw.request([header(GRAPH, 0x1234ABCD, 4, {})])
    body = assert_error((h, _), E_SESSION, "unknown session", "1234abcd", seq=4)
    assert h["sid"] == 0x1234ABCD
    assert body["code"] == E_SESSION


def test_graph_with_unknown_op(session):
    body = assert_error(
        session.graph({"nodes": [["aten::does_not_exist", "", [], [], 0]]}),
        E_OP,
        "unknown operator",
        "aten::does_not_exist",
    )
    assert body["node"] == 0 and body["op"] == "aten::does_not_exist"


def test_graph_with_unknown_overload(session):
    assert_error(
        session.graph({"nodes": [["aten::add", "no_such_overload", [], [], 0]]}),
        E_OP,
        "unknown operator",
        "aten::add.no_such_overload",
    )


def test_graph_wrong_arity(session):
    x = H0 + 0x40000
    body = {"binds": [x], "allocs": [[x, 16]]}
    assert_error(
        session.graph({**body, "nodes": [["aten::neg", "", [], [None], 0]]}),
        E_ARGS,
        "aten::neg",
        "expects 1 arguments, got 0",
    )
    assert_error(
        session.graph(
            {"binds": [x], "nodes": [["aten::neg", "", [tref(0, F32, [4]), 1], [None], 0]]}
        ),
        E_ARGS,
        "expects 1 arguments, got 2",
    )
    assert_error(
        session.graph({"binds": [x], "nodes": [["aten::neg", "", [tref(0, F32, [4])], [], 0]]}),
        E_ARGS,
        "expects 1 outputs, got 0",
    )


@pytest.mark.parametrize(
    "args,needle",
    [
        (["abc", None, None, None, None], "argument 'size' expects a list, got str"),
        ([{"a": 1}, None, None, None, None], "expects a list, got map"),
        ([[[1]], None, None, None, None], "size expects an int, got list"),
        ([[-1], None, None, None, None], "negative dimension"),
    ],
    ids=["str_for_list", "map_for_list", "nested_list", "negative_size"],
)
def test_graph_argument_kinds(session, args, needle):
    body = session.graph({"nodes": [["aten::ones", "", args, [None], 0]]})
    h = assert_error(body, E_ARGS if "expects" in needle else E_OP, "aten::ones", needle)
    assert h["node"] == 0


def test_tensor_ref_to_unknown_handle(session):
    ghost = H0 + 0x7777000  # never declared in this session
    body = {"binds": [ghost], "nodes": [["aten::neg", "", [tref(0, F32, [4])], [None], 0]]}
    assert_error(session.graph(body), E_HANDLE, "aten::neg", "unknown handle", f"{ghost:x}")


def test_tensor_ref_slot_beyond_binds(session):
    body = {"binds": [H0], "nodes": [["aten::neg", "", [tref(5, F32, [4])], [None], 0]]}
    assert_error(session.graph(body), E_PROTO, "node 0", "unbound slot")
    body = {"nodes": [["aten::neg", "", [tref(0, F32, [4])], [None], 0]]}  # no binds at all
    assert_error(session.graph(body), E_PROTO, "unbound slot")


@pytest.mark.parametrize(
    "ref",
    [
        tref(0, 12, [4]),  # dtype code not carried
        tref(0, 200, [4]),
        tref(0, F32, [-1]),  # negative size
        tref(0, F32, [4], offset=-1),
        tref(0, F32, [2, 1 << 62], [1, 1 << 62]),  # extent overflow
    ],
    ids=["dtype12", "dtype200", "neg_size", "neg_offset", "overflow"],
)
def test_malformed_tensor_reference(session, ref):
    body = {"binds": [H0 + 0x50000], "nodes": [["aten::neg", "", [ref], [None], 0]]}
    assert_error(session.graph(body), E_PROTO, "malformed tensor reference")


def test_tensor_ref_beyond_its_storage(session):
    x = H0 + 0x60000
    body = {
        "binds": [x],
        "allocs": [[x, 8]],
        "nodes": [["aten::neg", "", [tref(0, F32, [4])], [None], 0]],
    }
    assert_error(session.graph(body), E_ARGS, "reaches byte 16 but its storage holds 8")


def test_handle_of_another_session_is_unknown(server, zctx):
    a, b = Raw(server, zctx), Raw(server, zctx)
    try:
        a.hello()
        b.hello()
        h_in, h_out = H0 + 0x70000, H0 + 0x70200
        h, _ = a.graph(_add_out_graph(h_in, h_out, fetch=False), frames=[_f32(1, 2, 3, 4)])
        assert h["type"] == REPLY
        assert_error(
            b.graph({"fetch": [[h_out, 0, 16]]}),
            E_HANDLE,
            "unknown handle",
            "not owned by this session",
        )
        body = {
            "binds": [h_out],
            "nodes": [["aten::neg_", "", [tref(0, F32, [4])], [tref(0, F32, [4])], 0]],
        }
        assert_error(b.graph(body), E_HANDLE, "unknown handle")
        # a's data is untouched
        h, frames = a.graph({"fetch": [[h_out, 0, 16]]})
        assert struct.unpack("<4f", frames[0]) == (2.0, 4.0, 6.0, 8.0)
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize(
    "body,code,needle",
    [
        ({"dev": 3}, E_DEVICE, "device 3 does not exist"),
        ({"dev": -1}, E_PROTO, "'dev' must be a device index"),
        ({"dev": 64}, E_PROTO, "'dev' must be a device index"),
        ({"fp": [1]}, E_PROTO, "'fp' must be [hi, lo]"),
        ({"seed": "x"}, E_PROTO, "'seed' must be an integer"),
        ({"binds": [0]}, E_PROTO, "'binds' must hold non-zero handles"),
        ({"binds": 5}, E_PROTO, "'binds' must be an array"),
        ({"allocs": [[1]]}, E_PROTO, "each alloc must be [handle, nbytes]"),
        ({"uploads": [[H0, 2]]}, E_PROTO, "upload names frame 2 but the message has 0"),
        ({"uploads": [[H0]]}, E_PROTO, "each upload must be [handle, frame]"),
        ({"nodes": {"a": 1}}, E_PROTO, "'nodes' must be an array"),
        (
            {"nodes": [["aten::neg"]]},
            E_PROTO,
            "node 0 must be [op, overload, [args], [outs], flags]",
        ),
        ({"nodes": [["", "", [], [], 0]]}, E_PROTO, "bad operator name"),
        ({"nodes": [["aten::neg\x00x", "", [], [], 0]]}, E_PROTO, "bad operator name"),
        ({"nodes": [["aten::" + "x" * 300, "", [], [], 0]]}, E_PROTO, "bad operator name"),
        ({"frees": ["x"]}, E_PROTO, "'frees' must hold handles"),
        ({"fetch": [[H0, 0]]}, E_PROTO, "each fetch must be [handle, offset, nbytes]"),
        ({"fetch": [[12345, 0, 4]]}, E_HANDLE, "unknown handle 0x3039"),
        ({"allocs": [[H0 + 0x80000, 1 << 40]]}, E_LIMIT, "exceeds the server's limit"),
    ],
    ids=[
        "dev_out_of_range",
        "dev_negative",
        "dev_too_big",
        "fp_short",
        "seed_str",
        "bind_zero",
        "binds_int",
        "alloc_short",
        "upload_frame",
        "upload_short",
        "nodes_map",
        "node_short",
        "op_empty",
        "op_nul",
        "op_long",
        "frees_str",
        "fetch_short",
        "fetch_unknown",
        "alloc_over_limit",
    ],
)
def test_graph_body_checks(session, body, code, needle):
    assert_error(session.call_raw(GRAPH, body), code, needle)


def test_fetch_beyond_storage(session):
    x = H0 + 0x90000
    assert_error(
        session.graph({"allocs": [[x, 16]], "fetch": [[x, 8, 16]]}),
        E_ARGS,
        "beyond a storage of 16 bytes",
    )
    assert_error(session.graph({"fetch": [[x, (1 << 64) - 1, 2]]}), E_ARGS, "beyond a storage")


def test_declaring_a_handle_twice(session):
    x = H0 + 0xA0000
    h, _ = session.graph({"allocs": [[x, 16]]})
    assert h["type"] == REPLY
    assert_error(session.graph({"allocs": [[x, 16]]}), E_HANDLE, "declared twice")


def test_alloc_of_handle_zero_message(session):
    # (older builds answered 'handle 0x0 declared twice')
    r = session.graph({"allocs": [[0, 16]]})
    body = assert_error(r, r[0]["body"].get("code"))
    assert body["code"] in (E_PROTO, E_HANDLE)
    assert "declared twice" not in body["msg"]
    assert "handle" in body["msg"]


def test_failing_node_reports_index_and_later_messages_run(session):
    x, y = H0 + 0xB0000, H0 + 0xB0200
    t = tref(0, F32, [4])
    body = {
        "binds": [x, y],
        "uploads": [[x, 1]],
        "allocs": [[y, 16]],
        "nodes": [
            ["aten::neg", "", [t], [None], 0],
            ["aten::does_not_exist", "", [], [], 0],
            ["aten::neg_", "", [t], [t], 0],
        ],
    }
    err = assert_error(session.graph(body, frames=[_f32(1, 2, 3, 4)]), E_OP, "unknown operator")
    assert err["node"] == 1 and err["op"] == "aten::does_not_exist"
    # the upload before the failure kept its effect; the node after it did not run
    h, frames = session.graph({"fetch": [[x, 0, 16]]})
    assert h["type"] == REPLY
    assert struct.unpack("<4f", frames[0]) == (1.0, 2.0, 3.0, 4.0)


# ------------------------------------------------------------------ limits


def test_oversize_header(raw):
    frame = msgpack.packb(
        {"type": STATS, "sid": 0, "seq": 5, "body": {}, "pad": b"\0" * (16 << 20)},
        use_bin_type=True,
    )
    assert len(frame) > 16 << 20
    body = assert_error(raw.request([frame]), E_LIMIT, "exceeds the limit of 16777216")
    assert str(len(frame)) in body["msg"]


def test_header_just_under_the_limit_is_accepted(raw):
    pad = (16 << 20) - 64
    frame = msgpack.packb(
        {"type": STATS, "sid": 0, "seq": 5, "body": {}, "pad": b"\0" * pad}, use_bin_type=True
    )
    assert len(frame) <= 16 << 20
    h, _ = raw.request([frame])
    assert h["type"] == REPLY, h


def test_too_many_frames(raw):
    frames = [header(STATS, 0, 6)] + [b""] * 4097
    assert_error(raw.request(frames), E_LIMIT, "4097 frames", "limit is 4096")
    h, _ = raw.request([header(STATS, 0, 7)] + [b""] * 4096)  # exactly at the limit
    assert h["type"] == REPLY


def test_frame_over_the_tensor_limit(private_server, zctx):
    ep = private_server("--lease-ms", "0", "--max-tensor-bytes", "1024")
    c = Raw(ep, zctx)
    try:
        c.hello()
        assert_error(
            c.graph({"uploads": [[H0, 1]]}, frames=[b"\0" * 2048]),
            E_LIMIT,
            "frame 1 of 2048 bytes exceeds the limit of 1024",
        )
        assert_error(
            c.graph({"allocs": [[H0, 4096]]}), E_LIMIT, "exceeds the server's limit of 1024"
        )
        assert c.alive()
    finally:
        c.close()


# ------------------------------------------------------------------ server robustness (private servers)


def _private(private_server, zctx):
    ep = private_server("--lease-ms", "0")
    c = Raw(ep, zctx)
    c.hello()
    return c


def _assert_private_server_survived(private_server, c):
    proc = private_server.procs[-1]
    assert proc.poll() is None, f"the server died (rc={proc.returncode})"
    assert c.alive()


def test_dynamic_flag_on_a_node_that_is_not_last(private_server, zctx):
    c = _private(private_server, zctx)
    try:
        ones = ["aten::ones", "", [[2], None, None, None, None], [], 1]
        r = c.request([header(GRAPH, c.sid, 5, {"nodes": [ones, ones]})], timeout_ms=10000)
        assert r is not None, "no reply (server crashed?)"
        assert r[0]["type"] in (REPLY, ERROR)
        _assert_private_server_survived(private_server, c)
    finally:
        c.close()


@pytest.mark.parametrize("dtype", [200, -3])
def test_invalid_scalar_type_argument(private_server, zctx, dtype):
    c = _private(private_server, zctx)
    try:
        node = ["aten::ones", "", [[2], dtype, None, None, None], [None], 0]
        r = c.request([header(GRAPH, c.sid, 5, {"nodes": [node]})], timeout_ms=10000)
        assert r is not None, "no reply (server crashed?)"
        assert_error(r, r[0]["body"].get("code"), "aten::ones")
        _assert_private_server_survived(private_server, c)
    finally:
        c.close()


def test_fresh_allocation_does_not_leak_other_sessions_data(private_server, zctx):
    ep = private_server("--lease-ms", "0")
    a, b = Raw(ep, zctx), Raw(ep, zctx)
    try:
        a.hello()
        b.hello()
        leaks = []
        for size in (256, 1024, 4096, 16384, 65536):
            secret = (b"SECRET!" * (size // 7 + 1))[:size]
            for k in range(3):
                h = H0 + size * 16 + k * 8
                r, _ = a.graph(
                    {"uploads": [[h, 1]], "frees": [h]}, frames=[secret]
                )  # write, then let go
                assert r["type"] == REPLY, r
                r, frames = b.graph({"allocs": [[h, size]], "fetch": [[h, 0, size]], "frees": [h]})
                assert r["type"] == REPLY, r
                if b"SECRET!" in frames[0]:
                    leaks.append((size, k))
        assert leaks == []
    finally:
        a.close()
        b.close()


# ------------------------------------------------------------------ the server still works


def test_zz_normal_client_still_correct_after_bad_input(remote, djinn_mod, server):
    assert djinn_mod.remote.endpoint() == server
    x = torch.arange(12.0, device="remote").reshape(3, 4) / 10
    c = torch.arange(12.0).reshape(3, 4) / 10
    assert_close((x @ x.t()).softmax(-1), (c @ c.t()).softmax(-1))
    assert_close(x[x > 0.4], torch.arange(5.0, 12.0) / 10)
    assert djinn_mod.server_stats()["sessions_open"] >= 1


# ------------------------------------------------------------------ HAVE and GRAPH_CACHED


@pytest.mark.parametrize(
    "body, words",
    [
        ({}, "HAVE: needs 'dev'"),
        ({"dev": 0}, "HAVE: needs 'dev'"),
        ({"dev": 99, "items": []}, "HAVE: needs 'dev'"),
        ({"dev": 0, "items": "x"}, "HAVE: needs 'dev'"),
        (
            {"dev": 0, "items": [[1, 2]]},
            "HAVE: each item must be [handle, hash_hi, hash_lo, nbytes]",
        ),
        (
            {"dev": 0, "items": [["h", 1, 2, 3]]},
            "HAVE: each item must be [handle, hash_hi, hash_lo, nbytes]",
        ),
        ({"dev": 0, "items": [[0, 1, 2, 3]]}, "client handles must be in [1, 2^62)"),
        ({"dev": 0, "items": [[1 << 63, 1, 2, 3]]}, "client handles must be in [1, 2^62)"),
    ],
    ids=[
        "empty",
        "no_items",
        "bad_dev",
        "items_not_list",
        "short_item",
        "handle_not_int",
        "handle_zero",
        "server_handle",
    ],
)
def test_have_garbage_gets_an_error(session, body, words):
    assert_error(session.call_raw(HAVE, body), E_PROTO, words)


def test_have_unknown_content_is_reported_missing(session):
    h, _ = session.call(HAVE, {"dev": 0, "items": [(0x5000, 123, 456, 64), (0x6000, 1, 2, 3)]})
    assert h["type"] == REPLY, h
    assert h["body"]["missing"] == [0, 1]  # nothing held


def test_have_before_hello_is_an_unknown_session(raw):
    assert_error(raw.call(HAVE, {"dev": 0, "items": []}, sid=12345), E_SESSION, "unknown session")


def test_graph_cached_miss_says_evicted_and_changes_nothing(session):
    body = {
        "dev": 0,
        "binds": [0x7000],
        "allocs": [[0x7000, 16]],
        "fp": [0xDEAD, 0xBEEF],
        "fetch": [[0x7000, 0, 16]],
    }
    assert_error(
        session.call(GRAPH_CACHED, body), E_EVICTED, "plan cache miss", "send the full GRAPH"
    )
    # nothing of the refused message was applied: the handle it declared does not exist
    fetch = {"dev": 0, "fetch": [[0x7000, 0, 16]], "resume": True}
    assert_error(session.graph(fetch), E_HANDLE, "unknown handle")


def test_after_evicted_later_fragments_wait_for_the_resend(session):
    """A fragment sent after one answered E_EVICTED may use what that one makes: the
    server refuses each until the resend, marked 'resume', arrives; then they run."""
    missing = {"dev": 0, "binds": [0x7000], "allocs": [[0x7000, 16]], "fp": [0xDEAD, 0xBEEF]}
    h, _ = session.call(GRAPH_CACHED, missing)
    assert_error((h, _), E_EVICTED, "plan cache miss")
    evicted = h["seq"]
    later = _add_out_graph(0x7100, 0x7200)
    for _ in range(2):  # plain or cached, each is refused, naming the evicted fragment
        assert_error(
            session.graph(later, frames=[_f32(1, 2, 3, 4)]),
            E_EVICTED,
            f"skipped: fragment {evicted} of this session was answered E_EVICTED",
            "'resume'",
        )
    assert_error(session.call(GRAPH_CACHED, missing), E_EVICTED, "skipped")
    resent = {"dev": 0, "allocs": [[0x7000, 16]], "resume": True}
    h, _ = session.graph(resent)
    assert h["type"] == REPLY, h
    h, frames = session.graph(later, frames=[_f32(1, 2, 3, 4)])  # the chain runs again
    assert h["type"] == REPLY, h
    assert struct.unpack("<4f", frames[0]) == (2.0, 4.0, 6.0, 8.0)


def test_resume_must_be_a_boolean(session):
    body = {"dev": 0, "allocs": [[0x7000, 16]], "resume": 1}
    assert_error(session.call_raw(GRAPH, body), E_PROTO, "'resume' must be a boolean")


def test_graph_cached_hit_runs_the_cached_nodes_with_new_bindings(session):
    body = _add_out_graph(0x8000, 0x8100)
    body["fp"] = [0x1234, 0x5678]
    h, frames = session.graph(body, frames=[_f32(1, 2, 3, 4)])
    assert h["type"] == REPLY, h
    # same nodes, other handles: only the bindings travel
    cached = {
        "dev": 0,
        "binds": [0x9000, 0x9100],
        "allocs": [[0x9000, 16], [0x9100, 16]],
        "uploads": [[0x9000, 1]],
        "fetch": [[0x9100, 0, 16]],
        "fp": [0x1234, 0x5678],
    }
    h, frames = session.call(GRAPH_CACHED, cached, frames=[_f32(10, 20, 30, 40)])
    assert h["type"] == REPLY, h
    assert struct.unpack("<4f", frames[0]) == (20.0, 40.0, 60.0, 80.0)


def _filed_add_out(session, h_in, h_out, fp):
    """File aten::add.out over float32 [4] under fp; its template digest (7.4)."""
    body = _add_out_graph(h_in, h_out)
    body["fp"] = fp
    h, frames = session.graph(body, frames=[_f32(1, 2, 3, 4)])
    assert h["type"] == REPLY, h
    # the node's integers: per reference offset, size, stride; alpha between
    ints = [0, 4, 1, 0, 4, 1, 1, 0, 4, 1, 0, 4, 1]
    return _proto.sym_digest(ints, [h_in, h_out], [(h_in, 16), (h_out, 16)], [])


def test_graph_cached_patch_runs_other_sizes_and_handles(session):
    """Against its template, a GRAPH_CACHED sends only what differs: here every size 4
    becomes 2 (deltas -2 at integers 1, 4, 8, 11), the handles move by a shift, and the
    allocation sizes shrink; the server patches a copy of the cached nodes."""
    a, b = H0 + 0x50000, H0 + 0x50200
    tpl = _filed_add_out(session, a, b, [0x3131, 0x3232])
    shift = 0x10000
    body = {
        "binds_d": [2, shift],
        "allocs_d": [2, shift],
        "allocs_n": [1, -8, 1, -8],
        "uploads": [[a + shift, 1]],
        "fetch": [[b + shift, 0, 8]],
        "fp": [0x3131, 0x3232],
        "tpl": tpl,
        "patch": [2, -2, 3, -2, 4, -2, 3, -2],
    }
    h, frames = session.call_raw(GRAPH_CACHED, body, frames=[_f32(5, 7)])
    assert h["type"] == REPLY, h
    assert struct.unpack("<2f", frames[0]) == (10.0, 14.0)
    # the cached nodes are untouched: the template still runs at size 4
    again = dict(body, patch=[], allocs_n=[], uploads=[[a + 2 * shift, 1]])
    again.update(binds_d=[2, 2 * shift], allocs_d=[2, 2 * shift], fetch=[[b + 2 * shift, 0, 16]])
    h, frames = session.call_raw(GRAPH_CACHED, again, frames=[_f32(1, 1, 1, 1)])
    assert h["type"] == REPLY, h
    assert struct.unpack("<4f", frames[0]) == (2.0, 2.0, 2.0, 2.0)


@pytest.mark.parametrize(
    "change, code, words",
    [
        ({"patch": [3, -2]}, E_PROTO, "GRAPH: node 0 (aten::add) has a malformed tensor reference"),
        ({"patch": [2, -5]}, E_PROTO, "GRAPH: node 0 (aten::add) has a malformed tensor reference"),
        ({"patch": [1, -1]}, E_PROTO, "GRAPH: node 0 (aten::add) has a malformed tensor reference"),
        (
            {"patch": [3, 1 << 62]},
            E_PROTO,
            "GRAPH: node 0 (aten::add) has a malformed tensor reference",
        ),
        ({"patch": [14, 1]}, E_PROTO, "patch names integer 13 but the cached fragment has 13"),
        ({"patch": [0, 1]}, E_PROTO, "'patch' must be [gap, value] integer pairs with gaps >= 1"),
        ({"binds_d": [3, 0]}, E_PROTO, "'binds_d' must cover the template's 2 binds"),
        ({"binds_d": [2, -(H0 + 0x60000)]}, E_PROTO, "'binds' must hold non-zero handles"),
        ({"allocs_d": [2, 1 << 62]}, E_PROTO, "client handles must be in [1, 2^62)"),
        ({"allocs_n": [3, 1]}, E_PROTO, "'allocs_n' names alloc 2 but the template has 2"),
        ({"tpl": 12345}, E_EVICTED, "plan cache miss"),
        # sizes patched past the storage: refused when the node runs, like any GRAPH
        ({"patch": [2, 4, 3, 4, 4, 4, 3, 4]}, E_ARGS, "reaches byte 32 but its storage holds 16"),
    ],
    ids=[
        "negative_stride",
        "negative_size",
        "negative_offset",
        "stride_overflow",
        "past_the_integers",
        "gap_zero",
        "binds_runs_too_long",
        "bind_zero",
        "alloc_server_handle",
        "alloc_past_template",
        "other_template",
        "past_the_storage",
    ],
)
def test_graph_cached_hostile_patch_is_refused(session, change, code, words):
    a, b = H0 + 0x60000, H0 + 0x60200
    tpl = _filed_add_out(session, a, b, [0x4141, 0x4242])
    c, d = a + 0x1000, b + 0x1000
    body = {
        "binds_d": [2, 0x1000],
        "allocs_d": [2, 0x1000],
        "uploads": [[c, 1]],
        "fetch": [[d, 0, 16]],
        "fp": [0x4141, 0x4242],
        "tpl": tpl,
    }
    body.update(change)
    assert_error(session.call_raw(GRAPH_CACHED, body, frames=[_f32(1, 1, 1, 1)]), code, words)
    if code != E_ARGS:  # refused before anything ran: the declared handle does not exist
        fetch = {"dev": 0, "fetch": [[c, 0, 16]], "resume": True}  # after E_EVICTED: 7.4
        assert_error(session.graph(fetch), E_HANDLE, "unknown handle")
    # the session and its cache entry still work
    ok = dict(body, tpl=tpl, patch=[], allocs_n=[], binds_d=[2, 0x2000], allocs_d=[2, 0x2000])
    ok.update(uploads=[[a + 0x2000, 1]], fetch=[[b + 0x2000, 0, 16]])
    h, frames = session.call_raw(GRAPH_CACHED, ok, frames=[_f32(1, 2, 3, 4)])
    assert h["type"] == REPLY, h
    assert struct.unpack("<4f", frames[0]) == (2.0, 4.0, 6.0, 8.0)


def test_graph_cached_by_pattern_sends_classes_of_deltas(session):
    """By pattern: positions over the integers (13), then the alloc sizes (2), then the
    binds (2), then the alloc handles (2), each with a class; only the classes' deltas
    change from step to step."""
    a, b = H0 + 0x80000, H0 + 0x80200
    tpl = _filed_add_out(session, a, b, [0x6161, 0x6262])
    pat = [2, 0, 3, 0, 4, 0, 3, 0, 2, 1, 1, 1, 1, 2, 1, 2]  # sizes, alloc sizes, binds
    body = {"allocs_d": [2, 0x1000], "uploads": [[a + 0x1000, 1]], "fp": [0x6161, 0x6262]}
    body.update(fetch=[[b + 0x1000, 0, 8]], tpl=tpl, pal=[-2, -8, 0x1000], pat=pat)
    h, frames = session.call_raw(GRAPH_CACHED, body, frames=[_f32(5, 6)])
    assert h["type"] == REPLY, h
    assert struct.unpack("<2f", frames[0]) == (10.0, 12.0)
    # a pattern the entry does not keep is a miss; classes the palette lacks are refused
    named = {k: v for k, v in body.items() if k != "pat"}
    assert_error(
        session.call_raw(GRAPH_CACHED, dict(named, pid=12345), frames=[_f32(5, 6)]),
        E_EVICTED,
        "holds no pattern",
    )
    body["resume"] = True  # the session's fragments wait for this resend (7.4)
    assert_error(
        session.call_raw(GRAPH_CACHED, dict(body, pal=[-2, -8]), frames=[_f32(5, 6)]),
        E_PROTO,
        "'pat' names a class 'pal' does not have",
    )
    assert_error(
        session.call_raw(GRAPH_CACHED, dict(body, pat=pat + [3, 0]), frames=[_f32(5, 6)]),
        E_PROTO,
        "'pat' names value 19 but the template has 19",
    )


def test_graph_cached_by_pattern_moves_the_handles_and_implies_the_template(session):
    """The alloc handles (positions 17, 18) move by the pattern, so no 'allocs_d'; once the
    entry keeps the pattern, 'pid' alone names it, without 'tpl' (version 6, 7.4)."""
    a, b = H0 + 0x90000, H0 + 0x90200
    tpl = _filed_add_out(session, a, b, [0x7171, 0x7272])
    pat = [2, 0, 3, 0, 4, 0, 3, 0, 2, 1, 1, 1, 1, 2, 1, 2, 1, 2, 1, 2]
    pairs = list(zip(*[iter(pat)] * 2))
    positions = [sum(g for g, _ in pairs[: i + 1]) - 1 for i in range(len(pairs))]
    pid = _proto.pattern_hash([(p, c) for p, (_, c) in zip(positions, pairs)])
    for step, shift in enumerate((0x1000, 0x2000, 0x3000)):
        body = {"uploads": [[a + shift, 1]], "fetch": [[b + shift, 0, 8]], "fp": [0x7171, 0x7272]}
        if step == 0:
            body.update(tpl=tpl, pal=[-2, -8, shift], pat=pat)
        else:
            body.update(pal=[-2, -8, shift], pid=pid)  # no 'tpl', no 'allocs_d'
        h, frames = session.call_raw(GRAPH_CACHED, body, frames=[_f32(5 + step, 6)])
        assert h["type"] == REPLY, h
        assert struct.unpack("<2f", frames[0]) == (10.0 + 2 * step, 12.0)
        h, _ = session.call_raw(GRAPH, {"frees": [a + shift, b + shift]})
        assert h["type"] == REPLY, h
    # without 'tpl', a pattern must be named, not sent
    assert_error(
        session.call_raw(
            GRAPH_CACHED,
            {**{k: v for k, v in body.items() if k != "pid"}, "pat": pat},
            frames=[_f32(1, 1)],
        ),
        E_PROTO,
        "'patch', 'allocs_n', 'pat' and the '_d' fields need 'tpl'",
    )


def test_graph_filed_again_with_another_template_replaces_the_entry(session):
    a, b = H0 + 0x70000, H0 + 0x70200
    old = _filed_add_out(session, a, b, [0x5151, 0x5252])
    new = _filed_add_out(session, a + 0x1000, b + 0x1000, [0x5151, 0x5252])
    assert old != new
    body = {"binds_d": [2, 0x1000], "allocs_d": [2, 0x1000], "uploads": [[a + 0x2000, 1]]}
    body.update(fp=[0x5151, 0x5252], fetch=[[b + 0x2000, 0, 16]])
    assert_error(
        session.call_raw(GRAPH_CACHED, dict(body, tpl=old), frames=[_f32(1, 1, 1, 1)]),
        E_EVICTED,
        "another template",
    )
    resend = dict(body, tpl=new, resume=True)  # the session's fragments wait for it (7.4)
    h, frames = session.call_raw(GRAPH_CACHED, resend, frames=[_f32(1, 1, 1, 1)])
    assert h["type"] == REPLY, h
    assert struct.unpack("<4f", frames[0]) == (2.0, 2.0, 2.0, 2.0)


def test_graph_cached_is_per_session(server, zctx):
    """A fragment one session cached cannot be run, or replaced, by another."""
    a, b = Raw(server, zctx), Raw(server, zctx)
    try:
        a.hello()
        b.hello()
        body = _add_out_graph(0xA000, 0xA100)
        body["fp"] = [0x4242, 0x4343]
        h, _ = a.graph(body, frames=[_f32(1, 1, 1, 1)])
        assert h["type"] == REPLY, h
        cached = {
            "dev": 0,
            "binds": [0xB000, 0xB100],
            "allocs": [[0xB000, 16], [0xB100, 16]],
            "uploads": [[0xB000, 1]],
            "fp": [0x4242, 0x4343],
        }
        assert_error(
            b.call(GRAPH_CACHED, cached, frames=[_f32(1, 1, 1, 1)]), E_EVICTED, "plan cache miss"
        )
    finally:
        a.close()
        b.close()


# ------------------------------------------------------------------ fetches at the edges (issue 16)
# Every fetch is bounded by the storage the handle really has at that moment: a lazy
# declaration (its declared size, read as zeros), uploaded bytes, shared Text, a kernel's
# result, an efficient zero tensor (whose storage holds nothing); an out= storage the
# kernel grew past its declaration is refused, never read. A fetch succeeds exactly when [offset, offset + n)
# lies inside it, and returns the bytes CPU would; anything else is E_ARGS naming the
# real size, and the server goes on.

_U64 = (1 << 64) - 1
_FETCH_SIZES = [0, 4, 16, 4096]


def _edges(size):
    offs = sorted({0, 1, size // 2, max(size - 1, 0), size, size + 1, 1 << 63, _U64})
    lens = sorted({0, 1, 3, max(size - 1, 0), size, size + 1, 1 << 63, _U64})
    return [(o, n) for o in offs for n in lens]


def _storage_kinds(session, size, base):
    """(name, handle, expected bytes) of storages of `size` bytes made every way a client can."""
    n = size // 4
    data = bytes(((i * 37 + 11) & 0xFF) for i in range(size))
    x = torch.frombuffer(bytearray(data), dtype=torch.float32) if size else torch.empty(0)
    h = [base + k for k in range(1, 10)]
    t = lambda slot, m=n: tref(slot, F32, [m])  # noqa: E731
    grown = n + 3  # the out= argument is declared with n elements; add.out resizes it
    body = {
        "binds": h,
        "allocs": [[h[0], size], [h[1], size], [h[3], size], [h[4], size]],
        "uploads": [[h[1], 1], [h[2], 1, True]],
        "nodes": [
            ["aten::add", "out", [t(1), t(1), 1, t(3)], [t(3)], 0],
            ["aten::_efficientzerotensor", "", [[n], F32, None, None, None], [t(4)], 0],
        ],
        "fetch": [],
    }
    ybody = {"binds": [h[6]], "allocs": [[h[6], 4 * grown]], "uploads": [[h[6], 1]]}
    y = torch.arange(grown, dtype=torch.float32)
    hy, _ = session.graph(ybody, frames=[y.numpy().tobytes()])
    assert hy["type"] == REPLY, hy
    r, _ = session.graph(body, frames=[data])
    assert r["type"] == REPLY, r
    # an out= argument the kernel grows past its declaration is never reinterpreted (one
    # declared empty is an output the client holds no element of: nothing to bind)
    grow = ["aten::add", "out", [t(1, grown), t(1, grown), 1, t(0)], [t(0)], 0]
    if n:
        assert_error(
            session.graph({"binds": [h[5], h[6]], "allocs": [[h[5], size]], "nodes": [grow]}),
            E_OP,
            f"returned an output of shape [{grown}] where the client expects [{n}]",
        )
        assert_error(
            session.graph({"fetch": [[h[5], 0, 0]]}),
            E_OP,
            "never computed because an earlier op failed",
        )
    return [
        ("lazy", h[0], bytes(size)),
        ("uploaded", h[1], data),
        ("text", h[2], data),
        ("computed", h[3], (x + x).numpy().tobytes()),
        ("zerotensor", h[4], bytes(size)),
    ]


@pytest.mark.parametrize("size", _FETCH_SIZES)
def test_fetches_at_every_edge_are_bounded_by_the_real_storage(session, size):
    kinds = _storage_kinds(session, size, H0 + 0xF00000 + size * 16)
    for name, handle, expect in kinds:
        real = len(expect)
        for off, n in _edges(size):
            r = session.graph({"fetch": [[handle, off, n]]})
            if off <= real and n <= real - off:
                assert r[0]["type"] == REPLY, (name, off, n, r[0])
                assert r[1] == [expect[off : off + n]], (name, off, n)
            elif n >= 1 << 63:  # past the server's per-tensor limit: refused before any lookup
                assert_error(r, E_LIMIT, f"fetch of {n} bytes exceeds the limit")
            else:
                assert_error(r, E_ARGS, f"beyond a storage of {real} bytes")
