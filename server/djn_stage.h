/* djn_stage.h: the pinned staging ring: host memory the device can copy from and to
 * asynchronously, reused only once the copies that read or wrote it are done.
 *
 * A CUDA copy from pageable host memory is synchronous for the host and slow; one from
 * pinned memory (cudaHostAlloc) is asynchronous on its stream and runs at the link's
 * speed, so an upload can overlap the previous fragment's compute. Pinned memory is
 * expensive to allocate and to hold, so uploads and fetches share one ring of it per
 * device, allocated once through the seam (djn_dev_host_alloc: cudaHostAlloc on CUDA,
 * plain aligned memory on the fake device).
 *
 * A chunk's life:
 *   upload: acquire -> the host writes it -> djn_dev_memcpy(H2D) on the copy stream ->
 *           fence (an event on that stream) -> release: the ring reuses its bytes once
 *           the fence is done, without the host ever waiting for the copy;
 *   fetch:  acquire -> djn_dev_memcpy(D2H) -> fence -> wait (the host, bounded by the
 *           device) -> the host reads it -> release.
 * Chunks are contiguous (a request never straddles the end: the ring skips the tail and
 * wraps), handed out in ring order and reclaimed in that order. Thread-safe. */
#ifndef DJN_STAGE_H
#define DJN_STAGE_H

#include <stdbool.h>
#include <stdint.h>

#include "djn_dev.h"
#include "djn_status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct djn_stage djn_stage_t;

typedef struct djn_stage_chunk {
    uint8_t *p;
    uint64_t n;
    uint64_t ticket; /* names the chunk in fence / wait / release */
} djn_stage_chunk_t;

/* bytes of pinned memory (rounded up to 256), at most max_chunks chunks in flight (0: 64).
 * dev is borrowed. NULL with the reason in err. */
djn_stage_t *djn_stage_new(djn_dev_t *dev, uint64_t bytes, uint32_t max_chunks, char *err,
                           size_t errlen);
/* Waits for every fence, then frees the ring. Every chunk must be released. */
void djn_stage_destroy(djn_stage_t **self_p);
uint64_t djn_stage_capacity(const djn_stage_t *r);

/* n contiguous bytes (n >= 1). When the ring is short, the host waits for the oldest
 * fenced chunks to be done (wait false: DJN_ERR_TIMEOUT instead). DJN_ERR_LIMIT: n is more
 * than the ring holds (the caller copies in pieces, or from pageable memory).
 * DJN_ERR_OOM: the room is held by chunks not yet released (nothing to wait for). */
djn_status_t djn_stage_acquire(djn_stage_t *r, uint64_t n, bool wait, djn_stage_chunk_t *out);
/* Record the chunk's fence on s, after the copies enqueued on s so far (one fence per
 * chunk; a second call moves it later). When no event can be had or recorded, the host
 * synchronises s instead: DJN_OK either way, the chunk is then safe. */
djn_status_t djn_stage_fence(djn_stage_t *r, uint64_t ticket, djn_dev_stream_t *s);
/* The host waits for the chunk's fence (a fetch, before reading the bytes). */
djn_status_t djn_stage_wait(djn_stage_t *r, uint64_t ticket);
/* The host is done with the chunk: its bytes return to the ring once its fence (if any) is
 * done. */
void djn_stage_release(djn_stage_t *r, uint64_t ticket);

typedef struct djn_stage_stats {
    uint64_t capacity, in_use; /* bytes between the oldest unreclaimed chunk and the head */
    uint64_t chunks;           /* acquired, not yet reclaimed */
    uint64_t acquires, wraps, host_waits, full; /* full: acquires refused (OOM / TIMEOUT) */
    uint64_t bytes;                             /* acquired in total */
} djn_stage_stats_t;
void djn_stage_stats(djn_stage_t *r, djn_stage_stats_t *out);

#ifdef __cplusplus
}
#endif
#endif
