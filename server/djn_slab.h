/* djn_slab.h: the Stack segment, one per device: activations of the fragment executing.
 *
 * Owns the bookkeeping of one device region of `capacity` bytes (someone else maps it):
 * hands out byte OFFSETS and never touches the memory. Activations live exactly as long
 * as the fragment that makes them, so the slab is a stack: allocation bumps a top
 * pointer, and everything above a watermark is released at once by resetting to it when
 * the device has finished the fragment. The planner can instead place tensors at offsets
 * it computed (djn_slab_reserve_at); the slab then only accounts for them.
 *
 * External fragmentation is zero by construction: nothing is freed one block at a time,
 * so the free space is always the single range [top, capacity) and any request of at most
 * capacity - round_up(top, align) bytes fits. The only waste is the alignment padding in
 * front of each block (fewer than `align` bytes, internal to the allocation) and whatever
 * gaps a planner leaves between the placements it reserves below top, which are its
 * choice, not the slab's.
 *
 * Not thread-safe: the executor that owns the device owns its slab. */
#ifndef DJN_SLAB_H
#define DJN_SLAB_H

#include <stdint.h>

#include "djn_status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct djn_slab djn_slab_t;

typedef struct djn_slab_stats {
    uint64_t capacity;
    uint64_t top;        /* current watermark: everything in use lies below it */
    uint64_t high_water; /* highest top since creation: the slab size this workload needs */
    uint64_t resets;     /* djn_slab_reset calls since creation */
    uint64_t allocs;     /* successful djn_slab_alloc calls since creation */
} djn_slab_stats_t;

/* align: a power of two (256 in use). NULL on a bad align or host OOM. */
djn_slab_t *djn_slab_new(uint64_t capacity, uint32_t align);
void djn_slab_destroy(djn_slab_t **self_p);

/* Offset round_up(top, align); top moves past the block. nbytes 0 counts as 1 byte so
 * every allocation has its own offset. DJN_ERR_OOM past capacity, nothing changed. */
djn_status_t djn_slab_alloc(djn_slab_t *s, uint64_t nbytes, uint64_t *offset_out);
/* A planned placement: [offset, offset + nbytes) is in use. top and high_water rise to
 * its end if below (later bump allocations go above it). DJN_ERR_ARGS if offset is not a
 * multiple of align, DJN_ERR_OOM if the range ends past capacity; nothing changed. */
djn_status_t djn_slab_reserve_at(djn_slab_t *s, uint64_t offset, uint64_t nbytes);
/* The current top, to reset to later. */
uint64_t djn_slab_mark(const djn_slab_t *s);
/* Releases everything above `mark` (a value djn_slab_mark returned, at most the current
 * top). The caller guarantees the device finished with it. */
void djn_slab_reset(djn_slab_t *s, uint64_t mark);
void djn_slab_stats(const djn_slab_t *s, djn_slab_stats_t *out);

#ifdef __cplusplus
}
#endif
#endif
