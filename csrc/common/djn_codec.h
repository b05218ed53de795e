/* djn_codec.h: msgpack <-> plain C.
 *
 * Two layers. The value layer (djn_codec.c, the only file that includes msgpack.h)
 * decodes a frame into a djn_value_t tree in an arena, enforcing the DJN_MAX_* limits
 * before allocating, and encodes values into a growable buffer. The message layer
 * (djn_msgs.c) has one encoder and one decoder per message of djn_proto.h: requests are
 * decoded into djn_msg_t, replies into djn_reply_t, and each is written by exactly one
 * encoder, which the client, the server and the tests (C and Python, through djinn._C)
 * all call. */
#ifndef DJN_CODEC_H
#define DJN_CODEC_H

#include "djn_proto.h"
#include "djn_stats.h"
#include "djn_status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- arena ---- */
typedef struct djn_arena djn_arena_t;
djn_arena_t *djn_arena_new(void);
void djn_arena_destroy(djn_arena_t **self_p);
void *djn_arena_alloc(djn_arena_t *a, size_t n); /* zeroed, 8-byte aligned, NULL on OOM */
size_t djn_arena_bytes(const djn_arena_t *a);    /* host bytes it holds */

/* ---- the value layer ---- */
/* Decode one msgpack object from buf into a tree allocated in `a`. On failure writes a
 * human-readable reason into err (e.g. "truncated msgpack at byte 17"). */
djn_status_t djn_decode_value(const void *buf, size_t len, djn_arena_t *a, djn_value_t **out,
                              char *err, size_t errlen);
/* Map lookup by string key; NULL when absent or `map` is not a map. */
const djn_value_t *djn_value_get(const djn_value_t *map, const char *key);
/* A deep copy of n values into `a` (NULL on OOM). */
djn_value_t *djn_value_clone(djn_arena_t *a, const djn_value_t *v, uint32_t n);

typedef struct djn_buf {
    uint8_t *data;
    size_t len, cap;
    bool failed; /* an append ran out of memory; the buffer is unusable until reset */
} djn_buf_t;

void djn_buf_reset(djn_buf_t *b);   /* len = 0, keeps capacity */
void djn_buf_release(djn_buf_t *b); /* frees the memory */
void djn_buf_raw(djn_buf_t *b, const void *p, size_t n);
/* room for n more bytes without growing; false (and failed set) on OOM */
bool djn_buf_reserve(djn_buf_t *b, size_t n);

void djn_enc_map(djn_buf_t *b, uint32_t npairs);
void djn_enc_array(djn_buf_t *b, uint32_t n);
void djn_enc_nil(djn_buf_t *b);
void djn_enc_bool(djn_buf_t *b, bool v);
void djn_enc_int(djn_buf_t *b, int64_t v);
void djn_enc_uint(djn_buf_t *b, uint64_t v);
void djn_enc_float(djn_buf_t *b, double v);
void djn_enc_str(djn_buf_t *b, const char *s, size_t n);
void djn_enc_cstr(djn_buf_t *b, const char *s);
void djn_enc_bin(djn_buf_t *b, const void *p, size_t n);
void djn_enc_complex(djn_buf_t *b, double re, double im);
void djn_enc_tref(djn_buf_t *b, const djn_tref_t *t);
void djn_enc_value(djn_buf_t *b, const djn_value_t *v);

/* ---- the message layer: requests ---- */
/* Decode frame 0 of a request and check it against the protocol. nframes is the number
 * of frames after the header (upload frame indexes are checked against it). On failure
 * *out is NULL and err says what is wrong; if the header could be read far enough,
 * *seq_out (may be NULL) gets the sequence number so the error reply can name it. */
djn_status_t djn_msg_decode(const void *buf, size_t len, uint32_t nframes, djn_msg_t **out,
                            uint64_t *seq_out, char *err, size_t errlen);
void djn_msg_free(djn_msg_t **msg_p);

/* Encoders write header and body; hdr->type picks GRAPH, GRAPH_CACHED or FETCH for
 * djn_graph_req_encode (GRAPH_CACHED never carries nodes). djn_empty_encode writes a
 * message with an empty body: HEARTBEAT, STATS, CLOSE, or an empty REPLY. */
