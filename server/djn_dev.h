/* djn_dev.h: the device seam: the few things the memory kernel asks of an accelerator.
 *
 * The VMU on device memory (djn_dvmu), the pinned staging ring (djn_stage) and the graph
 * cache (djn_gcache) are written against this seam, never against CUDA, so they compile
 * and are unit-tested with no GPU and no CUDA linked (CONVENTIONS 7). Two implementations:
 *
 *   - djn_dev_fake_new(): a CPU device for tests. "Device memory" is host memory filled
 *     with 0xA5 (cudaMalloc does not zero either), streams are FIFOs of operations, and
 *     an event completes when the operation recorded on its stream has executed. In
 *     `held` mode nothing executes until the test says so (djn_dev_fake_step/_drain),
 *     so a test can delay completion and check that nothing reuses memory a pending
 *     operation still reads or writes. Host waits (djn_dev_event_wait) execute streams
 *     until the event is done, exactly what a blocking cudaEventSynchronize observes.
 *   - djn_dev_cuda_new() (djn_dev_cuda.c, built only with -DDJN_CUDA): the CUDA runtime
 *     API: cudaMalloc, cudaHostAlloc, cudaStreamCreateWithPriority, cudaEventRecord /
 *     Query / Synchronize, cudaStreamWaitEvent, cudaMemcpyAsync / cudaMemsetAsync, stream
 *     capture into an instantiated graph and cudaGraphLaunch.
 *
 * Handles are the implementation's own: a djn_dev_stream_t * IS a cudaStream_t on CUDA
 * (NULL: the legacy default stream), so the stream torch's pluggable allocator passes in
 * is used as is; events are cudaEvent_t, graphs cudaGraphExec_t. The seam never wraps
 * them in host objects of its own.
 *
 * Semantics every implementation keeps (the fake checks them, CUDA has them):
 *   1. operations on one stream execute in the order they were enqueued;
 *   2. an event is done once the operation before which it was recorded has executed;
 *      an event never recorded is done (cudaEventQuery's answer);
 *   3. djn_dev_stream_wait(s, e) makes everything enqueued on s afterwards wait for the
 *      record of e that was current at the call; re-recording e later changes nothing
 *      for s (so a pooled event may be recycled right after a stream waited on it);
 *   4. copies and memsets read and write their buffers when they execute, not when they
 *      are enqueued: a host buffer must stay untouched until an event after the copy is
 *      done (what djn_stage is for). */
#ifndef DJN_DEV_H
#define DJN_DEV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "djn_status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct djn_dev djn_dev_t;
typedef struct djn_dev_stream djn_dev_stream_t; /* cudaStream_t */
typedef struct djn_dev_event djn_dev_event_t;   /* cudaEvent_t */
typedef struct djn_dev_graph djn_dev_graph_t;   /* cudaGraphExec_t */

typedef enum { DJN_DEV_H2D = 1, DJN_DEV_D2H = 2, DJN_DEV_D2D = 3 } djn_dev_copy_t;

/* The vtable an implementation fills. Every call may fail with DJN_ERR_DEVICE (the
 * words in djn_dev_last_error); none allocates through djn_mem except as noted. */
typedef struct djn_dev_ops {
    const char *name;
    djn_status_t (*mem_info_fn)(void *ctx, uint64_t *free_bytes, uint64_t *total_bytes);
    djn_status_t (*reserve_fn)(void *ctx, uint64_t n, void **out); /* device memory */
    void (*release_fn)(void *ctx, void *p);
    djn_status_t (*host_alloc_fn)(void *ctx, uint64_t n, void **out); /* pinned host memory */
    void (*host_free_fn)(void *ctx, void *p);
    /* priority: 0 normal, < 0 more urgent (CUDA's convention, clamped to its range) */
    djn_status_t (*stream_new_fn)(void *ctx, int priority, djn_dev_stream_t **out);
    void (*stream_destroy_fn)(void *ctx, djn_dev_stream_t *s);
    djn_status_t (*event_new_fn)(void *ctx, djn_dev_event_t **out);
    void (*event_destroy_fn)(void *ctx, djn_dev_event_t *e);
    djn_status_t (*event_record_fn)(void *ctx, djn_dev_event_t *e, djn_dev_stream_t *s);
    /* DJN_OK: done; DJN_ERR_TIMEOUT: still pending; anything else: the device failed */
    djn_status_t (*event_query_fn)(void *ctx, djn_dev_event_t *e);
    djn_status_t (*event_wait_fn)(void *ctx, djn_dev_event_t *e); /* the host blocks */
    djn_status_t (*stream_wait_fn)(void *ctx, djn_dev_stream_t *s, djn_dev_event_t *e);
    djn_status_t (*stream_sync_fn)(void *ctx, djn_dev_stream_t *s);
    djn_status_t (*memcpy_fn)(void *ctx, void *dst, const void *src, uint64_t n,
                              djn_dev_copy_t kind, djn_dev_stream_t *s);
    djn_status_t (*memset_fn)(void *ctx, void *dst, int byte, uint64_t n, djn_dev_stream_t *s);
    /* Stream capture: what is enqueued on s between begin and end becomes a graph,
     * instantiated at end and launched on any stream later. */
    djn_status_t (*capture_begin_fn)(void *ctx, djn_dev_stream_t *s);
    djn_status_t (*capture_end_fn)(void *ctx, djn_dev_stream_t *s, djn_dev_graph_t **out);
    djn_status_t (*graph_launch_fn)(void *ctx, djn_dev_graph_t *g, djn_dev_stream_t *s);
    void (*graph_destroy_fn)(void *ctx, djn_dev_graph_t *g);
    /* The words of the last failure on this thread ("" if none). */
    const char *(*last_error_fn)(void *ctx);
    void (*destroy_fn)(void *ctx);
} djn_dev_ops_t;

