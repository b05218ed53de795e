/* djn_heap.h: the Data segment allocator, one per device.
 *
 * Owns the bookkeeping of a device region of `capacity` bytes that someone else maps;
 * hands out byte OFFSETS into it and never touches the device memory. The Data segment
 * holds state that outlives one fragment: KV caches, outputs a client still holds. Those
 * live for a long and unpredictable time and grow by reallocation, so what matters here is
 * external fragmentation (how much free device memory is unusable because it is split),
 * not nanoseconds of host CPU per call.
 *
 * Policy: exact best-fit with lowest-address tie-breaking, immediate coalescing with both
 * neighbours on free. Free blocks are indexed by (size, offset) in a treap, so
 * alloc/free are O(log n) expected in the number of free blocks; live blocks are found
 * by offset through a hash map, O(1). Metadata is host memory (djn_malloc).
 *
 * Why best-fit over TLSF: TLSF gets O(1) by rounding the request up to the next
 * second-level class before searching, so it skips exact and near fits in the request's
 * own class and is "good-fit", not best-fit. The host cost of O(log n) with n in the
 * thousands is tens of nanoseconds, nothing next to a network round trip and a kernel
 * launch, while device bytes are the scarce resource. Best-fit, address-ordered is among
 * the lowest-fragmentation policies measured (Wilson, Johnstone et al., "The memory
 * fragmentation problem: solved?", 1998), it is what PyTorch's CUDA caching allocator
 * does within a segment (a set ordered by (size, ptr)), and it is deterministic: a
 * reference model can predict the exact offset of every allocation (test_heap.c does).
 * Rejected: buddy (up to 50% internal waste on KV caches of arbitrary length), first-fit
 * over one address-ordered list (O(n) scans).
 *
 * Semantics: sizes are rounded up to `align` (nbytes 0 gets one `align` block), offsets
 * are multiples of `align`, capacity is rounded down to a multiple of `align`. An offset
 * that is not currently allocated (double free, garbage) is refused with DJN_ERR_ARGS
 * and changes nothing. An alloc that fails (DJN_ERR_OOM: no single free block fits;
 * DJN_ERR_NOMEM: host memory) changes nothing either. Not thread-safe: the owner locks. */
#ifndef DJN_HEAP_H
#define DJN_HEAP_H

#include <stdint.h>

#include "djn_status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct djn_heap djn_heap_t;

typedef struct djn_heap_stats {
    uint64_t capacity;     /* usable bytes (rounded down to align) */
    uint64_t used;         /* bytes in live blocks (rounded sizes) */
    uint64_t peak;         /* highest `used` since creation */
    uint64_t free_bytes;   /* capacity - used */
    uint64_t largest_free; /* the largest single free block: the biggest alloc that fits */
    uint64_t free_blocks;  /* number of free blocks (1 when empty: coalescing is complete) */
    uint64_t allocs;       /* number of live blocks */
    double fragmentation;  /* 1 - largest_free/free_bytes, 0 when free_bytes == 0 */
} djn_heap_stats_t;

/* align: a power of two (256 in use). NULL on bad arguments (align not a power of two,
 * capacity below align) or host OOM. */
djn_heap_t *djn_heap_new(uint64_t capacity, uint32_t align);
void djn_heap_destroy(djn_heap_t **self_p);

/* DJN_ERR_OOM if no single free block fits, DJN_ERR_NOMEM on host OOM. */
djn_status_t djn_heap_alloc(djn_heap_t *h, uint64_t nbytes, uint64_t *offset_out);
/* DJN_ERR_ARGS for an offset not currently allocated. Never allocates host memory. */
djn_status_t djn_heap_free(djn_heap_t *h, uint64_t offset);
/* The allocated (rounded) size of the block at `offset`, 0 if none starts there. */
uint64_t djn_heap_size_of(const djn_heap_t *h, uint64_t offset);
void djn_heap_stats(const djn_heap_t *h, djn_heap_stats_t *out);
/* Walks every structure and checks every invariant listed in djn_heap.c, O(n): for tests
 * and debug builds. DJN_OK or DJN_ERR_INTERNAL. */
djn_status_t djn_heap_check(const djn_heap_t *h);

#ifdef __cplusplus
}
#endif
#endif
