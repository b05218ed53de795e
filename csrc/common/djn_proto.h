/* djn_proto.h: the Djinn wire protocol, in one place (docs/PROTOCOL.md says the same).
 *
 * A request is one ZeroMQ multipart message: frame 0 is a msgpack map
 *   { "type": u8, "sid": u64, "seq": u64, "body": map }
 * and frames 1..n are raw tensor bytes that the body refers to by index. A reply has
 * the same shape with type DJN_MSG_REPLY or DJN_MSG_ERROR and the request's seq.
 *
 * Every message has a typed request struct and, where it answers with more than an
 * empty map, a typed reply struct below; djn_codec.h has one encoder and one decoder for
 * each, and nothing else writes or reads a message. Message numbers, dtype codes and
 * status codes are frozen: append, never renumber. Any change a peer could misread
 * bumps DJN_PROTO_VERSION; HELLO refuses a mismatch.
 *
 * Values. Operator arguments travel as plain msgpack values (nil, bool, int, float,
 * str, array) plus two extension types:
 *   ext DJN_EXT_TENSOR : a tensor reference, little-endian packed
 *                        u64 handle | i64 storage_offset (elements) | u8 dtype | u8 ndim
 *                        | i64 sizes[ndim] | i64 strides[ndim]
 *   ext DJN_EXT_COMPLEX: two little-endian float64, real then imaginary.
 * The receiver types every value by the operator's schema (a number where a Tensor is
 * expected is a wrapped-number scalar, an int array where int[] is expected...).
 *
 * After decoding, the server core sees only the plain C structs below: djn_value_t trees
 * and typed request structs. Nothing outside djn_codec.c includes msgpack.h. */
#ifndef DJN_PROTO_H
#define DJN_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "djn_status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DJN_PROTO_VERSION 6

/* ---- message types (frozen) ---- */
typedef enum djn_msg_type {
    DJN_MSG_HELLO = 1,        /* open a session */
    DJN_MSG_HEARTBEAT = 2,    /* renew the session's lease */
    DJN_MSG_GRAPH = 3,        /* execute a fragment: allocs, uploads, nodes, frees, fetches */
    DJN_MSG_GRAPH_CACHED = 4, /* execute a fragment the server holds: GRAPH without nodes */
    DJN_MSG_UPLOAD = 5,       /* reserved */
    DJN_MSG_HAVE = 6,         /* bind handles to Text content this tenant uploaded before */
    DJN_MSG_FETCH = 7,        /* read bytes of a handle (a GRAPH with only fetches) */
    DJN_MSG_LOAD_MODEL = 8,   /* describe a model of the server's store, or bind handles to it */
    DJN_MSG_STATS = 9,        /* counters: the session's, and the server's for operators */
    DJN_MSG_CLOSE = 10,       /* close the session, freeing everything it holds */
    DJN_MSG_PLACE = 11,       /* which device should this session use by default? */
    DJN_MSG_REPLY = 64,
    DJN_MSG_ERROR = 65,
} djn_msg_type_t;

/* ---- limits, checked before anything is allocated ---- */
#define DJN_MAX_HEADER_BYTES (16u << 20)   /* frame 0 */
#define DJN_MAX_FRAMES 4096u               /* frames after the header */
#define DJN_MAX_TENSOR_BYTES (64ull << 30) /* default; the server flag may lower it */
#define DJN_MAX_NODES 65536u               /* nodes in one GRAPH */
#define DJN_MAX_ITEMS 65536u               /* elements of any one array or map */
#define DJN_MAX_DEPTH 8                    /* nesting of arrays/maps */
#define DJN_MAX_DIMS 16                    /* tensor rank */
#define DJN_MAX_NAME 256                   /* operator name bytes */
#define DJN_MAX_OBJECTS (1u << 22)         /* msgpack objects in one header */
#define DJN_MAX_DEVICES 64                 /* devices of one server */
#define DJN_MAX_TENSOR_NAME 512            /* a model tensor's name, bytes */
#define DJN_MAX_OPEN_UPLOADS 8             /* uploads one session has arriving in chunks */
#define DJN_MAX_PLACE_HASHES 64            /* content hashes in one PLACE */

