/* djn_client.h: the client's C core, called by the thin C++ layer (csrc/torch/).
 *
 * A djn_client_t talks to the djinn-servers of DJINN_SERVER (a comma-separated list;
 * an embedded server is spawned when it is unset) through one link per server: its
 * connection and session (lease, heartbeat), the fragment being recorded for it
 * (djn_rec), its fetch cache (djn_fcache) and byte counters. Global device numbers run
 * over the servers in the order listed (remote:0..n-1 are the first server's n devices,
 * then the second's); calls that name a device go to its server, calls that name a
 * handle to the server that holds it. Nothing crosses between servers: a copy between
 * devices of two servers goes through the client (download, upload). It never touches
 * Python. The PyTorch layer uses the process's default instance, djn_client_default();
 * tests make their own.
 *
 * Handles. A remote storage's data pointer is its handle: a fake virtual address drawn
 * from one process-wide bump counter (shared by every client object, so that storages
 * of different servers never overlap either), so PyTorch's overlap checks, which
 * compare data pointers, stay correct. Handles are never reused.
 *
 * Locking. One recursive mutex per client guards it; the C++ layer holds it across the
 * recording of one node (djn_client_lock, djn_client_rec_*), and every other entry point
 * takes it itself. Errors: functions return a status; the words are in the calling
 * thread's last error (djn_client_errmsg). */
#ifndef DJN_CLIENT_H
#define DJN_CLIENT_H

#include <stdbool.h>
#include <stdint.h>

#include "djn_codec.h"
#include "djn_proto.h"
#include "djn_rec.h"
#include "djn_stats.h"
#include "djn_status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct djn_client djn_client_t;

/* ---- life cycle ---- */
/* server_bin: the djinn-server binary for an embedded server ("" if none). Nothing
 * connects until first use; configuration is read from the environment then. */
djn_client_t *djn_client_new(const char *server_bin);
/* CLOSE the session, stop an embedded server, free everything. */
void djn_client_destroy(djn_client_t **self_p);
/* The process's instance for the PyTorch layer (created on first call; shut down at
 * exit). */
djn_client_t *djn_client_default(void);
void djn_client_set_server_binary(djn_client_t *c, const char *path);
/* Connects every server (idempotent); the first success fixes the device map. */
djn_status_t djn_client_connect(djn_client_t *c);
/* Devices of every server; connects lazily. One server: 0 if unreachable. Several: 0
 * until every server answered once; then the total, also while one is down. */
int djn_client_device_count(djn_client_t *c);
const char *djn_client_device_name(djn_client_t *c, int index);
/* The server's endpoint (one server), or the DJINN_SERVER list (several). */
const char *djn_client_endpoint(djn_client_t *c);
uint64_t djn_client_session_id(djn_client_t *c); /* the first server's session */

/* ---- the servers (DJINN_SERVER's entries, in order) ---- */
typedef struct djn_client_server {
    char endpoint[256];
    int first_device;    /* global number of its first device; -1 before the map is fixed */
    int ndevices;        /* -1 before it first answered */
    uint64_t session_id; /* 0 when not connected */
} djn_client_server_t;
int djn_client_server_count(djn_client_t *c);
bool djn_client_server_info(djn_client_t *c, int server, djn_client_server_t *out);
/* The server of a global device and the device's number there (-1 and the last error if
 * there is none). */
int djn_client_device_server(djn_client_t *c, int device, int *local);
void djn_client_shutdown(djn_client_t *c); /* CLOSE and stop an embedded server */

/* ---- placement (PROTOCOL.md 5.6) ---- */
/* The global device 'remote' without an index means: asked of the servers (PLACE) the
 * first time, with the hints given then (model: a model of the server's store, or NULL;
 * hashes: plain XXH3-128 and size of weights about to be uploaded), and kept. 0 without
 * asking when there is one device in all, or DJINN_PLACE=0. On failure (no server) *device
 * is -1 and nothing is kept. */
djn_status_t djn_client_place(djn_client_t *c, const char *model, const djn_place_hash_t *hashes,
                              uint32_t nhashes, int *device);
/* The plain XXH3-128 of some bytes (high 64 bits first): what HAVE and PLACE offer. */
void djn_client_content_hash(const void *bytes, uint64_t n, uint64_t out[2]);

/* The last error on this thread: status and a message naming the op and the cause. */
djn_status_t djn_client_errcode(void);
const char *djn_client_errmsg(void);

/* ---- handles (any thread) ---- */
/* A handle for a storage of `device`; 0 on OOM or when its server cannot be reached. */
uint64_t djn_client_alloc(djn_client_t *c, int device, uint64_t nbytes);
void djn_client_free(djn_client_t *c, uint64_t handle);
uint64_t djn_client_nbytes_hint(djn_client_t *c, uint64_t handle); /* 0 if unknown */
/* Take over a handle the server issued (a data-dependent result) or resize one. */
void djn_client_adopt(djn_client_t *c, int device, uint64_t handle, uint64_t nbytes);

