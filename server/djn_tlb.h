/* djn_tlb.h: the plan cache ("TLB"): fragments the server has run, by fingerprint.
 *
 * A client that knows the server holds a fragment sends GRAPH_CACHED: the fingerprint
 * and the new bindings, no nodes. A hit skips decoding the nodes (and, with the VMU,
 * planning). Entries are the decoded messages of full GRAPHs that ran successfully,
 * keyed by (XXH3-128 fingerprint, device, session); the fingerprint covers every op,
 * shape, dtype, scalar and the wiring between nodes, so equal keys mean equal
 * fragments. The session is part of the key because the fingerprint is the client's
 * word: one tenant must not be able to file nodes under a fingerprint another uses.
 * Bounded LRU; entries are reference-counted so eviction never frees a fragment a
 * worker is running. */
#ifndef DJN_TLB_H
#define DJN_TLB_H

#include <stdint.h>

#include "djn_proto.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct djn_tlb djn_tlb_t;
typedef struct djn_tlb_entry djn_tlb_entry_t;

typedef struct djn_tlb_stats {
    uint64_t entries, capacity, hits, misses, inserts, evictions;
} djn_tlb_stats_t;

djn_tlb_t *djn_tlb_new(uint32_t capacity);
void djn_tlb_destroy(djn_tlb_t **self_p);
/* Hit: a reference to the entry (release it when done); miss: NULL. */
djn_tlb_entry_t *djn_tlb_lookup(djn_tlb_t *t, const uint64_t fp[2], uint32_t dev, uint64_t sid);
/* Take ownership of a decoded GRAPH (its nodes are kept). No-op if already present or
 * the message has no fingerprint; *msg_p is NULL afterwards if it was taken. */
void djn_tlb_insert(djn_tlb_t *t, djn_msg_t **msg_p);
void djn_tlb_release(djn_tlb_t *t, djn_tlb_entry_t **e_p);
/* The slab plan of a cached fragment, by slot: place[slot] = offset + 1 (0: not planned).
 * Attached when the fragment is filed; a hit reuses it instead of planning again. */
void djn_tlb_insert_planned(djn_tlb_t *t, djn_msg_t **msg_p, const uint64_t *place, uint32_t nslots,
                            uint64_t peak);
bool djn_tlb_plan(const djn_tlb_entry_t *e, const uint64_t **place, uint32_t *nslots, uint64_t *peak);
const djn_graph_req_t *djn_tlb_graph(const djn_tlb_entry_t *e);
void djn_tlb_stats(djn_tlb_t *t, djn_tlb_stats_t *out);

#ifdef __cplusplus
}
#endif
#endif
