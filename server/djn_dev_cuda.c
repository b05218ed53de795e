/* djn_dev_cuda.c: the device seam on the CUDA runtime API (see djn_dev.h); the only
 * server file that includes a CUDA header.
 *
 * Built only with -DDJN_CUDA (scripts/check-cuda.sh, and `make build` against a CUDA
 * torch); otherwise this translation unit is empty and djn_dev_cuda_new is absent, so a
 * CPU build cannot reach it by mistake.
 *
 * Each call makes `ordinal` the thread's current device first (cudaSetDevice is cheap
 * when it already is): allocator callbacks and deleters arrive on arbitrary threads.
 * Handles are CUDA's own (djn_dev.h). Choices:
 *   - reserve: cudaMalloc, one call per arena: the arena is carved by djn_heap/djn_slab,
 *     so the driver's allocator is not on any hot path (rejected: cudaMallocAsync pools,
 *     whose reuse policy would sit under ours and whose footprint we could not state);
 *   - events: cudaEventDisableTiming (no timestamp: cheaper to record and query);
 *   - streams: cudaStreamNonBlocking, so they never serialise with the legacy default
 *     stream ATen may use from other threads; priority clamped to the device's range;
 *   - capture: cudaStreamCaptureModeThreadLocal: another thread's allocator call (which
 *     may record an event on its own stream) does not invalidate this capture; the
 *     graph is instantiated at end and the template graph destroyed at once. */
#ifdef DJN_CUDA

#include <cuda_runtime_api.h>
#include <stdio.h>
#include <string.h>

#include "djn_dev.h"
#include "djn_mem.h"

typedef struct {
    int ordinal;
} s_cuda_t;

static __thread char s_err[256];

static const char *s_last_error(void *ctx) {
    (void)ctx;
    return s_err;
}

static djn_status_t s_check(cudaError_t e, const char *what) {
    if (e == cudaSuccess)
        return DJN_OK;
    snprintf(s_err, sizeof s_err, "%s: %s (%s)", what, cudaGetErrorString(e), cudaGetErrorName(e));
    if (e == cudaErrorMemoryAllocation)
        return DJN_ERR_OOM;
    return DJN_ERR_DEVICE;
}

static djn_status_t s_enter(s_cuda_t *c) {
    int cur = -1;
    if (cudaGetDevice(&cur) == cudaSuccess && cur == c->ordinal)
        return DJN_OK;
    return s_check(cudaSetDevice(c->ordinal), "cudaSetDevice");
}

#define S_ENTER(ctx)                                                                               \
    s_cuda_t *c = (ctx);                                                                           \
    djn_status_t st_ = s_enter(c);                                                                 \
    if (st_ != DJN_OK)                                                                             \
    return st_

static djn_status_t s_mem_info(void *ctx, uint64_t *free_bytes, uint64_t *total_bytes) {
    S_ENTER(ctx);
    size_t f = 0, t = 0;
    djn_status_t st = s_check(cudaMemGetInfo(&f, &t), "cudaMemGetInfo");
    *free_bytes = f;
    *total_bytes = t;
    return st;
}

static djn_status_t s_reserve(void *ctx, uint64_t n, void **out) {
    S_ENTER(ctx);
    return s_check(cudaMalloc(out, (size_t)n), "cudaMalloc");
}

static void s_release(void *ctx, void *p) {
    s_cuda_t *c = ctx;
    if (s_enter(c) == DJN_OK)
        (void)s_check(cudaFree(p), "cudaFree");
}

static djn_status_t s_host_alloc(void *ctx, uint64_t n, void **out) {
    S_ENTER(ctx);
    return s_check(cudaHostAlloc(out, (size_t)n, cudaHostAllocPortable), "cudaHostAlloc");
}

static void s_host_free(void *ctx, void *p) {
    (void)ctx;
    (void)s_check(cudaFreeHost(p), "cudaFreeHost");
}