/* ---- recording one node (caller holds the lock from begin to end/abort) ---- */
void djn_client_lock(djn_client_t *c);
void djn_client_unlock(djn_client_t *c);
djn_status_t djn_client_rec_begin(djn_client_t *c, int device, const char *op, const char *overload,
                                  uint32_t nargs);
djn_buf_t *djn_client_rec_buf(djn_client_t *c); /* encode scalar arguments here */
void djn_client_rec_tensor(djn_client_t *c, const djn_tref_t *t, bool written);
void djn_client_rec_outs(djn_client_t *c, uint32_t nouts); /* after the args */
/* Ends the node; sends the fragment without waiting when it reached the node bound. */
djn_status_t djn_client_rec_end(djn_client_t *c, uint32_t flags, djn_op_class_t cls,
                                djn_phase_t phase);
void djn_client_rec_abort(djn_client_t *c); /* drop a node whose recording failed */

/* ---- sync points (take the lock themselves) ---- */
djn_status_t djn_client_flush(djn_client_t *c, bool wait); /* every server; the first error */
/* Bytes [off, off+n) of a storage, after every pending node ran. Cached by handle until
 * a node writes to it. */
/* QoS class of the fragments sent from now on (DJN_QOS_*; djinn.qos); a change sends
 * the fragment recorded so far first, in its class. Default: DJINN_QOS, else auto. */
djn_status_t djn_client_set_qos(djn_client_t *c, int qos);
int djn_client_qos(djn_client_t *c);
int djn_client_qos_parse(const char *name); /* "batch" -> DJN_QOS_BATCH; -1 if unknown */

/* The capability interlock (djn_hostmem.h): DJN_ERR_OOM, naming the bytes, when bringing
 * nbytes of a remote tensor into host memory would pass what this process can use.
 * Reads below DJN_CLIENT_HOST_CHECK_MIN are not checked (no file reads on item()). */
#define DJN_CLIENT_HOST_CHECK_MIN (4ull << 20)
djn_status_t djn_client_check_host(uint64_t nbytes);
djn_status_t djn_client_read(djn_client_t *c, int device, uint64_t handle, uint64_t off, uint64_t n,
                             void *dst);
/* The same read without a copy: *data points at the n bytes inside the server's reply,
 * which *keep holds until djn_client_frame_free(*keep) (any thread). Bypasses the fetch
 * cache: for large reads whose destination the caller makes from the frame. */
djn_status_t djn_client_read_frame(djn_client_t *c, int device, uint64_t handle, uint64_t off,
                                   uint64_t n, const void **data, void **keep);
void djn_client_frame_free(void *keep);
/* Send a fragment whose last node was recorded with DJN_NODE_DYNAMIC and return the
 * server's reply; *dyn is the description of that node's results (djn_dyn_* in
 * djn_proto.h), valid until djn_reply_free(reply). */
djn_status_t djn_client_run_dynamic(djn_client_t *c, djn_reply_t **reply, const djn_value_t **dyn);
/* Upload bytes as the whole content of a storage, as a snapshot: small uploads are
 * copied and sent with the next fragment; from DJINN_UPLOAD_CHUNK bytes (1 MiB) they are
 * sent at once from `bytes`, in chunks, and this returns once they left the caller's
 * memory (no copy). */
djn_status_t djn_client_upload(djn_client_t *c, int device, uint64_t handle, const void *bytes,
                               uint64_t n);
void djn_client_seed(djn_client_t *c, uint64_t seed);
/* STATS of the server of `device` (its devices only). */
djn_status_t djn_client_stats(djn_client_t *c, int device, djn_stats_rep_t *out);

/* ---- ghost loading and shadow sync (djn_sync.h, djinn/models.py) ---- */
/* LOAD_MODEL, in order with the session's other traffic; *reply owns what *rep points
 * at (djn_reply_free). */
djn_status_t djn_client_load_model(djn_client_t *c, const djn_load_req_t *req, djn_reply_t **reply,
                                   djn_load_rep_t *rep);
/* A handle of nbytes the server will bind itself (LOAD_MODEL): no declaration is sent. */
uint64_t djn_client_reserve(djn_client_t *c, int device, uint64_t nbytes);
/* Stage an upload of a whole storage into the fragment being recorded, taking `bytes`
 * (djn_malloc'd, n bytes; freed on failure too). Large ones are content-hashed and offered
 * first (HAVE), like djn_client_upload. Unlike it, never flushes: callable while a node
 * is being recorded (the bytes land before that node runs). Caller holds the lock. */
djn_status_t djn_client_stage_upload(djn_client_t *c, int device, uint64_t handle, uint8_t *bytes,
                                     uint64_t n);
int djn_client_rec_device(djn_client_t *c);

/* ---- observability ---- */
void djn_client_counters(djn_client_t *c, djn_stats_client_t *out); /* summed over servers */
void djn_client_counters_reset(djn_client_t *c);
/* SRG snapshot of the last fragment sent. */
uint32_t djn_client_srg(djn_client_t *c, djn_srg_node_t *out, uint32_t cap, uint64_t fp[2]);

#ifdef __cplusplus
}
#endif
#endif
