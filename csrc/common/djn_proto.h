/* djn_proto.h: the Djinn wire protocol, in one place (docs/PROTOCOL.md says the same).
 *
 * A request is one ZeroMQ multipart message: frame 0 is a msgpack map
 *   { "type": u8, "sid": u64, "seq": u64, "body": map }
 * and frames 1..n are raw tensor bytes that the body refers to by index. A reply has
 * the same shape with type DJN_MSG_REPLY or DJN_MSG_ERROR and the request's seq.
 *
 * Message numbers, dtype codes and status codes are frozen: append, never renumber.
 * Any change a peer could misread bumps DJN_PROTO_VERSION; HELLO refuses a mismatch.
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

#ifdef __cplusplus
extern "C" {
#endif

#define DJN_PROTO_VERSION 2

/* ---- message types (frozen) ---- */
typedef enum djn_msg_type {
    DJN_MSG_HELLO = 1,        /* open a session */
    DJN_MSG_HEARTBEAT = 2,    /* renew the session's lease */
    DJN_MSG_GRAPH = 3,        /* execute a fragment: allocs, uploads, nodes, frees, fetches */
    DJN_MSG_GRAPH_CACHED = 4, /* execute a fragment the server holds: GRAPH without nodes */
    DJN_MSG_UPLOAD = 5,       /* reserved */
    DJN_MSG_HAVE = 6,         /* bind handles to Text content the server already holds */
    DJN_MSG_FETCH = 7,        /* read bytes of a handle */
    DJN_MSG_LOAD_MODEL = 8,   /* reserved */
    DJN_MSG_STATS = 9,        /* server counters */
    DJN_MSG_CLOSE = 10,       /* close the session, freeing everything it holds */
    DJN_MSG_REPLY = 64,
    DJN_MSG_ERROR = 65,
} djn_msg_type_t;

/* ---- limits, checked before anything is allocated ---- */
#define DJN_MAX_HEADER_BYTES (16u << 20) /* frame 0 */
#define DJN_MAX_FRAMES 4096u             /* frames after the header */
#define DJN_MAX_TENSOR_BYTES (64ull << 30) /* default; the server flag may lower it */
#define DJN_MAX_NODES 65536u             /* nodes in one GRAPH */
#define DJN_MAX_ITEMS 65536u             /* elements of any one array or map */
#define DJN_MAX_DEPTH 8                  /* nesting of arrays/maps */
#define DJN_MAX_DIMS 16                  /* tensor rank */
#define DJN_MAX_NAME 256                 /* operator name bytes */
#define DJN_MAX_OBJECTS (1u << 22)       /* msgpack objects in one header */

/* ---- extension types ---- */
#define DJN_EXT_TENSOR 1
#define DJN_EXT_COMPLEX 2

/* ---- dtype codes (frozen; equal to c10::ScalarType numbering, checked at build) ---- */
typedef enum djn_dtype {
    DJN_DTYPE_U8 = 0, DJN_DTYPE_I8 = 1, DJN_DTYPE_I16 = 2, DJN_DTYPE_I32 = 3,
    DJN_DTYPE_I64 = 4, DJN_DTYPE_F16 = 5, DJN_DTYPE_F32 = 6, DJN_DTYPE_F64 = 7,
    DJN_DTYPE_C32 = 8, DJN_DTYPE_C64 = 9, DJN_DTYPE_C128 = 10, DJN_DTYPE_BOOL = 11,
    DJN_DTYPE_BF16 = 15,
} djn_dtype_t;

/* Element size in bytes, 0 for a code we do not carry. */
size_t djn_dtype_size(uint32_t dtype);

/* ---- decoded values ---- */
typedef enum djn_vkind {
    DJN_V_NONE = 0, DJN_V_BOOL, DJN_V_INT, DJN_V_FLOAT, DJN_V_COMPLEX,
    DJN_V_STR, DJN_V_BIN, DJN_V_LIST, DJN_V_MAP, DJN_V_TENSOR,
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
        const char *s;       /* STR (not NUL-terminated: use len) and BIN */
        djn_value_t *items;  /* LIST: len items; MAP: 2*len (key, value, key, ...) */
        djn_tref_t *t;
    } u;
};

/* Byte extent a reference touches in its storage: offset*itemsize .. end. False if the
 * reference is malformed (negative size, unknown dtype, overflow). */
bool djn_tref_extent(const djn_tref_t *t, uint64_t *begin, uint64_t *end);

/* ---- typed requests ---- */
#define DJN_NODE_DYNAMIC 1u /* server reports the results' metadata (data-dependent op) */

typedef struct djn_node {
    const char *op;       /* "aten::add" (NUL-terminated, in the message arena) */
    const char *overload; /* "out" or "" */
    uint32_t nargs, nouts;
    /* Tensor references carry a slot: the handle is binds[slot] of the message run. */
    djn_value_t *args; /* in schema order, every argument present */
    djn_value_t *outs; /* per schema return: TENSOR ref, NONE, LIST of refs; or INT handle hint */
    uint32_t flags;
} djn_node_t;

typedef struct djn_alloc { uint64_t handle, nbytes; } djn_alloc_t;
typedef struct djn_upload {
    uint64_t handle;
    uint32_t frame;
    bool text; /* file the bytes in the shared Text segment (server hashes them itself) */
} djn_upload_t;
typedef struct djn_fetch { uint64_t handle, offset, nbytes; } djn_fetch_t;

typedef struct djn_graph_req {
    uint32_t device;
    uint32_t nbinds, nslots; /* slots named by nodes: nslots <= nbinds */
    uint64_t *binds;         /* slot -> handle */
    uint64_t fp[2];          /* fingerprint of the nodes (XXH3-128), 0 if absent */
    int64_t seed; /* >= 0: reseed the session's generator before running */
    uint32_t nallocs, nuploads, nnodes, nfrees, nfetches;
    djn_alloc_t *allocs;
    djn_upload_t *uploads;
    djn_node_t *nodes;
    uint64_t *frees;
    djn_fetch_t *fetches;
} djn_graph_req_t;

typedef struct djn_hello_req {
    uint32_t version;
    const char *client; /* free text: "djinn-python 0.1 pid 1234" */
} djn_hello_req_t;

typedef struct djn_msg {
    uint8_t type;
    uint64_t sid, seq;
    union {
        djn_hello_req_t hello;
        djn_graph_req_t graph; /* GRAPH and FETCH (a FETCH is a graph with only fetches) */
    } u;
    djn_value_t *body; /* the raw body tree, for messages without a typed struct */
    void *arena;       /* owns every pointer above */
} djn_msg_t;

#ifdef __cplusplus
}
#endif
#endif
