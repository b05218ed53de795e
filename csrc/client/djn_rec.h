/* djn_rec.h: the fragment recorder: the SRG being captured, as pure data.
 *
 * It owns what the next GRAPH message will carry: the nodes (encoded to msgpack as they
 * are captured), the slot table, declared allocations, frees, staged uploads, the seed,
 * the running fingerprint and each node's semantic fields. It does no I/O and takes no
 * locks: when a fragment should leave (the node bound, a node for another device) it
 * says so, and the client (djn_client.c) flushes. Every failure leaves the recorder
 * exactly as it was before the call, so a failed capture never poisons the next flush.
 *
 * Slots. Tensor references in nodes carry a fragment-local slot instead of the handle;
 * binds[slot] is the handle. The bytes of a fragment depend only on ops, shapes, dtypes,
 * scalars and wiring; its fingerprint only on its structure (djn_sym.h): ops, dtypes,
 * ranks, non-integer scalars and wiring, the integers being bindings. */
#ifndef DJN_REC_H
#define DJN_REC_H

#include <stdbool.h>
#include <stdint.h>

#include "djn_codec.h"
#include "djn_proto.h"
#include "djn_status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* SRG semantic fields */
typedef enum { DJN_CLASS_MEMORY = 0, DJN_CLASS_COMPUTE = 1 } djn_op_class_t;

/* What the recorder asks of its owner after a call. */
typedef enum {
    DJN_REC_OK = 0,
    DJN_REC_FULL,        /* the node bound is reached: send the fragment */
    DJN_REC_OTHER_DEVICE /* the node is for another device than the pending fragment's */
} djn_rec_state_t;

typedef struct djn_rec djn_rec_t;

typedef struct djn_srg_node {
    const char *op, *overload; /* static strings of the capturing layer */
    djn_op_class_t cls;
    djn_phase_t phase;
    bool persistent; /* an output is still held by the client when the fragment left */
} djn_srg_node_t;

djn_rec_t *djn_rec_new(uint32_t max_nodes);
void djn_rec_set_max_nodes(djn_rec_t *r, uint32_t max_nodes);
void djn_rec_destroy(djn_rec_t **self_p);

/* Nothing to send: no nodes, allocations, frees, uploads or seed. */
bool djn_rec_empty(const djn_rec_t *r);
uint32_t djn_rec_nnodes(const djn_rec_t *r);
int djn_rec_device(const djn_rec_t *r);
/* The fragment's device. DJN_REC_OTHER_DEVICE if the recorder holds work for another
 * device (send it first, then ask again); an empty recorder simply switches. */
djn_rec_state_t djn_rec_use_device(djn_rec_t *r, int device);

/* ---- one node: begin, nargs values, outs, nouts values, end (or abort) ---- */
djn_status_t djn_rec_begin(djn_rec_t *r, const char *op, const char *overload, uint32_t nargs);
djn_buf_t *djn_rec_buf(djn_rec_t *r); /* encode scalar arguments here */
/* A remote tensor argument or output: its handle becomes a slot. `written`: the node
 * writes it (an output, an in-place or out= argument). */
void djn_rec_tensor(djn_rec_t *r, const djn_tref_t *t, bool written);
void djn_rec_outs(djn_rec_t *r, uint32_t nouts);
/* *state is DJN_REC_FULL once the node bound is reached (never for DYNAMIC nodes, whose
 * fragment the owner sends at once anyway). DJN_ERR_NOMEM leaves no trace of the node. */
djn_status_t djn_rec_end(djn_rec_t *r, uint32_t flags, djn_op_class_t cls, djn_phase_t phase,
                         djn_rec_state_t *state);
void djn_rec_abort(djn_rec_t *r); /* forget the node being recorded, slots included */
/* Handles written by the node being recorded (for the fetch cache), valid until end. */
const uint64_t *djn_rec_written(const djn_rec_t *r, uint32_t *n);

/* ---- storage ---- */
djn_status_t djn_rec_alloc(djn_rec_t *r, uint64_t handle, uint64_t nbytes);
/* The client let go of a handle. False when the server never heard of it (declared in
 * this fragment, never named nor uploaded): nothing to send. */
bool djn_rec_free(djn_rec_t *r, uint64_t handle, bool *oom);
bool djn_rec_names(const djn_rec_t *r, uint64_t handle); /* a pending node uses it */
/* Stage the bytes of a whole storage (ownership of `bytes`, n bytes from djn_malloc, is
 * taken, also on failure). text: shared content, offered by its hash (hi, lo) first. */
djn_status_t djn_rec_upload(djn_rec_t *r, uint64_t handle, uint8_t *bytes, uint64_t n, bool text,
                            uint64_t hi, uint64_t lo);
uint32_t djn_rec_nuploads(const djn_rec_t *r);
uint64_t djn_rec_upload_bytes(const djn_rec_t *r);
/* The text uploads, for a HAVE offer (items[i].handle etc.; at most cap). */
uint32_t djn_rec_text_items(const djn_rec_t *r, djn_have_item_t *items, uint32_t cap);
/* The server holds this upload's content already: send no bytes, no declaration. */
void djn_rec_drop_upload(djn_rec_t *r, uint64_t handle);
void djn_rec_set_seed(djn_rec_t *r, int64_t seed);

/* ---- sending ---- */
/* Seal the fragment: mark lifecycles, finish the fingerprint, and describe the GRAPH in
 * *out (pointers into the recorder, valid until djn_rec_reset). `fetch` may be NULL.
 * The upload bytes stay the recorder's: djn_rec_take_upload hands them over one by one
 * (to be sent as zero-copy frames). */
djn_status_t djn_rec_seal(djn_rec_t *r, const djn_fetch_t *fetch, djn_graph_req_t *out);
/* The integers of the last sealed fragment's nodes in canonical order (djn_sym.h), or
 * NULL when its bytes could not be scanned (its fingerprint is then the bytes' hash). */
const int64_t *djn_rec_ints(const djn_rec_t *r, uint32_t *n);
uint8_t *djn_rec_take_upload(djn_rec_t *r, uint32_t i, uint64_t *n);
void djn_rec_reset(djn_rec_t *r); /* start the next fragment */

/* The SRG of the last sealed fragment (up to cap nodes; returns the count) and its
 * fingerprint. */
uint32_t djn_rec_srg(const djn_rec_t *r, djn_srg_node_t *out, uint32_t cap, uint64_t fp[2]);

#ifdef __cplusplus
}
#endif
#endif
