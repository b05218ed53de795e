/* djn_plan.h: the activation-memory planner (the "meta-simulator" of DESIGN.md).
 *
 * A fragment is a straight-line list of nodes whose shapes are all known when it arrives.
 * Its intermediates (tensors produced by one node and consumed only by later nodes of the
 * same fragment) live in one slab. Given each intermediate's size and lifetime
 * [first, last] (the node that produces it, the last node that reads it, inclusive), the
 * planner assigns each a byte offset in the slab such that no two tensors whose lifetimes
 * intersect overlap in memory, and tries to keep the slab's peak small. It returns data
 * only (offsets, peak, a lower bound); the executor runs plans. It links neither ZeroMQ
 * nor torch. The algorithm and its invariants are stated in djn_plan.c. */
#ifndef DJN_PLAN_H
#define DJN_PLAN_H

#include <stdint.h>

#include "djn_status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One intermediate: its size in bytes and its lifetime in node indices, inclusive. */
typedef struct djn_plan_req {
    uint64_t nbytes;
    uint32_t first, last;
} djn_plan_req_t;

typedef struct djn_plan {
    uint32_t n;           /* number of requests */
    uint64_t *offsets;    /* per request, a multiple of `align`; NULL when n == 0 */
    uint64_t peak;        /* max over requests of offset + aligned size: the slab size */
    uint64_t lower_bound; /* max over node indices t of the aligned bytes live at t */
} djn_plan_t;

/* Plans `n` requests with every size rounded up to `align` (a power of two).
 * On success *out is a new plan (destroy with djn_plan_destroy); on failure *out is NULL.
 * Deterministic: the same input gives the same offsets. n == 0 gives an empty plan.
 * Zero-byte requests occupy nothing and get offset 0.
 * DJN_ERR_ARGS: out NULL, reqs NULL with n > 0, align not a power of two, first > last.
 * DJN_ERR_LIMIT: the aligned sizes (or their sum) do not fit in 64 bits.
 * DJN_ERR_NOMEM: a host allocation failed. */
djn_status_t djn_plan_build(const djn_plan_req_t *reqs, uint32_t n, uint32_t align,
                            djn_plan_t **out);
/* Accepts NULL and *plan_p == NULL; sets *plan_p to NULL. */
void djn_plan_destroy(djn_plan_t **plan_p);

/* Lifetimes from a use list, for the server's graph walk. For each tensor t in
 * 0..ntensors-1, def[t] is the node that produces it; the uses are (use_tensor[i],
 * use_node[i]) pairs, i in 0..nuses-1. Writes out_reqs[t].first = def[t] and
 * out_reqs[t].last = max(def[t], every use of t); leaves out_reqs[t].nbytes alone (the
 * caller fills it before or after). DJN_ERR_ARGS, with out_reqs untouched, for a NULL
 * array with a non-zero count, a use naming a tensor >= ntensors, or a use at a node
 * before the tensor's def. */
djn_status_t djn_plan_lifetimes(uint32_t ntensors, const uint32_t *def, const uint32_t *use_tensor,
                                const uint32_t *use_node, uint32_t nuses, djn_plan_req_t *out_reqs);

#ifdef __cplusplus
}
#endif
#endif