/* ---- fragment semantics (GRAPH's optional `qos`, `phase`, `life`; frozen) ----
 * The client's word about what a fragment is. The server schedules by the class (an
 * absent `qos` means DJN_QOS_AUTO: the server derives it from the phase, see
 * PROTOCOL.md 7.6); the phase and the lifecycle summary are reported, never trusted for
 * memory safety. */
typedef enum djn_qos {
    DJN_QOS_AUTO = 0,
    DJN_QOS_REALTIME = 1, /* only for tenants the server allows (`realtime` right) */
    DJN_QOS_INTERACTIVE = 2,
    DJN_QOS_BATCH = 3,
} djn_qos_t;
#define DJN_QOS_MAX DJN_QOS_BATCH
typedef enum djn_phase {
    DJN_PHASE_NONE = 0,
    DJN_PHASE_PREFILL = 1,  /* attention over a whole prompt */
    DJN_PHASE_DECODE = 2,   /* attention of one new token against a longer key */
    DJN_PHASE_TRAINING = 3, /* backward ops */
} djn_phase_t;
#define DJN_PHASE_MAX DJN_PHASE_TRAINING

/* ---- handle space ----
 * A handle names a storage of one session. The client picks its own handles in
 * [1, DJN_HANDLE_CLIENT_END); the server issues handles for results whose size it alone
 * knows (data-dependent ops) at DJN_HANDLE_SERVER_BASE and above, with the low
 * DJN_HANDLE_SID_BITS of the session id at DJN_HANDLE_SID_SHIFT, so a client can tell a
 * server handle of a session it lost from one of its current session. */
#define DJN_HANDLE_CLIENT_END (1ull << 62)
#define DJN_HANDLE_SERVER_BASE (1ull << 62)
#define DJN_HANDLE_SID_SHIFT 40
#define DJN_HANDLE_SID_MASK 0xFFFFFull

static inline bool djn_handle_is_client(uint64_t h) {
    return h != 0 && h < DJN_HANDLE_CLIENT_END;
}
static inline uint64_t djn_handle_server_base(uint64_t sid) {
    return DJN_HANDLE_SERVER_BASE | ((sid & DJN_HANDLE_SID_MASK) << DJN_HANDLE_SID_SHIFT);
}
static inline bool djn_handle_of_session(uint64_t h, uint64_t sid) {
    return ((h >> DJN_HANDLE_SID_SHIFT) & DJN_HANDLE_SID_MASK) == (sid & DJN_HANDLE_SID_MASK);
}

/* ---- extension types ---- */
#define DJN_EXT_TENSOR 1
#define DJN_EXT_COMPLEX 2

/* ---- dtype codes (frozen; equal to c10::ScalarType numbering, checked at build) ---- */
typedef enum djn_dtype {
    DJN_DTYPE_U8 = 0,
    DJN_DTYPE_I8 = 1,
    DJN_DTYPE_I16 = 2,
    DJN_DTYPE_I32 = 3,
    DJN_DTYPE_I64 = 4,
    DJN_DTYPE_F16 = 5,
    DJN_DTYPE_F32 = 6,
    DJN_DTYPE_F64 = 7,
    DJN_DTYPE_C32 = 8,
    DJN_DTYPE_C64 = 9,
    DJN_DTYPE_C128 = 10,
    DJN_DTYPE_BOOL = 11,
    DJN_DTYPE_BF16 = 15,
    DJN_DTYPE_F8_E5M2 = 23,
    DJN_DTYPE_F8_E4M3FN = 24,
    DJN_DTYPE_F8_E5M2FNUZ = 25,
    DJN_DTYPE_F8_E4M3FNUZ = 26,
    DJN_DTYPE_U16 = 27,
    DJN_DTYPE_U32 = 28,
    DJN_DTYPE_U64 = 29,
    DJN_DTYPE_F8_E8M0FNU = 44,
} djn_dtype_t;

