/* djn_gcache.h: the graph cache: device graphs captured from plan-cache fragments, by
 * plan, for replay in one launch.
 *
 * A fragment the plan cache (djn_tlb) holds runs the same kernels on the same addresses
 * every time its shapes are the same and its slab window starts at the same offset: then
 * its captured graph (djn_dev_capture_end) can be replayed instead of launching every
 * node. The key is what makes that true: the plan's (fingerprint, device, session), the
 * shape key of its integers (exact, or bucketed: djn_gcache_shape_key), and the entry
 * remembers the slab base the graph was captured at (djn_dvmu_fragment_begin's
 * want_base on replay). The session is in the key because a graph bakes in the
 * addresses of that session's tensors.
 *
 * Policy: a key seen for the first time only counts (the first run of a plan pays lazy
 * initialisation: cuBLAS handles, workspaces, which cannot be captured); on a later run
 * djn_gcache_want_capture says capture; a fragment that cannot be captured is marked and
 * never tried again. LRU-bounded by entries; an entry leaves with its plan-cache entry
 * (djn_gcache_drop_plan, wired through djn_tlb_on_drop) or its session.
 *
 * Graph handles are opaque (djn_dev_graph_t) and destroyed through the seam of the device
 * they were filed with; one cache serves all devices, like the plan cache. Entries are
 * reference-counted: eviction never destroys a graph a worker is launching. Thread-safe. */
#ifndef DJN_GCACHE_H
#define DJN_GCACHE_H

#include <stdbool.h>
#include <stdint.h>

#include "djn_dev.h"
#include "djn_status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct djn_gcache djn_gcache_t;
typedef struct djn_gcache_entry djn_gcache_entry_t;

typedef struct djn_gcache_key {
    uint64_t fp[2];
    uint32_t device;
    uint64_t sid;
    uint64_t shape; /* djn_gcache_shape_key */
} djn_gcache_key_t;

/* The bucket of one integer: itself up to 64 (dimensions, flags, small sizes stay
 * exact), negative ones too; above, the next power of two. A graph replayed for a
 * bucketed key must have been captured with its shapes padded to the bucket. */
int64_t djn_gcache_bucket(int64_t n);
/* A hash of the integers (a fragment's symbolic bindings, djn_sym), each bucketed or not. */
uint64_t djn_gcache_shape_key(const int64_t *ints, uint32_t n, bool bucketed);

/* capture_after: sightings of a key before it is worth capturing (>= 1; 2 in use). NULL
 * on host OOM or capacity 0. */
djn_gcache_t *djn_gcache_new(uint32_t capacity, uint32_t capture_after);
void djn_gcache_destroy(djn_gcache_t **self_p);

/* A graph for this key: a reference (djn_gcache_release), or NULL. Counts a hit or miss. */
djn_gcache_entry_t *djn_gcache_lookup(djn_gcache_t *c, const djn_gcache_key_t *k);
djn_dev_graph_t *djn_gcache_graph(const djn_gcache_entry_t *e);
uint64_t djn_gcache_slab_base(const djn_gcache_entry_t *e);
void djn_gcache_release(djn_gcache_t *c, djn_gcache_entry_t **e_p);

/* A run of key without a graph: whether to capture this one (seen capture_after times,
 * not refused). Counts the sighting (an entry without a graph, in the LRU as well). */
bool djn_gcache_want_capture(djn_gcache_t *c, const djn_gcache_key_t *k);
/* File the graph captured on dev for key at slab_base; the cache owns g from here on
 * (destroyed through dev at once if the key is refused or holds a graph already:
 * DJN_ERR_ARGS, or on host OOM). dev is borrowed and must outlive the entry. */
djn_status_t djn_gcache_insert(djn_gcache_t *c, const djn_gcache_key_t *k, djn_dev_t *dev,
                               djn_dev_graph_t *g, uint64_t slab_base);
/* Capture failed or the fragment is not capturable: never try this key again (until its
 * entry leaves). */
void djn_gcache_refuse(djn_gcache_t *c, const djn_gcache_key_t *k);

/* Every entry of a plan (all its shape keys), or of these sessions. */
void djn_gcache_drop_plan(djn_gcache_t *c, const uint64_t fp[2], uint32_t device, uint64_t sid);
void djn_gcache_drop_sessions(djn_gcache_t *c, const uint64_t *sids, uint32_t n);
/* djn_tlb_on_drop's callback (ctx: the graph cache). */
void djn_gcache_tlb_drop_fn(void *ctx, const uint64_t fp[2], uint32_t dev, uint64_t sid);

typedef struct djn_gcache_stats {
    uint64_t entries, graphs, capacity;
    uint64_t hits, misses, captures, refused, evictions, dropped;
} djn_gcache_stats_t;
void djn_gcache_stats(djn_gcache_t *c, djn_gcache_stats_t *out);

#ifdef __cplusplus
}
#endif
#endif
