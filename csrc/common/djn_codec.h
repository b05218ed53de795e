/* djn_codec.h: msgpack <-> plain C, the only module that knows msgpack.
 *
 * Decoding turns frame 0 into a djn_value_t tree in an arena (one allocation chain, one
 * free), enforcing DJN_MAX_* limits before allocating, then djn_msg_parse() checks the
 * tree against the protocol and fills the typed request. Encoding appends to a growable
 * buffer; the client recorder encodes nodes straight into one as they are captured. */
#ifndef DJN_CODEC_H
#define DJN_CODEC_H

#include "djn_proto.h"
#include "djn_status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- arena ---- */
typedef struct djn_arena djn_arena_t;
djn_arena_t *djn_arena_new(void);
void djn_arena_destroy(djn_arena_t **self_p);
void *djn_arena_alloc(djn_arena_t *a, size_t n); /* zeroed, 8-byte aligned, NULL on OOM */

/* ---- decoding ---- */
/* Decode one msgpack object from buf into a tree allocated in `a`. On failure writes a
 * human-readable reason into err (e.g. "truncated msgpack at byte 17"). */
djn_status_t djn_decode_value(const void *buf, size_t len, djn_arena_t *a, djn_value_t **out,
                              char *err, size_t errlen);

/* Decode frame 0 of a request and check it against the protocol. nframes is the number
 * of frames after the header (upload frame indexes are checked against it). On failure
 * *out is NULL and err says what is wrong; if the header could be read far enough,
 * *seq_out (may be NULL) gets the sequence number so the error reply can name it. */
djn_status_t djn_msg_decode(const void *buf, size_t len, uint32_t nframes, djn_msg_t **out,
                            uint64_t *seq_out, char *err, size_t errlen);
void djn_msg_free(djn_msg_t **msg_p);

/* Map lookup by string key; NULL when absent or `map` is not a map. */
const djn_value_t *djn_value_get(const djn_value_t *map, const char *key);

/* ---- encoding ---- */
typedef struct djn_buf {
    uint8_t *data;
    size_t len, cap;
    bool failed; /* an append ran out of memory; the buffer is unusable until reset */
} djn_buf_t;

void djn_buf_reset(djn_buf_t *b);   /* len = 0, keeps capacity */
void djn_buf_release(djn_buf_t *b); /* frees the memory */
void djn_buf_raw(djn_buf_t *b, const void *p, size_t n);

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
/* Re-encode a decoded tree (used to echo values back). */
void djn_enc_value(djn_buf_t *b, const djn_value_t *v);

/* Header of a message: {"type","sid","seq","body": <caller encodes one value next>}. */
void djn_enc_header(djn_buf_t *b, uint8_t type, uint64_t sid, uint64_t seq);
/* A complete error reply: body {"code": st, "msg": text}. */
void djn_enc_error(djn_buf_t *b, uint64_t sid, uint64_t seq, djn_status_t st, const char *msg);

#ifdef __cplusplus
}
#endif
#endif
