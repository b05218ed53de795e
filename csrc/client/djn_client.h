/* djn_client.h: the client's C core, called by the thin C++ layer (csrc/torch/).
 *
 * It owns the connection to djinn-server (spawning an embedded one when DJINN_SERVER is
 * unset), the handle space, the pending fragment (the SRG being recorded), the frees
 * queue, uploads, the fetch cache and the byte counters. It never touches Python.
 *
 * Handles. A remote storage's data pointer is its handle: a fake virtual address drawn
 * from a bump counter, so distinct storages occupy disjoint address ranges and PyTorch's
 * overlap checks (which compare data pointers) stay correct. Handles are never reused.
 *
 * Locking. One recursive mutex guards everything; the C++ layer holds it across the
 * recording of one node (djn_rec_*), and every other entry point takes it itself. */
#ifndef DJN_CLIENT_H
#define DJN_CLIENT_H

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
typedef enum { DJN_PHASE_NONE = 0, DJN_PHASE_PREFILL = 1, DJN_PHASE_DECODE = 2 } djn_phase_t;

/* ---- configuration and connection ---- */
void djn_client_set_server_binary(const char *path);
djn_status_t djn_client_connect(void); /* idempotent; spawns the embedded server if needed */
int djn_client_device_count(void);     /* connects lazily; 0 if the server is unreachable */
const char *djn_client_device_name(int index);
const char *djn_client_endpoint(void);
uint64_t djn_client_session_id(void);
void djn_client_shutdown(void); /* CLOSE the session and stop an embedded server */

/* The last error on this thread: status and a message naming the op and the cause. */
djn_status_t djn_client_errcode(void);
const char *djn_client_errmsg(void);

/* ---- handles (any thread) ---- */
uint64_t djn_client_alloc(uint64_t nbytes);
void djn_client_free(uint64_t handle);
uint64_t djn_client_nbytes_hint(uint64_t handle); /* 0 if unknown */
/* Take over a handle the server issued (a data-dependent result) or resize one. */
void djn_client_adopt(uint64_t handle, uint64_t nbytes);

/* ---- recording one node (caller holds the lock) ---- */
void djn_client_lock(void);
void djn_client_unlock(void);
djn_status_t djn_rec_begin(int device, const char *op, const char *overload, uint32_t nargs);
djn_buf_t *djn_rec_buf(void);                         /* encode scalar arguments here */
void djn_rec_tensor(const djn_tref_t *t, bool written); /* a remote tensor argument/output */
void djn_rec_outs(uint32_t nouts);                      /* after the args, before the outs */
void djn_rec_note_fresh(uint64_t handle); /* SRG: an output of the current node */
djn_status_t djn_rec_end(uint32_t flags, djn_op_class_t cls, djn_phase_t phase);
void djn_rec_abort(void); /* drop a node whose recording failed half-way */

/* ---- sync points (take the lock themselves) ---- */
djn_status_t djn_client_flush(bool wait);
/* Bytes [off, off+n) of a storage, after every pending node ran. Cached by handle until a
 * node writes to it. */
djn_status_t djn_client_read(int device, uint64_t handle, uint64_t off, uint64_t n, void *dst);
/* Flush a fragment whose last node was recorded with DJN_NODE_DYNAMIC and return the
 * server's description of its results. Free with djn_arena_destroy. */
djn_status_t djn_client_run_dynamic(djn_value_t **result, djn_arena_t **arena);
/* Upload bytes as the whole content of a storage (snapshot: copied now). */
djn_status_t djn_client_upload(int device, uint64_t handle, const void *bytes, uint64_t n);
void djn_client_seed(uint64_t seed);
djn_status_t djn_client_stats(djn_value_t **result, djn_arena_t **arena); /* server STATS */

/* ---- observability ---- */
typedef struct djn_client_counters {
    uint64_t bytes_sent, bytes_recv, messages, flushes, nodes, uploads, upload_bytes,
        fetches, fetch_bytes, cache_hits, dynamic_syncs, dedup_bytes, cached_sends,
        plan_evictions;
} djn_client_counters_t;
void djn_client_counters(djn_client_counters_t *out);
void djn_client_counters_reset(void);

/* SRG snapshot of the last flushed fragment. */
typedef struct djn_srg_node {
    const char *op, *overload;
    djn_op_class_t cls;
    djn_phase_t phase;
    bool persistent;
} djn_srg_node_t;
uint32_t djn_client_srg(djn_srg_node_t *out, uint32_t cap, uint64_t fp[2]);

#ifdef __cplusplus
}
#endif
#endif