/* Element size in bytes, 0 for a code we do not carry. */
size_t djn_dtype_size(uint32_t dtype);

/* ---- decoded values ---- */
typedef enum djn_vkind {
    DJN_V_NONE = 0,
    DJN_V_BOOL,
    DJN_V_INT,
    DJN_V_FLOAT,
    DJN_V_COMPLEX,
    DJN_V_STR,
    DJN_V_BIN,
    DJN_V_LIST,
    DJN_V_MAP,
    DJN_V_TENSOR,
} djn_vkind_t;

typedef struct djn_tref {
    uint64_t handle;
    int64_t offset; /* storage offset, in elements */
    uint8_t dtype;
    uint8_t ndim;
    int64_t sizes[DJN_MAX_DIMS];
    int64_t strides[DJN_MAX_DIMS];
} djn_tref_t;

typedef struct djn_value djn_value_t;
struct djn_value {
    uint8_t kind; /* djn_vkind_t */
    uint32_t len; /* STR/BIN bytes, LIST items, MAP pairs */
    union {
        bool b;
        int64_t i;
        double f;
        double c[2];
        const char *s;      /* STR (NUL-terminated after len bytes) and BIN */
        djn_value_t *items; /* LIST: len items; MAP: 2*len (key, value, key, ...) */
        djn_tref_t *t;
    } u;
};

/* Byte extent [*begin, *end) a reference touches in its storage. False if the reference
 * is malformed: unknown dtype, rank above DJN_MAX_DIMS, a negative size, stride or
 * offset (PyTorch has no negative strides, and ATen would store their magnitude), or a
 * span that overflows. */
bool djn_tref_extent(const djn_tref_t *t, uint64_t *begin, uint64_t *end);

/* ---- requests ---- */
typedef struct djn_msg_hdr {
    uint8_t type;
    uint64_t sid, seq;
} djn_msg_hdr_t;

/* HELLO: open a session. */
typedef struct djn_hello_req {
    uint32_t version;
    const char *client; /* free text: "djinn-client pid 1234" */
} djn_hello_req_t;

/* A node: one operator call, [op, overload, [args], [outs], flags] on the wire. */
#define DJN_NODE_DYNAMIC 1u /* server reports the results' metadata (data-dependent op) */

typedef struct djn_node {
    const char *op;       /* "aten::add" (NUL-terminated, in the message arena) */
    const char *overload; /* "out" or "" */
    uint32_t nargs, nouts;
    /* Tensor references carry a slot: the handle is binds[slot] of the message run. */
    djn_value_t *args; /* in schema order, every argument present */
    djn_value_t *outs; /* per schema return: TENSOR ref, NONE, LIST of refs */
    uint32_t flags;
} djn_node_t;

typedef struct djn_alloc {
    uint64_t handle, nbytes;
} djn_alloc_t;
typedef struct djn_upload {
    uint64_t handle;
    uint32_t frame; /* 1-based index of the data frame */
    bool text;      /* shared content: deduplicated in the Text segment */
    /* a chunk of an upload of `total` bytes arriving in several messages: the frame's
     * bytes go at byte `offset` (PROTOCOL.md 7.7); false: the frame is the whole upload */
    bool chunk;
    uint64_t offset, total;
} djn_upload_t;
typedef struct djn_fetch {
    uint64_t handle, offset, nbytes;
} djn_fetch_t;

/* GRAPH_CACHED against its template (djn_sym.h, docs/PROTOCOL.md 7.4): an integer that
 * differs from the template's, and a run of `count` handles that differ from the
 * template's by `delta` (wrapping). */
typedef struct djn_sym_patch {
    uint32_t pos;
    int64_t val;
} djn_sym_patch_t;
typedef struct djn_sym_run {
    uint64_t count;
    int64_t delta;
} djn_sym_run_t;

