/* djn_frag.h: the fragment runtime: runs one GRAPH / GRAPH_CACHED / FETCH of a session
 * on one device, and one HAVE.
 *
 * It takes a decoded request and the session, and returns the reply as a value: the
 * status and words of a failure (with the failed node), the fetched bytes, the results
 * of a data-dependent last node. It never touches a socket and owns no thread: a worker
 * (djn_server.c) calls it with the resources of its device. The steps, their order and
 * what a failure leaves behind are stated in djn_frag.c. */
#ifndef DJN_FRAG_H
#define DJN_FRAG_H

#include <stdint.h>

#include "djn_codec.h"
#include "djn_exec.h"
#include "djn_proto.h"
#include "djn_session.h"
#include "djn_text.h"
#include "djn_tlb.h"
#include "djn_vmu.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What a worker lends the fragments of its device. */
typedef struct djn_frag_env {
    djn_exec_t *exec;
    djn_vmu_t *vmu; /* NULL: ATen's own allocator (CUDA, or --data-bytes 0) */
    uint32_t device;
    djn_text_t *text;
    djn_tlb_t *tlb;
    uint64_t max_tensor_bytes;
    /* Preemption at node boundaries (NULL: never). Between two nodes, when urgent_fn
     * says better-class work waits, the runtime saves the session's random state and
     * calls yield_fn, which runs that work nested on this thread and returns; then the
     * next node runs. */
    bool (*urgent_fn)(void *ctx);
    void (*yield_fn)(void *ctx);
    void *yield_ctx;
    /* A nested run (inside another fragment's yield_fn, or on a lane beside the worker):
     * it must not touch the stack slab, which holds the worker's fragment's planned
     * activations: no slab placement, no slab reset, every allocation in the Data
     * segment; its plan is still made, so a fragment whose activations cannot fit the
     * slab is refused here as on the worker. */
    bool nested;
} djn_frag_env_t;

typedef struct djn_blob {
    const void *data;
    size_t len;
} djn_blob_t;

typedef struct djn_frag_in {
    uint8_t type; /* DJN_MSG_GRAPH, DJN_MSG_GRAPH_CACHED or DJN_MSG_FETCH */
    djn_session_t *sess;
    const djn_graph_req_t *g;
    const djn_tlb_entry_t *cached; /* GRAPH_CACHED: the entry whose nodes run */
    const djn_node_t *nodes;       /* GRAPH_CACHED: those nodes patched (NULL: as cached) */
    const djn_blob_t *frames;      /* the data frames, frames[0] is frame 1 */
    uint32_t nframes;
} djn_frag_in_t;

typedef struct djn_frag_out {
    djn_status_t st;
    char err[1024];
    int64_t bad_node; /* -1: the failure is not a node's */
    char op[2 * DJN_MAX_NAME + 2];
    /* success: the bytes of each fetch, in order: a counted host buffer (djn_malloc,
     * nbytes each; hold NULL), or the storage's own bytes lent without a copy (hold: the
     * snapshot that keeps them, djn_exec_lend). The caller takes them (zero-copy frames,
     * freed by djn_frag_fetched_free) or djn_frag_out_release frees them. */
    uint32_t nfetched, fetch_cap;
    uint8_t **fetched; /* an entry set to NULL has been taken */
    uint64_t *fetched_len;
    void **fetched_hold;
    djn_session_t *sess; /* charged for the fetched bytes until each is freed (a reference) */
    djn_buf_t dyn;       /* the results of a DYNAMIC last node, encoded (len 0: none) */
    uint64_t plan_ns;    /* time spent planning */
    uint64_t run_ns;     /* time spent in the nodes */
    uint32_t nodes_run;
    bool rng; /* some node drew random numbers (under the shared generator's lock) */
} djn_frag_out_t;

/* Runs the fragment. The caller holds the session's lock (djn_session_lock or trylock)
 * and keeps it until the reply built from *out has been sent, so that one session's
 * replies leave in the order its fragments ran, whichever thread ran them. Always fills
 * *out. */
void djn_frag_run(const djn_frag_env_t *env, const djn_frag_in_t *in, djn_frag_out_t *out);
void djn_frag_out_release(djn_frag_out_t *out);
/* Free one fetched buffer the caller took (any thread; its session is uncharged apart). */
void djn_frag_fetched_free(void *data, uint64_t len, void *hold);

/* HAVE: bind each item's handle to Text content this session's tenant uploaded before.
 * *missing gets the indexes of the others (ascending; djn_free(*missing, n * 4)). */
djn_status_t djn_frag_have(const djn_frag_env_t *env, djn_session_t *s, const djn_have_req_t *h,
                           uint32_t **missing, uint32_t *nmissing);

#ifdef __cplusplus
}
#endif
#endif