static djn_status_t s_stream_new(void *ctx, int priority, djn_dev_stream_t **out) {
    S_ENTER(ctx);
    int least = 0, greatest = 0;
    djn_status_t st = s_check(cudaDeviceGetStreamPriorityRange(&least, &greatest),
                              "cudaDeviceGetStreamPriorityRange");
    if (st != DJN_OK)
        return st;
    /* CUDA: lower numbers are more urgent, `greatest` is the most urgent (negative) */
    if (priority < greatest)
        priority = greatest;
    if (priority > least)
        priority = least;
    cudaStream_t s = NULL;
    st = s_check(cudaStreamCreateWithPriority(&s, cudaStreamNonBlocking, priority),
                 "cudaStreamCreateWithPriority");
    *out = (djn_dev_stream_t *)s;
    return st;
}

static void s_stream_destroy(void *ctx, djn_dev_stream_t *s) {
    s_cuda_t *c = ctx;
    if (s_enter(c) == DJN_OK)
        (void)s_check(cudaStreamDestroy((cudaStream_t)s), "cudaStreamDestroy");
}

static djn_status_t s_event_new(void *ctx, djn_dev_event_t **out) {
    S_ENTER(ctx);
    cudaEvent_t e = NULL;
    djn_status_t st =
        s_check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreateWithFlags");
    *out = (djn_dev_event_t *)e;
    return st;
}

static void s_event_destroy(void *ctx, djn_dev_event_t *e) {
    s_cuda_t *c = ctx;
    if (s_enter(c) == DJN_OK)
        (void)s_check(cudaEventDestroy((cudaEvent_t)e), "cudaEventDestroy");
}

static djn_status_t s_event_record(void *ctx, djn_dev_event_t *e, djn_dev_stream_t *s) {
    S_ENTER(ctx);
    return s_check(cudaEventRecord((cudaEvent_t)e, (cudaStream_t)s), "cudaEventRecord");
}

static djn_status_t s_event_query(void *ctx, djn_dev_event_t *e) {
    (void)ctx; /* an event belongs to its device; querying needs no current device */
    cudaError_t r = cudaEventQuery((cudaEvent_t)e);
    if (r == cudaErrorNotReady)
        return DJN_ERR_TIMEOUT;
    return s_check(r, "cudaEventQuery");
}

static djn_status_t s_event_wait(void *ctx, djn_dev_event_t *e) {
    (void)ctx;
    return s_check(cudaEventSynchronize((cudaEvent_t)e), "cudaEventSynchronize");
}

static djn_status_t s_stream_wait(void *ctx, djn_dev_stream_t *s, djn_dev_event_t *e) {
    S_ENTER(ctx);
    return s_check(cudaStreamWaitEvent((cudaStream_t)s, (cudaEvent_t)e, 0), "cudaStreamWaitEvent");
}

static djn_status_t s_stream_sync(void *ctx, djn_dev_stream_t *s) {
    S_ENTER(ctx);
    return s_check(cudaStreamSynchronize((cudaStream_t)s), "cudaStreamSynchronize");
}

static djn_status_t s_memcpy(void *ctx, void *dst, const void *src, uint64_t n, djn_dev_copy_t kind,
                             djn_dev_stream_t *s) {
    S_ENTER(ctx);
    enum cudaMemcpyKind k = kind == DJN_DEV_H2D   ? cudaMemcpyHostToDevice
                            : kind == DJN_DEV_D2H ? cudaMemcpyDeviceToHost
                                                  : cudaMemcpyDeviceToDevice;
    return s_check(cudaMemcpyAsync(dst, src, (size_t)n, k, (cudaStream_t)s), "cudaMemcpyAsync");
}

static djn_status_t s_memset(void *ctx, void *dst, int byte, uint64_t n, djn_dev_stream_t *s) {
    S_ENTER(ctx);
    return s_check(cudaMemsetAsync(dst, byte, (size_t)n, (cudaStream_t)s), "cudaMemsetAsync");
}

