/* djn_tlb.h: the plan cache ("TLB"): fragments the server has run, by fingerprint.
 *
 * A client that knows the server holds a fragment sends GRAPH_CACHED: the fingerprint
 * and the new bindings, no nodes. A hit skips decoding the nodes (and, with the VMU,
 * planning). An entry keeps only what a hit needs: a compact copy of the nodes (not the
 * message they came in) and the slab plan by slot, keyed by (XXH3-128 fingerprint,
 * device, session); the fingerprint covers every op, shape, dtype, scalar and the wiring
 * between nodes, so equal keys mean equal fragments. The session is part of the key
 * because the fingerprint is the client's word: one tenant must not be able to file
 * nodes under a fingerprint another uses; and a session's entries leave with it.
 * Bounded LRU; entries are reference-counted so eviction never frees a fragment a
 * worker is running. */
#ifndef DJN_TLB_H
#define DJN_TLB_H

#include <stdbool.h>
#include <stdint.h>

#include "djn_codec.h"
#include "djn_proto.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct djn_tlb djn_tlb_t;
typedef struct djn_tlb_entry djn_tlb_entry_t;

djn_tlb_t *djn_tlb_new(uint32_t capacity);
void djn_tlb_destroy(djn_tlb_t **self_p);
/* Hit: a reference to the entry (release it when done); miss: NULL. */
djn_tlb_entry_t *djn_tlb_lookup(djn_tlb_t *t, const uint64_t fp[2], uint32_t dev, uint64_t sid);
/* Who pays for an entry: charge_fn may refuse its host bytes (then nothing is filed).
 * release_fn is called exactly once per insert that names an owner: when the entry is
 * gone (evicted, dropped, destroyed) with the bytes charged, or at once with 0 when
 * nothing was filed. */
typedef struct djn_tlb_owner {
    void *ctx;
    bool (*charge_fn)(void *ctx, uint64_t bytes);
    void (*release_fn)(void *ctx, uint64_t bytes);
    /* asked under the cache's lock just before filing (NULL: always): false once the
     * owner is gone, so that an entry never outlives a djn_tlb_drop_sessions that
     * started after the owner left */
    bool (*live_fn)(void *ctx);
} djn_tlb_owner_t;

/* File the nodes of a GRAPH that ran (copied), with its slab plan by slot
 * (place[slot] = offset + 1, 0: not planned; psize[slot]: the bytes planned there;
 * NULL/0 for none) and its template (djn_sym.h: the integers of its nodes, its binds,
 * allocs and frees). No-op if the key is present with the same template digest, the
 * cache is off, the fragment has no nodes or no fingerprint, the owner refuses the bytes,
 * or on OOM; an entry with the key and another template is replaced (the client's
 * template is the one it sent last). owner may be NULL. */
void djn_tlb_insert(djn_tlb_t *t, uint64_t sid, const djn_graph_req_t *g, const uint64_t *place,
                    const uint64_t *psize, uint32_t nslots, uint64_t peak,
                    const djn_tlb_owner_t *owner);
/* Called under the cache's lock for each entry that leaves it (evicted, replaced by
 * another template, dropped with its session, destroyed with the cache), so that what is
 * derived from a plan leaves with it (its captured graphs: djn_gcache_drop_plan). It must
 * not call back into the cache. fn NULL: none. */
typedef void (*djn_tlb_drop_fn)(void *ctx, const uint64_t fp[2], uint32_t dev, uint64_t sid);
void djn_tlb_on_drop(djn_tlb_t *t, djn_tlb_drop_fn fn, void *ctx);
/* Drop every entry of these sessions (closed or expired): one walk of the cache. */
void djn_tlb_drop_sessions(djn_tlb_t *t, const uint64_t *sids, uint32_t n);
uint32_t djn_tlb_session_entries(djn_tlb_t *t, uint64_t sid);
void djn_tlb_release(djn_tlb_t *t, djn_tlb_entry_t **e_p);
bool djn_tlb_plan(const djn_tlb_entry_t *e, const uint64_t **place, uint32_t *nslots,
                  uint64_t *peak);
/* The bytes planned for each slot of the plan (NULL: none recorded). */
const uint64_t *djn_tlb_plan_sizes(const djn_tlb_entry_t *e);

/* The template a GRAPH_CACHED patches (djn_sym.h, docs/PROTOCOL.md 7.4). */
typedef struct djn_tlb_tpl {
    uint64_t digest;       /* djn_sym_digest of what follows */
    const uint32_t *start; /* nnodes + 1: position of each node's first integer, total */
    const uint64_t *binds;
    const djn_alloc_t *allocs;
    const uint64_t *frees;
    uint32_t nbinds, nallocs, nfrees;
} djn_tlb_tpl_t;
const djn_tlb_tpl_t *djn_tlb_template(const djn_tlb_entry_t *e);

/* A run of the entry's nodes (`nodes`: the bound copy that ran) took ns (UINT64_MAX:
 * never run it inline). Kept with the integers of those nodes. */
void djn_tlb_note_run(djn_tlb_entry_t *e, uint64_t ns, const djn_node_t *nodes);
/* Whether a bound copy of the entry's nodes may run inline (PROTOCOL.md 7.4): the last
 * run took at most max_ns, and no integer of `nodes` exceeds that run's by more than an
 * eighth plus one in magnitude, so that a palette or patch scaling the shapes up runs
 * on the worker, while sizes that grow a little per step (a KV length) stay inline. */
bool djn_tlb_inline_ok(djn_tlb_entry_t *e, const djn_node_t *nodes, uint64_t max_ns);
/* The cached fragment: nodes, nnodes, nslots and fp (nothing else is kept). */
const djn_graph_req_t *djn_tlb_graph(const djn_tlb_entry_t *e);

/* A GRAPH_CACHED against its template (7.4): when g->tpl is set it must be the entry's
 * template digest (else DJN_ERR_EVICTED: the client resends the GRAPH); the compact
 * fields (binds_d, allocs_d, allocs_n, frees_d) are expanded against the template into
 * g's plain arrays, checked as the decoder checks them, and *nodes is set to a copy of
 * the cached nodes with the integer patch applied (in `a`; the cached nodes themselves
 * when there is no patch). With 'pal', the pattern ('pat', which the entry then keeps,
 * or the kept one 'pid' names: else DJN_ERR_EVICTED) turns into those fields first. Also
 * checks that the binds cover the cached slots. Any other failure is DJN_ERR_PROTO with
 * the reason in err; nothing has been applied but a kept pattern. Call it from one
 * thread only (the transport): it writes the entry's pattern. */
djn_status_t djn_tlb_bind(djn_arena_t *a, djn_graph_req_t *g, djn_tlb_entry_t *e,
                          const djn_node_t **nodes, char *err, size_t errlen);

typedef struct djn_tlb_stats {
    uint64_t entries, capacity, hits, misses, inserts, evictions, bytes;
} djn_tlb_stats_t;
void djn_tlb_stats(djn_tlb_t *t, djn_tlb_stats_t *out);

#ifdef __cplusplus
}
#endif
#endif