void djn_hello_req_encode(djn_buf_t *b, const djn_msg_hdr_t *hdr, const djn_hello_req_t *r);
void djn_graph_req_encode(djn_buf_t *b, const djn_msg_hdr_t *hdr, const djn_graph_req_t *r);
void djn_have_req_encode(djn_buf_t *b, const djn_msg_hdr_t *hdr, const djn_have_req_t *r);
void djn_load_req_encode(djn_buf_t *b, const djn_msg_hdr_t *hdr, const djn_load_req_t *r);
void djn_place_req_encode(djn_buf_t *b, const djn_msg_hdr_t *hdr, const djn_place_req_t *r);
void djn_empty_encode(djn_buf_t *b, const djn_msg_hdr_t *hdr);

/* A node, [op, overload, [args], [outs], flags]: whole, or in three steps by a recorder
 * that encodes the args and outs itself between them (begin, nargs values, outs,
 * nouts values, end). */
void djn_node_encode(djn_buf_t *b, const djn_node_t *n);
void djn_node_enc_begin(djn_buf_t *b, const char *op, const char *overload, uint32_t nargs);
void djn_node_enc_outs(djn_buf_t *b, uint32_t nouts);
void djn_node_enc_end(djn_buf_t *b, uint32_t flags);
/* A deep copy of n decoded nodes into `a` (the plan cache keeps only these). */
djn_node_t *djn_nodes_clone(djn_arena_t *a, const djn_node_t *nodes, uint32_t n);

/* ---- the message layer: replies ---- */
typedef struct djn_reply {
    uint8_t type; /* DJN_MSG_REPLY or DJN_MSG_ERROR */
    uint64_t sid, seq;
    djn_error_rep_t error;   /* when type == DJN_MSG_ERROR */
    const djn_value_t *body; /* the body, for the typed parsers below */
    void *arena;
} djn_reply_t;

djn_status_t djn_reply_decode(const void *buf, size_t len, djn_reply_t **out, char *err,
                              size_t errlen);
void djn_reply_free(djn_reply_t **r_p);
/* Typed views of a REPLY's body (storage in the reply's arena). DJN_ERR_PROTO with err
 * naming the field when the body does not have the shape. */
djn_status_t djn_hello_rep_parse(const djn_reply_t *r, djn_hello_rep_t *out, char *err,
                                 size_t errlen);
djn_status_t djn_graph_rep_parse(const djn_reply_t *r, djn_graph_rep_t *out, char *err,
                                 size_t errlen);
djn_status_t djn_have_rep_parse(const djn_reply_t *r, djn_have_rep_t *out, char *err,
                                size_t errlen);
djn_status_t djn_stats_rep_parse(const djn_reply_t *r, djn_stats_rep_t *out, char *err,
                                 size_t errlen);
djn_status_t djn_load_rep_parse(const djn_reply_t *r, djn_load_rep_t *out, char *err,
                                size_t errlen);
djn_status_t djn_place_rep_parse(const djn_reply_t *r, djn_place_rep_t *out, char *err,
                                 size_t errlen);

void djn_hello_rep_encode(djn_buf_t *b, const djn_msg_hdr_t *hdr, const djn_hello_rep_t *r);
void djn_graph_rep_encode(djn_buf_t *b, const djn_msg_hdr_t *hdr, const djn_graph_rep_t *r);
void djn_have_rep_encode(djn_buf_t *b, const djn_msg_hdr_t *hdr, const djn_have_rep_t *r);
void djn_stats_rep_encode(djn_buf_t *b, const djn_msg_hdr_t *hdr, const djn_stats_rep_t *r);
void djn_load_rep_encode(djn_buf_t *b, const djn_msg_hdr_t *hdr, const djn_load_rep_t *r);
void djn_place_rep_encode(djn_buf_t *b, const djn_msg_hdr_t *hdr, const djn_place_rep_t *r);
void djn_error_rep_encode(djn_buf_t *b, const djn_msg_hdr_t *hdr, const djn_error_rep_t *r);

/* Data-dependent results inside a dyn tree. */
void djn_dyn_tensor_encode(djn_buf_t *b, const djn_dyn_tensor_t *t);
bool djn_dyn_tensor_decode(const djn_value_t *v, djn_dyn_tensor_t *out);

#ifdef __cplusplus
}
#endif
#endif