/* GRAPH, GRAPH_CACHED (no nodes: the server's cached ones run) and FETCH. */
typedef struct djn_graph_req {
    uint32_t device;
    uint32_t nbinds, nslots; /* slots named by nodes: nslots <= nbinds (decoder output) */
    const uint64_t *binds;   /* slot -> handle */
    uint64_t fp[2];          /* fingerprint of the nodes (XXH3-128), 0 if absent */
    int64_t seed;            /* >= 0: reseed the session's generator before running */
    uint32_t nallocs, nuploads, nnodes, nfrees, nfetches;
    const djn_alloc_t *allocs;
    const djn_upload_t *uploads;
    const djn_node_t *nodes;
    const uint64_t *frees;
    const djn_fetch_t *fetches;
    /* GRAPH_CACHED only: the template named by its digest (0: none, the cached nodes run
     * as filed) and what differs from it; a has_* flag set means the compact field
     * replaces the plain one (which must then be absent). */
    uint64_t tpl;
    uint32_t npatch, nallocs_n, nbinds_d, nallocs_d, nfrees_d;
    const djn_sym_patch_t *patch;    /* integers of the nodes */
    const djn_sym_patch_t *allocs_n; /* allocation sizes (needs allocs_d) */
    const djn_sym_run_t *binds_d, *allocs_d, *frees_d;
    bool has_binds_d, has_allocs_d, has_frees_d;
    /* GRAPH_CACHED by pattern: the integers, allocation sizes, binds, allocation handles
     * and frees that differ, as classes of equal deltas: pal[class] is a class's delta;
     * pat (position, class) says which values are in which class and is kept by the
     * entry; pid names the pattern the entry keeps (its hash) instead of sending it
     * again, and then `tpl` may be left out (the kept pattern was checked against the
     * entry's template). */
    uint32_t npal, npat;
    const int64_t *pal;
    const djn_sym_patch_t *pat; /* val: the class */
    uint64_t pid;
    bool has_pat;
    /* Semantics (0 when absent): the class asked for, the phase, and the lifecycle
     * summary: nodes with a result the client keeps, nodes whose results all die in the
     * fragment. */
    uint8_t qos, phase;
    uint32_t life_kept, life_transient;
    /* A GRAPH_CACHED against a template (tpl or pal) whose semantics are its entry's
     * (those of the GRAPH that filed it): the encoder leaves qos/phase/life out; the
     * decoder sets it when none of them is there, and the server then takes the entry's. */
    bool sem_tpl;
    /* The resend of a fragment after an E_EVICTED answer (7.4): it ends the refusal of the
     * session's later fragments. */
    bool resume;
    /* Encoding only: nodes already encoded as msgpack (the client's recorder writes
     * them as ops are captured); used instead of `nodes` when set. */
    const uint8_t *nodes_raw;
    size_t nodes_raw_len;
} djn_graph_req_t;

/* HAVE: bind handles to content this tenant uploaded before, by its XXH3-128. */
typedef struct djn_have_item {
    uint64_t handle, hi, lo, nbytes;
} djn_have_item_t;
typedef struct djn_have_req {
    uint32_t device;
    uint32_t nitems;
    const djn_have_item_t *items;
} djn_have_req_t;

/* LOAD_MODEL (ghost loading, docs/PROTOCOL.md "Ghost loading"): with no binds, describe
 * the model `name` of the server's store (its config and tensors); with binds, bind each
 * client handle to the model tensor of that name, shared read-only Text the server read
 * from its own files. Both run on the device's worker queue, in order with fragments. */
typedef struct djn_model_bind {
    const char *name; /* tensor name, as in the checkpoint */
    uint64_t handle;  /* a client handle the session does not hold yet */
} djn_model_bind_t;
typedef struct djn_load_req {
    uint32_t device;
    const char *name; /* model name, as the server lists it */
    uint32_t nbinds;
    const djn_model_bind_t *binds;
} djn_load_req_t;

