// Proto.cpp: djinn._C._proto, the wire protocol's encoders for Python tools and tests.
//
// Python tests that speak the protocol by hand build their messages here, with the same
// encoders the client and server use (csrc/common/djn_msgs.c), instead of writing the
// layout a second time. Values convert as: None, bool, int, float, complex, str, bytes,
// list/tuple, and any object with a `_djn_tref` attribute
// (slot_or_handle, offset, dtype, sizes, strides) for a tensor reference.
#include <torch/extension.h>

#include <deque>

#include "djn_sym.h"
#include "remote.h"

namespace py = pybind11;

namespace djinn {
namespace {

// Everything a converted message points at lives here until it is encoded.
struct Pool {
    std::deque<std::string> strs;
    std::deque<std::vector<djn_value_t>> vals;
    std::deque<djn_tref_t> trefs;
    std::deque<std::vector<uint64_t>> u64s;
    std::vector<djn_alloc_t> allocs;
    std::vector<djn_upload_t> ups;
    std::vector<djn_fetch_t> fetches;
    std::vector<djn_node_t> nodes;
    std::vector<djn_have_item_t> items;

    const char *str(const std::string &s) { return strs.emplace_back(s).c_str(); }
};

djn_value_t to_value(Pool &p, py::handle o, int depth = 0) {
    TORCH_CHECK(depth < 64, "djinn._proto: value nested too deeply");
    djn_value_t v{};
    if (o.is_none()) {
        v.kind = DJN_V_NONE;
    } else if (py::isinstance<py::bool_>(o)) {
        v.kind = DJN_V_BOOL;
        v.u.b = o.cast<bool>();
    } else if (py::isinstance<py::int_>(o)) {
        v.kind = DJN_V_INT;
        v.u.i = o.cast<int64_t>();
    } else if (py::isinstance<py::float_>(o)) {
        v.kind = DJN_V_FLOAT;
        v.u.f = o.cast<double>();
    } else if (PyComplex_Check(o.ptr())) {
        v.kind = DJN_V_COMPLEX;
        v.u.c[0] = PyComplex_RealAsDouble(o.ptr());
        v.u.c[1] = PyComplex_ImagAsDouble(o.ptr());
    } else if (py::isinstance<py::str>(o) || py::isinstance<py::bytes>(o)) {
        std::string s =
            py::isinstance<py::str>(o) ? o.cast<std::string>() : std::string(o.cast<py::bytes>());
        v.kind = py::isinstance<py::str>(o) ? DJN_V_STR : DJN_V_BIN;
        v.len = (uint32_t)s.size();
        v.u.s = p.str(s);
    } else if (py::hasattr(o, "_djn_tref")) {
        auto t = o.attr("_djn_tref").cast<py::sequence>();
        djn_tref_t r{};
        r.handle = t[0].cast<uint64_t>();
        r.offset = t[1].cast<int64_t>();
        r.dtype = t[2].cast<uint8_t>();
        auto sizes = t[3].cast<std::vector<int64_t>>(), strides = t[4].cast<std::vector<int64_t>>();
        TORCH_CHECK(sizes.size() <= DJN_MAX_DIMS && sizes.size() == strides.size(),
                    "djinn._proto: bad tref");
        r.ndim = (uint8_t)sizes.size();
        std::copy(sizes.begin(), sizes.end(), r.sizes);
        std::copy(strides.begin(), strides.end(), r.strides);
        v.kind = DJN_V_TENSOR;
        v.u.t = &p.trefs.emplace_back(r);
    } else if (py::isinstance<py::dict>(o)) {
        auto d = py::reinterpret_borrow<py::dict>(o);
        auto &items = p.vals.emplace_back();
        for (auto kv : d) {
            items.push_back(to_value(p, kv.first, depth + 1));
            items.push_back(to_value(p, kv.second, depth + 1));
        }
        v.kind = DJN_V_MAP;
        v.len = (uint32_t)d.size();
        v.u.items = items.data();
    } else if (py::isinstance<py::list>(o) || py::isinstance<py::tuple>(o)) {
        auto seq = py::reinterpret_borrow<py::sequence>(o);
        auto &items = p.vals.emplace_back();
        for (auto x : seq)
            items.push_back(to_value(p, x, depth + 1));
        v.kind = DJN_V_LIST;
        v.len = (uint32_t)items.size();
        v.u.items = items.data();
    } else {
        TORCH_CHECK(false, "djinn._proto: cannot encode a ", std::string(py::str(py::type::of(o))));
    }
    return v;
}

template <class T> T get(const py::dict &d, const char *k, T dflt) {
    return d.contains(k) ? d[k].cast<T>() : dflt;
}

py::bytes encode(int type, uint64_t sid, uint64_t seq, const py::dict &body) {
    Pool p;
    djn_buf_t b{};
    djn_msg_hdr_t hdr{(uint8_t)type, sid, seq};
    switch (type) {
    case DJN_MSG_HELLO: {
        djn_hello_req_t r{get<uint32_t>(body, "version", DJN_PROTO_VERSION),
                          p.str(get<std::string>(body, "client", ""))};
        djn_hello_req_encode(&b, &hdr, &r);
        break;
    }
    case DJN_MSG_GRAPH:
    case DJN_MSG_GRAPH_CACHED:
    case DJN_MSG_FETCH: {
        djn_graph_req_t g{};
        g.device = get<uint32_t>(body, "dev", 0);
        g.seed =
            body.contains("seed") && !body["seed"].is_none() ? body["seed"].cast<int64_t>() : -1;
        auto &binds = p.u64s.emplace_back(get<std::vector<uint64_t>>(body, "binds", {}));
        g.nbinds = (uint32_t)binds.size();
        g.binds = binds.data();
        auto fp = get<std::vector<uint64_t>>(body, "fp", {0, 0});
        TORCH_CHECK(fp.size() == 2, "djinn._proto: fp is [hi, lo]");
        g.fp[0] = fp[0];
        g.fp[1] = fp[1];
        g.qos = get<uint8_t>(body, "qos", 0);
        g.phase = get<uint8_t>(body, "phase", 0);
        auto life = get<std::vector<uint32_t>>(body, "life", {0, 0});
        TORCH_CHECK(life.size() == 2, "djinn._proto: life is [kept, transient]");
        g.life_kept = life[0];
        g.life_transient = life[1];
        g.resume = get<bool>(body, "resume", false);
        for (auto a : get<py::list>(body, "allocs", py::list())) {
            auto t = a.cast<py::sequence>();
            p.allocs.push_back({t[0].cast<uint64_t>(), t[1].cast<uint64_t>()});
        }
        for (auto a : get<py::list>(body, "uploads", py::list())) {
            auto t = a.cast<py::sequence>(); // [handle, frame(, text(, offset, total))]
            bool chunk = t.size() == 5;
            p.ups.push_back({t[0].cast<uint64_t>(), t[1].cast<uint32_t>(),
                             t.size() > 2 && t[2].cast<bool>(), chunk,
                             chunk ? t[3].cast<uint64_t>() : 0, chunk ? t[4].cast<uint64_t>() : 0});
        }
        for (auto n : get<py::list>(body, "nodes", py::list())) {
            auto t = n.cast<py::sequence>();
            TORCH_CHECK(t.size() == 5, "djinn._proto: a node is (op, overload, args, outs, flags)");
            djn_node_t node{};
            node.op = p.str(t[0].cast<std::string>());
            node.overload = p.str(t[1].cast<std::string>());
            djn_value_t args = to_value(p, t[2]), outs = to_value(p, t[3]);
            node.nargs = args.len;
            node.args = args.u.items;
            node.nouts = outs.len;
            node.outs = outs.u.items;
            node.flags = t[4].cast<uint32_t>();
            p.nodes.push_back(node);
        }
        auto &frees = p.u64s.emplace_back(get<std::vector<uint64_t>>(body, "frees", {}));
        for (auto f : get<py::list>(body, "fetch", py::list())) {
            auto t = f.cast<py::sequence>();
            p.fetches.push_back(
                {t[0].cast<uint64_t>(), t[1].cast<uint64_t>(), t[2].cast<uint64_t>()});
        }
        g.nallocs = (uint32_t)p.allocs.size();
        g.allocs = p.allocs.data();
        g.nuploads = (uint32_t)p.ups.size();
        g.uploads = p.ups.data();
        g.nnodes = (uint32_t)p.nodes.size();
        g.nodes = p.nodes.data();
        g.nfrees = (uint32_t)frees.size();
        g.frees = frees.data();
        g.nfetches = (uint32_t)p.fetches.size();
        g.fetches = p.fetches.data();
        djn_graph_req_encode(&b, &hdr, &g);
        break;
    }
    case DJN_MSG_HAVE: {
        for (auto it : get<py::list>(body, "items", py::list())) {
            auto t = it.cast<py::sequence>();
            p.items.push_back({t[0].cast<uint64_t>(), t[1].cast<uint64_t>(), t[2].cast<uint64_t>(),
                               t[3].cast<uint64_t>()});
        }
        djn_have_req_t h{get<uint32_t>(body, "dev", 0), (uint32_t)p.items.size(), p.items.data()};
        djn_have_req_encode(&b, &hdr, &h);
        break;
    }
    case DJN_MSG_PLACE: {
        std::vector<djn_place_hash_t> hs;
        for (auto it : get<py::list>(body, "hashes", py::list())) {
            auto t = it.cast<py::sequence>();
            hs.push_back({t[0].cast<uint64_t>(), t[1].cast<uint64_t>(), t[2].cast<uint64_t>()});
        }
        djn_place_req_t r{body.contains("model") ? p.str(body["model"].cast<std::string>())
                                                 : nullptr,
                          (uint32_t)hs.size(), hs.data(), get<bool>(body, "probe", false)};
        djn_place_req_encode(&b, &hdr, &r);
        break;
    }
    default:
        djn_empty_encode(&b, &hdr);
        break;
    }
    TORCH_CHECK(!b.failed, "djinn._proto: out of memory encoding");
    py::bytes out(reinterpret_cast<const char *>(b.data), b.len);
    djn_buf_release(&b);
    return out;
}

/* The template digest of a fragment (docs/PROTOCOL.md 7.4), for tests that send
 * GRAPH_CACHED against a template by hand. allocs: [(handle, nbytes), ...]. */
uint64_t sym_digest(const std::vector<int64_t> &ints, const std::vector<uint64_t> &binds,
                    const std::vector<std::pair<uint64_t, uint64_t>> &allocs,
                    const std::vector<uint64_t> &frees) {
    std::vector<djn_alloc_t> a;
    for (auto &[h, n] : allocs)
        a.push_back({h, n});
    return djn_sym_digest(ints.data(), (uint32_t)ints.size(), binds.data(), (uint32_t)binds.size(),
                          a.data(), (uint32_t)a.size(), frees.data(), (uint32_t)frees.size());
}

/* The hash of a pattern (djn_sym_pattern_hash): what `pid` names. pat: [(pos, class)]. */
uint64_t pattern_hash(const std::vector<std::pair<uint32_t, int64_t>> &pat) {
    std::vector<djn_sym_patch_t> p;
    for (auto &[pos, cls] : pat)
        p.push_back({pos, cls});
    return djn_sym_pattern_hash(p.data(), (uint32_t)p.size());
}

} // namespace

void register_proto(py::module_ &m) {
    auto pm = m.def_submodule("_proto", "the wire protocol's encoders (csrc/common/djn_msgs.c)");
    pm.def("encode", &encode, py::arg("type"), py::arg("sid"), py::arg("seq"),
           py::arg("body") = py::dict(),
           "Encode frame 0 of a request with the protocol's own encoder.");
    pm.def("sym_digest", &sym_digest, py::arg("ints"), py::arg("binds"), py::arg("allocs"),
           py::arg("frees"), "The template digest of a fragment (djn_sym_digest).");
    pm.def("pattern_hash", &pattern_hash, py::arg("pat"),
           "The hash of a pattern of (position, class) pairs (djn_sym_pattern_hash).");
    py::dict k;
    k["VERSION"] = DJN_PROTO_VERSION;
    k["HELLO"] = (int)DJN_MSG_HELLO;
    k["HEARTBEAT"] = (int)DJN_MSG_HEARTBEAT;
    k["GRAPH"] = (int)DJN_MSG_GRAPH;
    k["GRAPH_CACHED"] = (int)DJN_MSG_GRAPH_CACHED;
    k["UPLOAD"] = (int)DJN_MSG_UPLOAD;
    k["HAVE"] = (int)DJN_MSG_HAVE;
    k["FETCH"] = (int)DJN_MSG_FETCH;
    k["LOAD_MODEL"] = (int)DJN_MSG_LOAD_MODEL;
    k["STATS"] = (int)DJN_MSG_STATS;
    k["CLOSE"] = (int)DJN_MSG_CLOSE;
    k["PLACE"] = (int)DJN_MSG_PLACE;
    k["MAX_PLACE_HASHES"] = DJN_MAX_PLACE_HASHES;
    k["REPLY"] = (int)DJN_MSG_REPLY;
    k["ERROR"] = (int)DJN_MSG_ERROR;
    k["NODE_DYNAMIC"] = DJN_NODE_DYNAMIC;
    k["MAX_HEADER_BYTES"] = DJN_MAX_HEADER_BYTES;
    k["MAX_FRAMES"] = DJN_MAX_FRAMES;
    k["MAX_NODES"] = DJN_MAX_NODES;
    k["MAX_ITEMS"] = DJN_MAX_ITEMS;
    k["MAX_DEPTH"] = DJN_MAX_DEPTH;
    k["MAX_DIMS"] = DJN_MAX_DIMS;
    k["MAX_NAME"] = DJN_MAX_NAME;
    k["MAX_DEVICES"] = DJN_MAX_DEVICES;
    k["HANDLE_CLIENT_END"] = DJN_HANDLE_CLIENT_END;
    k["HANDLE_SERVER_BASE"] = DJN_HANDLE_SERVER_BASE;
    k["EXT_TENSOR"] = DJN_EXT_TENSOR;
    k["EXT_COMPLEX"] = DJN_EXT_COMPLEX;
    k["QOS_AUTO"] = (int)DJN_QOS_AUTO;
    k["QOS_REALTIME"] = (int)DJN_QOS_REALTIME;
    k["QOS_INTERACTIVE"] = (int)DJN_QOS_INTERACTIVE;
    k["QOS_BATCH"] = (int)DJN_QOS_BATCH;
    k["PHASE_NONE"] = (int)DJN_PHASE_NONE;
    k["PHASE_PREFILL"] = (int)DJN_PHASE_PREFILL;
    k["PHASE_DECODE"] = (int)DJN_PHASE_DECODE;
    k["PHASE_TRAINING"] = (int)DJN_PHASE_TRAINING;
    pm.attr("constants") = k;
    py::dict codes;
    for (int st = DJN_OK; st < DJN_STATUS_COUNT; st++)
        codes[djn_status_name((djn_status_t)st)] = st;
    pm.attr("status") = codes;
}

} // namespace djinn