static djn_status_t s_capture_begin(void *ctx, djn_dev_stream_t *s) {
    S_ENTER(ctx);
    return s_check(cudaStreamBeginCapture((cudaStream_t)s, cudaStreamCaptureModeThreadLocal),
                   "cudaStreamBeginCapture");
}

static djn_status_t s_capture_end(void *ctx, djn_dev_stream_t *s, djn_dev_graph_t **out) {
    S_ENTER(ctx);
    cudaGraph_t g = NULL;
    djn_status_t st = s_check(cudaStreamEndCapture((cudaStream_t)s, &g), "cudaStreamEndCapture");
    if (st != DJN_OK)
        return st;
    cudaGraphExec_t x = NULL;
    st = s_check(cudaGraphInstantiate(&x, g, 0), "cudaGraphInstantiate");
    (void)cudaGraphDestroy(g); /* the executable graph does not need its template */
    *out = (djn_dev_graph_t *)x;
    return st;
}

static djn_status_t s_graph_launch(void *ctx, djn_dev_graph_t *g, djn_dev_stream_t *s) {
    S_ENTER(ctx);
    return s_check(cudaGraphLaunch((cudaGraphExec_t)g, (cudaStream_t)s), "cudaGraphLaunch");
}

static void s_graph_destroy(void *ctx, djn_dev_graph_t *g) {
    s_cuda_t *c = ctx;
    if (s_enter(c) == DJN_OK)
        (void)s_check(cudaGraphExecDestroy((cudaGraphExec_t)g), "cudaGraphExecDestroy");
}

static void s_destroy(void *ctx) {
    djn_free(ctx, sizeof(s_cuda_t));
}

static const djn_dev_ops_t s_cuda_ops = {
    .name = "cuda",
    .mem_info_fn = s_mem_info,
    .reserve_fn = s_reserve,
    .release_fn = s_release,
    .host_alloc_fn = s_host_alloc,
    .host_free_fn = s_host_free,
    .stream_new_fn = s_stream_new,
    .stream_destroy_fn = s_stream_destroy,
    .event_new_fn = s_event_new,
    .event_destroy_fn = s_event_destroy,
    .event_record_fn = s_event_record,
    .event_query_fn = s_event_query,
    .event_wait_fn = s_event_wait,
    .stream_wait_fn = s_stream_wait,
    .stream_sync_fn = s_stream_sync,
    .memcpy_fn = s_memcpy,
    .memset_fn = s_memset,
    .capture_begin_fn = s_capture_begin,
    .capture_end_fn = s_capture_end,
    .graph_launch_fn = s_graph_launch,
    .graph_destroy_fn = s_graph_destroy,
    .last_error_fn = s_last_error,
    .destroy_fn = s_destroy,
};

djn_dev_t *djn_dev_cuda_new(int ordinal, char *err, size_t errlen) {
    int n = 0;
    cudaError_t r = cudaGetDeviceCount(&n);
    if (r != cudaSuccess || ordinal < 0 || ordinal >= n) {
        snprintf(err, errlen, "no CUDA device %d (%d visible%s%s)", ordinal,
                 r == cudaSuccess ? n : 0, r == cudaSuccess ? "" : ": ",
                 r == cudaSuccess ? "" : cudaGetErrorString(r));
        return NULL;
    }
    s_cuda_t *c = djn_calloc(1, sizeof(*c));
    if (!c) {
        snprintf(err, errlen, "out of host memory");
        return NULL;
    }
    c->ordinal = ordinal;
    djn_dev_t *d = djn_dev_wrap(&s_cuda_ops, c, ordinal);
    if (!d)
        snprintf(err, errlen, "out of host memory");
    return d;
}

#else
/* ISO C wants at least one declaration in a translation unit */
typedef int djn_dev_cuda_absent_t;
#endif