/* PLACE (docs/PROTOCOL.md 5.6): the client asks which of the server's devices its
 * session should use for 'remote' without an index. Hints: the model it is about to
 * load from the server's store, and content hashes (plain XXH3-128, as in HAVE) of the
 * weights it is about to upload. The server answers the device that holds the most of
 * that content this tenant may use, else the least loaded one; unless `probe`, the
 * session then counts among that device's sessions. */
typedef struct djn_place_hash {
    uint64_t hi, lo, nbytes;
} djn_place_hash_t;
typedef struct djn_place_req {
    const char *model; /* NULL: none */
    uint32_t nhashes;
    const djn_place_hash_t *hashes;
    bool probe; /* answer only (several servers: the client asks each, then commits one) */
} djn_place_req_t;

/* A decoded request. HEARTBEAT, STATS and CLOSE carry an empty body. */
typedef struct djn_msg {
    uint8_t type;
    uint64_t sid, seq;
    union {
        djn_hello_req_t hello;
        djn_graph_req_t graph;
        djn_have_req_t have;
        djn_load_req_t load;
        djn_place_req_t place;
    } u;
    void *arena; /* owns every pointer above */
} djn_msg_t;

/* ---- replies ---- */
typedef struct djn_hello_rep {
    uint64_t sid;
    uint32_t version;
    const char *server;
    uint64_t lease_ms, heartbeat_ms;
    uint32_t ndevices;
    const char *const *devices; /* names in index order: "cpu", "cuda:0" */
} djn_hello_rep_t;

/* GRAPH / GRAPH_CACHED / FETCH: frames 1..fetched hold the fetched bytes in request
 * order; dyn holds the results of a DYNAMIC last node (djn_dyn_* below). */
typedef struct djn_graph_rep {
    uint32_t fetched;
    const djn_value_t *dyn; /* NULL when the last node was not DYNAMIC */
    /* Encoding only: the dyn value already encoded as msgpack (0 bytes: no dyn). */
    const uint8_t *dyn_raw;
    size_t dyn_raw_len;
} djn_graph_rep_t;

typedef struct djn_have_rep {
    uint32_t nmissing;
    const uint32_t *missing; /* indexes of the items the client must upload */
} djn_have_rep_t;

/* LOAD_MODEL reply: a description (config and tensors; binds empty) or, after a bind,
 * how many handles were bound and how many bytes the server read from disk for them
 * (0 when every tensor was in Text already). */
typedef struct djn_model_tensor {
    const char *name;
    uint8_t dtype; /* djn_dtype_t */
    uint8_t ndim;
    int64_t shape[DJN_MAX_DIMS];
} djn_model_tensor_t;
typedef struct djn_load_rep {
    const char *config; /* the model's config.json, verbatim ("" after a bind) */
    uint32_t ntensors;
    const djn_model_tensor_t *tensors;
    uint32_t bound;
    uint64_t read_bytes;
} djn_load_rep_t;

/* PLACE reply: the device chosen, the bytes of the hinted content it holds for this
 * tenant, and (operators only, has_load) its load: sessions on it, fragments queued or
 * running, Data bytes in use. */
typedef struct djn_place_rep {
    uint32_t device;
    uint64_t held;
    bool has_load;
    uint64_t sessions, backlog, used;
} djn_place_rep_t;

/* ERROR: code, words, and for a failed node its index and "op.overload". */
typedef struct djn_error_rep {
    djn_status_t code;
    const char *msg;
    int64_t node; /* -1: not about a node */
    const char *op;
} djn_error_rep_t;

/* A data-dependent result tensor: where it lives and how big its storage is. In the dyn
 * tree it is a map {"ref": ext TENSOR (handle, not slot), "nbytes": uint}. */
typedef struct djn_dyn_tensor {
    djn_tref_t ref;
    uint64_t nbytes;
} djn_dyn_tensor_t;

#ifdef __cplusplus
}
#endif
#endif