/* A device over an implementation: ops must outlive it, ctx is destroyed with it
 * (ops->destroy_fn). NULL on host OOM (ctx is then destroyed too). */
djn_dev_t *djn_dev_wrap(const djn_dev_ops_t *ops, void *ctx, int ordinal);
void djn_dev_destroy(djn_dev_t **self_p);
const char *djn_dev_name(const djn_dev_t *d);
int djn_dev_ordinal(const djn_dev_t *d);
const char *djn_dev_last_error(const djn_dev_t *d);

djn_status_t djn_dev_mem_info(djn_dev_t *d, uint64_t *free_bytes, uint64_t *total_bytes);
djn_status_t djn_dev_reserve(djn_dev_t *d, uint64_t n, void **out);
void djn_dev_release(djn_dev_t *d, void *p);
djn_status_t djn_dev_host_alloc(djn_dev_t *d, uint64_t n, void **out);
void djn_dev_host_free(djn_dev_t *d, void *p);
djn_status_t djn_dev_stream_new(djn_dev_t *d, int priority, djn_dev_stream_t **out);
void djn_dev_stream_destroy(djn_dev_t *d, djn_dev_stream_t *s);
djn_status_t djn_dev_event_new(djn_dev_t *d, djn_dev_event_t **out);
void djn_dev_event_destroy(djn_dev_t *d, djn_dev_event_t *e);
djn_status_t djn_dev_event_record(djn_dev_t *d, djn_dev_event_t *e, djn_dev_stream_t *s);
djn_status_t djn_dev_event_query(djn_dev_t *d, djn_dev_event_t *e);
djn_status_t djn_dev_event_wait(djn_dev_t *d, djn_dev_event_t *e);
djn_status_t djn_dev_stream_wait(djn_dev_t *d, djn_dev_stream_t *s, djn_dev_event_t *e);
djn_status_t djn_dev_stream_sync(djn_dev_t *d, djn_dev_stream_t *s);
djn_status_t djn_dev_memcpy(djn_dev_t *d, void *dst, const void *src, uint64_t n,
                            djn_dev_copy_t kind, djn_dev_stream_t *s);
djn_status_t djn_dev_memset(djn_dev_t *d, void *dst, int byte, uint64_t n, djn_dev_stream_t *s);
djn_status_t djn_dev_capture_begin(djn_dev_t *d, djn_dev_stream_t *s);
djn_status_t djn_dev_capture_end(djn_dev_t *d, djn_dev_stream_t *s, djn_dev_graph_t **out);
djn_status_t djn_dev_graph_launch(djn_dev_t *d, djn_dev_graph_t *g, djn_dev_stream_t *s);
void djn_dev_graph_destroy(djn_dev_t *d, djn_dev_graph_t *g);

/* ---- the fake CPU device (tests, and the seam's reference semantics) ---- */

djn_dev_t *djn_dev_fake_new(void);
/* held: operations queue until stepped (true) or execute as they are enqueued (false,
 * the default; turning it off drains what is queued). */
void djn_dev_fake_hold(djn_dev_t *d, bool held);
/* Execute the oldest operation of stream s (NULL: the default stream); false if s has
 * none or it waits on an event not yet done. */
bool djn_dev_fake_step(djn_dev_t *d, djn_dev_stream_t *s);
/* Execute everything that can execute, in rounds over the streams; returns how many
 * operations ran. */
uint64_t djn_dev_fake_drain(djn_dev_t *d);
/* Make the next allocation of device memory (reserve) or of pinned host memory fail
 * after n successes (n < 0: never). */
void djn_dev_fake_fail_reserve_after(djn_dev_t *d, int64_t n);
/* The device's size as mem_info reports it (64 MiB unless set). */
void djn_dev_fake_set_total(djn_dev_t *d, uint64_t bytes);

typedef struct djn_dev_fake_stats {
    uint64_t device_bytes, host_bytes; /* held now (reserve, host_alloc) */
    uint64_t streams, events, graphs;  /* live objects */
    uint64_t queued;                   /* operations enqueued, not executed */
    uint64_t executed, host_waits, stream_waits, launches, captured_ops;
} djn_dev_fake_stats_t;
void djn_dev_fake_stats(djn_dev_t *d, djn_dev_fake_stats_t *out);
/* How many operations a graph holds (what capture recorded), and its launches. */
uint64_t djn_dev_fake_graph_ops(djn_dev_graph_t *g);
uint64_t djn_dev_fake_graph_launches(djn_dev_graph_t *g);

/* ---- CUDA (djn_dev_cuda.c; only in builds with -DDJN_CUDA) ---- */

/* The CUDA device `ordinal`; NULL with the reason in err. */
djn_dev_t *djn_dev_cuda_new(int ordinal, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
