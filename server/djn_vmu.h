/* djn_vmu.h: the virtual memory unit of one CPU device: a Data segment (a best-fit
 * heap, djn_heap) and a Stack slab (djn_slab) carved out of one reserved host region.
 * (Text content lives in the Data segment, accounted separately by djn_text.)
 *
 * Every allocation the server's ATen makes on a worker thread goes through here: the
 * executor installs a c10 CPU allocator that asks the worker's VMU, in Data mode (the
 * default: uploads, KV caches, outputs clients hold) or Slab mode (while a fragment's
 * nodes run: activations and op temporaries). After a fragment, anything still live in
 * the slab that a client holds is copied out to Data, and the slab is reset to empty
 * once nothing references it.
 *
 * Regions are reserved with mmap(MAP_NORESERVE): capacity costs address space, and
 * pages are committed only when touched. */
#ifndef DJN_VMU_H
#define DJN_VMU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "djn_heap.h"
#include "djn_slab.h"
#include "djn_status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct djn_vmu djn_vmu_t;

typedef struct djn_vmu_stats {
    djn_heap_stats_t data;
    djn_slab_stats_t slab;
    uint64_t slab_live;            /* slab allocations not yet released */
    uint64_t slab_resets_deferred; /* fragments after which something still held the slab */
    uint64_t fragments, planned_fragments;
    uint64_t plan_peak_last, plan_lower_bound_last, plan_bump_last; /* last planned fragment */
    uint64_t plan_peak_sum, plan_lower_bound_sum, plan_bump_sum;
    /* measured: the slab top a planned fragment really reached (its planned placements
     * plus whatever ATen allocated above them while its nodes ran) */
    uint64_t plan_high_water_last, plan_high_water_sum;
    /* the planned peaks of those same fragments (plan-cache hits included) and their
     * number: plan_high_water_sum / plan_reserved_sum is what the plan really cost */
    uint64_t plan_reserved_sum, planned_runs;
    uint64_t copied_out_bytes;      /* persistent results moved from slab to Data */
    uint64_t scrub_bytes, scrub_ns; /* memory zeroed before it changed hands, and the time */
} djn_vmu_stats_t;

djn_vmu_t *djn_vmu_new(uint64_t data_bytes, uint64_t slab_bytes, char *err, size_t errlen);
void djn_vmu_destroy(djn_vmu_t **self_p);

void *djn_vmu_data_alloc(djn_vmu_t *v, uint64_t n); /* NULL when the segment is full */
void *djn_vmu_slab_alloc(djn_vmu_t *v, uint64_t n); /* bump above the planned region */
void *djn_vmu_slab_at(djn_vmu_t *v, uint64_t offset, uint64_t n); /* a planned placement */
/* The VMU whose region holds p, or NULL: how a deleter running on any thread finds the
 * segment of an address. A VMU is findable from djn_vmu_new to djn_vmu_destroy, which
 * must come after every storage in it was released (the server destroys sessions, the
 * Text segment and the plan cache first). */
djn_vmu_t *djn_vmu_find(const void *p);
/* Free memory from either segment (the address tells which); false if not ours. */
bool djn_vmu_release(djn_vmu_t *v, void *p);
bool djn_vmu_in_slab(const djn_vmu_t *v, const void *p);
bool djn_vmu_owns(const djn_vmu_t *v, const void *p);

/* Fragment boundaries: begin reserves the planned region [0, planned_peak); end resets
 * the slab if nothing references it any more. */
djn_status_t djn_vmu_fragment_begin(djn_vmu_t *v, uint64_t planned_peak);
void djn_vmu_fragment_end(djn_vmu_t *v);
void djn_vmu_note_plan(djn_vmu_t *v, uint64_t peak, uint64_t lower_bound, uint64_t bump);
void djn_vmu_note_copy_out(djn_vmu_t *v, uint64_t n);
void djn_vmu_stats(djn_vmu_t *v, djn_vmu_stats_t *out);
uint64_t djn_vmu_slab_capacity(const djn_vmu_t *v);
/* Free bytes of the Data segment now, and its capacity (the fit check of a fragment). */
uint64_t djn_vmu_data_free(djn_vmu_t *v, uint64_t *capacity);

#ifdef __cplusplus
}
#endif
#endif
