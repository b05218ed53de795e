/* djn_dvmu.h: the VMU of an accelerator device: one device-memory arena, reserved once
 * through the device seam (djn_dev.h), carved by the same Data heap (djn_heap) and stack
 * slab (djn_slab) as the CPU VMU (djn_vmu.h), with reuse ordered by stream events
 * instead of by the host having waited for the device.
 *
 * Layout: [ Data segment: data_bytes ][ Stack slab: slab_bytes ], one reservation.
 *
 * What differs from the CPU VMU is time: the host runs ahead of the device, so memory a
 * fragment has finished with on the host may still be read or written by queued work.
 * Two rules (stated with their algorithms in djn_dvmu.c):
 *   - Data: a block freed on stream s is zeroed by a memset queued on s and stays
 *     "dirty on s" until an event recorded on s after that memset is done; an
 *     allocation on s may take it at once (stream order), an allocation on another
 *     stream first makes its stream wait on that event (device-side, no host block).
 *   - Slab: each fragment gets a window of the slab (a generation); at its end the used
 *     range is zeroed on the fragment's stream and an event recorded; a later window on
 *     the same stream may start at the same offset at once, one on another stream only
 *     after the event is done or after its stream waited on it. A generation still
 *     referenced (a result not yet copied out) is held until its last reference goes.
 *
 * The pluggable-allocator entry points (djn_dvmu_alloc_fn / djn_dvmu_free_fn) have the
 * shape torch's CUDAPluggableAllocator takes (size, device, stream): the server's
 * executor installs them before the first CUDA allocation (executor.cpp, DJN_CUDA), and
 * benchmarks/vmu_alloc.c builds them into a .so for torch.cuda.memory.CUDAPluggableAllocator.
 * Thread-safe: one lock per VMU; deleters arrive from any thread.
 *
 * Not yet handled (the GPU phase, with a GPU to check them): a block used on a stream
 * other than the one it was allocated on (torch's record_stream: the pluggable
 * allocator's record_stream_fn is not set, so such a use is not waited for), and frees
 * during a stream capture (their scrub would be captured into the graph: a capturing
 * worker must park them until the capture ends). */
#ifndef DJN_DVMU_H
#define DJN_DVMU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "djn_dev.h"
#include "djn_heap.h"
#include "djn_status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct djn_dvmu djn_dvmu_t;

typedef struct djn_dvmu_stats {
    djn_heap_stats_t data;
    uint64_t data_dirty;        /* freed Data ranges whose last use may still be queued */
    uint64_t data_fences;       /* events recorded to retire dirty ranges */
    uint64_t data_stream_waits; /* allocations that waited on another stream's frees */
    uint64_t slab_capacity;
    uint64_t slab_high_water;   /* highest window end a fragment reached */
    uint64_t slab_live;         /* slab allocations not yet released */
    uint64_t fragments;         /* windows opened */
    uint64_t windows_moved;     /* windows placed above 0 (another stream's work in flight) */
    uint64_t slab_stream_waits; /* in-flight ranges a stream waited on instead of the host */
    uint64_t slab_inflight;     /* slab ranges whose last use may still be queued */
    uint64_t gens_held;         /* windows a live result still references */
    uint64_t scrub_bytes;       /* zeroed on the device before changing hands */
    uint64_t events;            /* events created (pooled and reused) */
} djn_dvmu_stats_t;

/* data_bytes 0: 90 % of the device's free memory, less the slab; slab_bytes 0: an eighth
 * of that. The arena is zeroed once (a host wait), so every free byte reads as zero.
 * dev is borrowed and must outlive the VMU. NULL with the reason in err. */
djn_dvmu_t *djn_dvmu_new(djn_dev_t *dev, uint64_t data_bytes, uint64_t slab_bytes, char *err,
                         size_t errlen);
/* Waits for the device to finish with the arena, then gives it back. Every allocation
 * must have been released (asserted in tests through djn_dvmu_stats). */
void djn_dvmu_destroy(djn_dvmu_t **self_p);
djn_dev_t *djn_dvmu_dev(const djn_dvmu_t *v);

/* Data segment: NULL when no single free block fits n bytes. */
void *djn_dvmu_data_alloc(djn_dvmu_t *v, uint64_t n, djn_dev_stream_t *s);
/* Either segment (the address tells which); s: the stream the memory was last used on.
 * false if p is not in this arena. */
bool djn_dvmu_release(djn_dvmu_t *v, void *p, djn_dev_stream_t *s);
bool djn_dvmu_owns(const djn_dvmu_t *v, const void *p);
bool djn_dvmu_in_slab(const djn_dvmu_t *v, const void *p);
/* The arena holding p among the registered ones (djn_dvmu_register), or NULL. */
djn_dvmu_t *djn_dvmu_find(const void *p);

/* Fragments. begin opens a window of at least planned_peak bytes for the fragment that
 * runs on s (want_base: the window must start there, UINT64_MAX: anywhere; a replayed
 * graph needs the addresses it was captured with). DJN_ERR_OOM: no window fits now
 * (generations held by live results); the fragment then runs unplanned, in Data.
 * DJN_ERR_ARGS: a window is open already. */
djn_status_t djn_dvmu_fragment_begin(djn_dvmu_t *v, djn_dev_stream_t *s, uint64_t planned_peak,
                                     uint64_t want_base);
/* The open window: its base offset in the slab (planned offsets are relative to it) and
 * its current end. false when none is open. */
bool djn_dvmu_window(djn_dvmu_t *v, uint64_t *base, uint64_t *end);
/* A planned placement at `offset` from the window base. */
void *djn_dvmu_slab_at(djn_dvmu_t *v, uint64_t offset, uint64_t n);
/* Bump above the planned region, growing the window past generations in flight on other
 * streams by making s wait on them; NULL when it cannot grow. */
void *djn_dvmu_slab_alloc(djn_dvmu_t *v, uint64_t n, djn_dev_stream_t *s);
/* Closes the window: zeroes what it used and records its event on s (or holds it while
 * a slab allocation is live: the last release retires it). */
djn_status_t djn_dvmu_fragment_end(djn_dvmu_t *v, djn_dev_stream_t *s);

void djn_dvmu_stats(djn_dvmu_t *v, djn_dvmu_stats_t *out);

/* ---- torch's pluggable allocator shape: one arena per device index ---- */

/* Make v the arena of device index `device` (v NULL: none); false past 64 devices. */
bool djn_dvmu_register(int device, djn_dvmu_t *v);
djn_dvmu_t *djn_dvmu_of_device(int device);
/* While true on this thread, djn_dvmu_alloc_fn takes memory from the open slab window
 * (the nodes of a planned fragment); returns the previous setting. */
bool djn_dvmu_thread_slab(bool on);
/* alloc(size, device, stream): the device's arena (slab window or Data); NULL when it
 * cannot (no arena registered, or full): the C++ caller turns that into torch's
 * OutOfMemoryError with djn_dvmu_oom_words. */
void *djn_dvmu_alloc_fn(size_t size, int device, void *stream);
void djn_dvmu_free_fn(void *ptr, size_t size, int device, void *stream);
/* Why the last djn_dvmu_alloc_fn on this thread returned NULL, in words. */
const char *djn_dvmu_oom_words(void);

#ifdef __cplusplus
}
#endif
#endif
