/* djn_dev.c: the device seam's forwarders and the fake CPU device (see djn_dev.h).
 *
 * The fake models a GPU's ordering, not its speed:
 *   1. every stream (the default one included) is a FIFO of operations: copy, memset,
 *      event record, wait for an event record;
 *   2. an event counts its records (`recorded`) and the records that executed (`done`);
 *      a record operation carries its number, and a wait operation the number current
 *      when the wait was enqueued, so re-recording an event never changes what an earlier
 *      wait waits for (djn_dev.h, semantics 3);
 *   3. not held, an operation executes as soon as it is the oldest of its stream and
 *      nothing it waits for is pending: enqueueing runs the device to quiescence; held,
 *      operations run only through djn_dev_fake_step/_drain or a host wait;
 *   4. a host wait runs every stream until the event is done, or fails with
 *      DJN_ERR_DEVICE when nothing can run any more (a wait that could never return);
 *   5. capture: while a stream captures, what is enqueued on it goes into the graph
 *      instead; a launch enqueues copies of the graph's operations.
 * One mutex covers the whole device: allocator callbacks arrive from any thread. */
#define _GNU_SOURCE
#include "djn_dev.h"

#include <assert.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "djn_mem.h"

struct djn_dev {
    const djn_dev_ops_t *ops;
    void *ctx;
    int ordinal;
};

djn_dev_t *djn_dev_wrap(const djn_dev_ops_t *ops, void *ctx, int ordinal) {
    djn_dev_t *d = djn_calloc(1, sizeof(*d));
    if (!d) {
        if (ops && ops->destroy_fn)
            ops->destroy_fn(ctx);
        return NULL;
    }
    d->ops = ops;
    d->ctx = ctx;
    d->ordinal = ordinal;
    return d;
}

void djn_dev_destroy(djn_dev_t **self_p) {
    if (!self_p || !*self_p)
        return;
    djn_dev_t *d = *self_p;
    if (d->ops->destroy_fn)
        d->ops->destroy_fn(d->ctx);
    djn_free(d, sizeof(*d));
    *self_p = NULL;
}

const char *djn_dev_name(const djn_dev_t *d) {
    return d->ops->name;
}
int djn_dev_ordinal(const djn_dev_t *d) {
    return d->ordinal;
}
const char *djn_dev_last_error(const djn_dev_t *d) {
    return d->ops->last_error_fn ? d->ops->last_error_fn(d->ctx) : "";
}

djn_status_t djn_dev_mem_info(djn_dev_t *d, uint64_t *free_bytes, uint64_t *total_bytes) {
    return d->ops->mem_info_fn(d->ctx, free_bytes, total_bytes);
}
djn_status_t djn_dev_reserve(djn_dev_t *d, uint64_t n, void **out) {
    return d->ops->reserve_fn(d->ctx, n, out);
}
void djn_dev_release(djn_dev_t *d, void *p) {
    if (p)
        d->ops->release_fn(d->ctx, p);
}
djn_status_t djn_dev_host_alloc(djn_dev_t *d, uint64_t n, void **out) {
    return d->ops->host_alloc_fn(d->ctx, n, out);
}
void djn_dev_host_free(djn_dev_t *d, void *p) {
    if (p)
        d->ops->host_free_fn(d->ctx, p);
}
djn_status_t djn_dev_stream_new(djn_dev_t *d, int priority, djn_dev_stream_t **out) {
    return d->ops->stream_new_fn(d->ctx, priority, out);
}
void djn_dev_stream_destroy(djn_dev_t *d, djn_dev_stream_t *s) {
    if (s)
        d->ops->stream_destroy_fn(d->ctx, s);
}
djn_status_t djn_dev_event_new(djn_dev_t *d, djn_dev_event_t **out) {
    return d->ops->event_new_fn(d->ctx, out);
}
void djn_dev_event_destroy(djn_dev_t *d, djn_dev_event_t *e) {
    if (e)
        d->ops->event_destroy_fn(d->ctx, e);
}
djn_status_t djn_dev_event_record(djn_dev_t *d, djn_dev_event_t *e, djn_dev_stream_t *s) {
    return d->ops->event_record_fn(d->ctx, e, s);
}
djn_status_t djn_dev_event_query(djn_dev_t *d, djn_dev_event_t *e) {
    return d->ops->event_query_fn(d->ctx, e);
}
djn_status_t djn_dev_event_wait(djn_dev_t *d, djn_dev_event_t *e) {
    return d->ops->event_wait_fn(d->ctx, e);
}
djn_status_t djn_dev_stream_wait(djn_dev_t *d, djn_dev_stream_t *s, djn_dev_event_t *e) {
    return d->ops->stream_wait_fn(d->ctx, s, e);
}
djn_status_t djn_dev_stream_sync(djn_dev_t *d, djn_dev_stream_t *s) {
    return d->ops->stream_sync_fn(d->ctx, s);
}
djn_status_t djn_dev_memcpy(djn_dev_t *d, void *dst, const void *src, uint64_t n,
                            djn_dev_copy_t kind, djn_dev_stream_t *s) {
    return d->ops->memcpy_fn(d->ctx, dst, src, n, kind, s);
}
djn_status_t djn_dev_memset(djn_dev_t *d, void *dst, int byte, uint64_t n, djn_dev_stream_t *s) {
    return d->ops->memset_fn(d->ctx, dst, byte, n, s);
}
djn_status_t djn_dev_capture_begin(djn_dev_t *d, djn_dev_stream_t *s) {
    return d->ops->capture_begin_fn(d->ctx, s);
}
djn_status_t djn_dev_capture_end(djn_dev_t *d, djn_dev_stream_t *s, djn_dev_graph_t **out) {
    return d->ops->capture_end_fn(d->ctx, s, out);
}
djn_status_t djn_dev_graph_launch(djn_dev_t *d, djn_dev_graph_t *g, djn_dev_stream_t *s) {
    return d->ops->graph_launch_fn(d->ctx, g, s);
}
void djn_dev_graph_destroy(djn_dev_t *d, djn_dev_graph_t *g) {
    if (g)
        d->ops->graph_destroy_fn(d->ctx, g);
}

/* ------------------------------------------------------------------ the fake device */

#define S_FILL 0xA5 /* what fresh "device" memory holds: never zero by accident */

typedef enum { S_OP_COPY, S_OP_SET, S_OP_RECORD, S_OP_WAIT } s_kind_t;

typedef struct s_op {
    struct s_op *next;
    s_kind_t kind;
    void *dst;
    const void *src;
    uint64_t n;
    int byte;
    struct djn_dev_event *ev;
    uint64_t seq;
} s_op_t;

struct djn_dev_event {
    uint64_t recorded, done;
};

struct djn_dev_graph {
    s_op_t *ops; /* copies of the captured operations, in order */
    uint64_t nops, launches;
};

typedef struct s_fake s_fake_t;

struct djn_dev_stream {
    s_op_t *head, *tail;
    struct djn_dev_stream *next; /* the fake's list of streams */
    struct djn_dev_graph *capture;
    s_op_t *cap_tail;
};

/* host blocks are prefixed with their size so the counters can give it back */
typedef struct {
    uint64_t n;
    uint64_t pad[3]; /* keep the payload 32-byte aligned */
} s_blk_hdr_t;

struct s_fake {
    pthread_mutex_t mu;
    bool held;
    int64_t fail_after;
    uint64_t total;             /* what mem_info reports as the device's size */
    struct djn_dev_stream dflt; /* the default stream (NULL in the API) */
    djn_dev_fake_stats_t st;
};

static __thread char s_err[160];

static const char *s_fake_last_error(void *ctx) {
    (void)ctx;
    return s_err;
}

static djn_status_t s_fail(const char *why) {
    snprintf(s_err, sizeof s_err, "%s", why);
    return DJN_ERR_DEVICE;
}

static struct djn_dev_stream *s_stream(s_fake_t *f, djn_dev_stream_t *s) {
    return s ? s : &f->dflt;
}

static bool s_runnable(const s_op_t *op) {
    return op->kind != S_OP_WAIT || op->ev->done >= op->seq;
}

static void s_exec(s_fake_t *f, s_op_t *op) {
    switch (op->kind) {
    case S_OP_COPY:
        memmove(op->dst, op->src, op->n);
        break;
    case S_OP_SET:
        memset(op->dst, op->byte, op->n);
        break;
    case S_OP_RECORD:
        if (op->seq > op->ev->done)
            op->ev->done = op->seq;
        break;
    case S_OP_WAIT:
        break;
    }
    f->st.executed++;
}

/* Runs the oldest operation of s if it can run. */
static bool s_step_locked(s_fake_t *f, struct djn_dev_stream *s) {
    s_op_t *op = s->head;
    if (!op || !s_runnable(op))
        return false;
    s->head = op->next;
    if (!s->head)
        s->tail = NULL;
    f->st.queued--;
    s_exec(f, op);
    djn_free(op, sizeof(*op));
    return true;
}

static uint64_t s_drain_locked(s_fake_t *f) {
    uint64_t ran = 0;
    for (bool progress = true; progress;) {
        progress = false;
        for (struct djn_dev_stream *s = &f->dflt; s; s = s->next)
            while (s_step_locked(f, s)) {
                ran++;
                progress = true;
            }
    }
    return ran;
}

/* Appends op to s (or to the graph s is capturing), then runs what can run unless held.
 * op is taken in every case. */
static djn_status_t s_enqueue(s_fake_t *f, struct djn_dev_stream *s, s_op_t *op) {
    op->next = NULL;
    if (s->capture) {
        if (s->cap_tail)
            s->cap_tail->next = op;
        else
            s->capture->ops = op;
        s->cap_tail = op;
        s->capture->nops++;
        f->st.captured_ops++;
        return DJN_OK;
    }
    if (s->tail)
        s->tail->next = op;
    else
        s->head = op;
    s->tail = op;
    f->st.queued++;
    if (!f->held)
        s_drain_locked(f);
    return DJN_OK;
}

static djn_status_t s_push(s_fake_t *f, djn_dev_stream_t *stream, s_op_t tmpl) {
    s_op_t *op = djn_malloc(sizeof(*op));
    if (!op)
        return DJN_ERR_NOMEM;
    *op = tmpl;
    return s_enqueue(f, s_stream(f, stream), op);
}

static djn_status_t s_fake_mem_info(void *ctx, uint64_t *free_bytes, uint64_t *total_bytes) {
    s_fake_t *f = ctx;
    pthread_mutex_lock(&f->mu);
    uint64_t total = f->total, used = f->st.device_bytes;
    pthread_mutex_unlock(&f->mu);
    *free_bytes = used < total ? total - used : 0;
    *total_bytes = total;
    return DJN_OK;
}

static djn_status_t s_block(s_fake_t *f, uint64_t n, int fill, void **out, uint64_t *counter) {
    pthread_mutex_lock(&f->mu);
    bool fail = f->fail_after == 0;
    if (f->fail_after > 0)
        f->fail_after--;
    pthread_mutex_unlock(&f->mu);
    s_blk_hdr_t *h =
        fail || n > (1ull << 40) ? NULL : aligned_alloc(256, 256 + ((n + 255) & ~255ull));
    if (!h)
        return s_fail("out of fake device memory");
    h = (s_blk_hdr_t *)((uint8_t *)h + 256 - sizeof(*h));
    h->n = n;
    memset(h + 1, fill, n);
    pthread_mutex_lock(&f->mu);
    *counter += n;
    pthread_mutex_unlock(&f->mu);
    *out = h + 1;
    return DJN_OK;
}

static void s_unblock(s_fake_t *f, void *p, uint64_t *counter) {
    s_blk_hdr_t *h = (s_blk_hdr_t *)p - 1;
    pthread_mutex_lock(&f->mu);
    assert(*counter >= h->n);
    *counter -= h->n;
    pthread_mutex_unlock(&f->mu);
    free((uint8_t *)(h + 1) - 256);
}

static djn_status_t s_fake_reserve(void *ctx, uint64_t n, void **out) {
    s_fake_t *f = ctx;
    return s_block(f, n, S_FILL, out, &f->st.device_bytes);
}
static void s_fake_release(void *ctx, void *p) {
    s_fake_t *f = ctx;
    s_unblock(f, p, &f->st.device_bytes);
}
static djn_status_t s_fake_host_alloc(void *ctx, uint64_t n, void **out) {
    s_fake_t *f = ctx;
    return s_block(f, n, S_FILL, out, &f->st.host_bytes);
}
static void s_fake_host_free(void *ctx, void *p) {
    s_fake_t *f = ctx;
    s_unblock(f, p, &f->st.host_bytes);
}

static djn_status_t s_fake_stream_new(void *ctx, int priority, djn_dev_stream_t **out) {
    (void)priority;
    s_fake_t *f = ctx;
    struct djn_dev_stream *s = djn_calloc(1, sizeof(*s));
    if (!s)
        return DJN_ERR_NOMEM;
    pthread_mutex_lock(&f->mu);
    s->next = f->dflt.next;
    f->dflt.next = s;
    f->st.streams++;
    pthread_mutex_unlock(&f->mu);
    *out = s;
    return DJN_OK;
}

static void s_free_ops(s_op_t *op) {
    while (op) {
        s_op_t *next = op->next;
        djn_free(op, sizeof(*op));
        op = next;
    }
}

static void s_fake_stream_destroy(void *ctx, djn_dev_stream_t *s) {
    s_fake_t *f = ctx;
    pthread_mutex_lock(&f->mu);
    /* cudaStreamDestroy lets queued work finish: run what can run, drop the rest */
    while (s_step_locked(f, s))
        ;
    for (s_op_t *op = s->head; op; op = op->next)
        f->st.queued--;
    s_free_ops(s->head);
    for (struct djn_dev_stream *p = &f->dflt; p; p = p->next)
        if (p->next == s) {
            p->next = s->next;
            break;
        }
    f->st.streams--;
    pthread_mutex_unlock(&f->mu);
    djn_free(s, sizeof(*s));
}

static djn_status_t s_fake_event_new(void *ctx, djn_dev_event_t **out) {
    s_fake_t *f = ctx;
    djn_dev_event_t *e = djn_calloc(1, sizeof(*e));
    if (!e)
        return DJN_ERR_NOMEM;
    pthread_mutex_lock(&f->mu);
    f->st.events++;
    pthread_mutex_unlock(&f->mu);
    *out = e;
    return DJN_OK;
}

static void s_fake_event_destroy(void *ctx, djn_dev_event_t *e) {
    s_fake_t *f = ctx;
    pthread_mutex_lock(&f->mu);
    /* operations still naming it would dangle: the callers of the seam never destroy an
     * event that is pending (cudaEventDestroy would defer; the fake insists) */
    assert(e->done >= e->recorded);
    f->st.events--;
    pthread_mutex_unlock(&f->mu);
    djn_free(e, sizeof(*e));
}

static djn_status_t s_fake_event_record(void *ctx, djn_dev_event_t *e, djn_dev_stream_t *s) {
    s_fake_t *f = ctx;
    pthread_mutex_lock(&f->mu);
    djn_status_t st = s_push(f, s, (s_op_t){.kind = S_OP_RECORD, .ev = e, .seq = e->recorded + 1});
    if (st == DJN_OK)
        e->recorded++;
    pthread_mutex_unlock(&f->mu);
    return st;
}

static djn_status_t s_fake_event_query(void *ctx, djn_dev_event_t *e) {
    s_fake_t *f = ctx;
    pthread_mutex_lock(&f->mu);
    bool done = e->done >= e->recorded;
    pthread_mutex_unlock(&f->mu);
    return done ? DJN_OK : DJN_ERR_TIMEOUT;
}

static djn_status_t s_fake_event_wait(void *ctx, djn_dev_event_t *e) {
    s_fake_t *f = ctx;
    pthread_mutex_lock(&f->mu);
    f->st.host_waits++;
    uint64_t want = e->recorded;
    while (e->done < want && s_drain_locked(f))
        ;
    bool done = e->done >= want;
    pthread_mutex_unlock(&f->mu);
    return done ? DJN_OK : s_fail("fake device: a host wait on an event that can never complete");
}

static djn_status_t s_fake_stream_wait(void *ctx, djn_dev_stream_t *s, djn_dev_event_t *e) {
    s_fake_t *f = ctx;
    pthread_mutex_lock(&f->mu);
    f->st.stream_waits++;
    djn_status_t st = s_push(f, s, (s_op_t){.kind = S_OP_WAIT, .ev = e, .seq = e->recorded});
    pthread_mutex_unlock(&f->mu);
    return st;
}

static djn_status_t s_fake_stream_sync(void *ctx, djn_dev_stream_t *stream) {
    s_fake_t *f = ctx;
    pthread_mutex_lock(&f->mu);
    struct djn_dev_stream *s = s_stream(f, stream);
    f->st.host_waits++;
    while (s->head && s_drain_locked(f))
        ;
    bool done = !s->head;
    pthread_mutex_unlock(&f->mu);
    return done ? DJN_OK : s_fail("fake device: a stream that can never drain");
}

static djn_status_t s_fake_memcpy(void *ctx, void *dst, const void *src, uint64_t n,
                                  djn_dev_copy_t kind, djn_dev_stream_t *s) {
    (void)kind;
    s_fake_t *f = ctx;
    pthread_mutex_lock(&f->mu);
    djn_status_t st = s_push(f, s, (s_op_t){.kind = S_OP_COPY, .dst = dst, .src = src, .n = n});
    pthread_mutex_unlock(&f->mu);
    return st;
}

static djn_status_t s_fake_memset(void *ctx, void *dst, int byte, uint64_t n, djn_dev_stream_t *s) {
    s_fake_t *f = ctx;
    pthread_mutex_lock(&f->mu);
    djn_status_t st = s_push(f, s, (s_op_t){.kind = S_OP_SET, .dst = dst, .byte = byte, .n = n});
    pthread_mutex_unlock(&f->mu);
    return st;
}

static djn_status_t s_fake_capture_begin(void *ctx, djn_dev_stream_t *stream) {
    s_fake_t *f = ctx;
    if (!stream) /* CUDA refuses to capture the legacy default stream too */
        return s_fail("fake device: cannot capture the default stream");
    struct djn_dev_graph *g = djn_calloc(1, sizeof(*g));
    if (!g)
        return DJN_ERR_NOMEM;
    pthread_mutex_lock(&f->mu);
    djn_status_t st = DJN_OK;
    if (stream->capture) {
        st = s_fail("fake device: the stream is capturing already");
    } else {
        stream->capture = g;
        stream->cap_tail = NULL;
        f->st.graphs++;
        g = NULL;
    }
    pthread_mutex_unlock(&f->mu);
    djn_free(g, sizeof(*g));
    return st;
}

static djn_status_t s_fake_capture_end(void *ctx, djn_dev_stream_t *stream, djn_dev_graph_t **out) {
    s_fake_t *f = ctx;
    if (!stream || !stream->capture)
        return s_fail("fake device: the stream is not capturing");
    pthread_mutex_lock(&f->mu);
    *out = stream->capture;
    stream->capture = NULL;
    stream->cap_tail = NULL;
    pthread_mutex_unlock(&f->mu);
    return DJN_OK;
}

static djn_status_t s_fake_graph_launch(void *ctx, djn_dev_graph_t *g, djn_dev_stream_t *stream) {
    s_fake_t *f = ctx;
    pthread_mutex_lock(&f->mu);
    djn_status_t st = DJN_OK;
    /* all copies first, then enqueue: a launch is one unit (no half-launched graph) */
    s_op_t *head = NULL, **tail = &head;
    for (s_op_t *op = g->ops; op; op = op->next) {
        s_op_t *c = djn_malloc(sizeof(*c));
        if (!c) {
            st = DJN_ERR_NOMEM;
            break;
        }
        *c = *op;
        c->next = NULL;
        *tail = c;
        tail = &c->next;
    }
    if (st == DJN_OK) {
        bool held = f->held;
        f->held = true; /* enqueue the whole graph, then run it */
        for (s_op_t *op = head, *next; op; op = next) {
            next = op->next;
            s_enqueue(f, s_stream(f, stream), op);
        }
        f->held = held;
        if (!held)
            s_drain_locked(f);
        g->launches++;
        f->st.launches++;
    } else {
        s_free_ops(head);
    }
    pthread_mutex_unlock(&f->mu);
    return st;
}

static void s_fake_graph_destroy(void *ctx, djn_dev_graph_t *g) {
    s_fake_t *f = ctx;
    pthread_mutex_lock(&f->mu);
    f->st.graphs--;
    pthread_mutex_unlock(&f->mu);
    s_free_ops(g->ops);
    djn_free(g, sizeof(*g));
}

static void s_fake_destroy(void *ctx) {
    s_fake_t *f = ctx;
    s_free_ops(f->dflt.head);
    pthread_mutex_destroy(&f->mu);
    djn_free(f, sizeof(*f));
}

static const djn_dev_ops_t s_fake_ops = {
    .name = "fake",
    .mem_info_fn = s_fake_mem_info,
    .reserve_fn = s_fake_reserve,
    .release_fn = s_fake_release,
    .host_alloc_fn = s_fake_host_alloc,
    .host_free_fn = s_fake_host_free,
    .stream_new_fn = s_fake_stream_new,
    .stream_destroy_fn = s_fake_stream_destroy,
    .event_new_fn = s_fake_event_new,
    .event_destroy_fn = s_fake_event_destroy,
    .event_record_fn = s_fake_event_record,
    .event_query_fn = s_fake_event_query,
    .event_wait_fn = s_fake_event_wait,
    .stream_wait_fn = s_fake_stream_wait,
    .stream_sync_fn = s_fake_stream_sync,
    .memcpy_fn = s_fake_memcpy,
    .memset_fn = s_fake_memset,
    .capture_begin_fn = s_fake_capture_begin,
    .capture_end_fn = s_fake_capture_end,
    .graph_launch_fn = s_fake_graph_launch,
    .graph_destroy_fn = s_fake_graph_destroy,
    .last_error_fn = s_fake_last_error,
    .destroy_fn = s_fake_destroy,
};

djn_dev_t *djn_dev_fake_new(void) {
    s_fake_t *f = djn_calloc(1, sizeof(*f));
    if (!f)
        return NULL;
    pthread_mutex_init(&f->mu, NULL);
    f->fail_after = -1;
    f->total = 64ull << 20;
    return djn_dev_wrap(&s_fake_ops, f, 0);
}

static s_fake_t *s_fake(djn_dev_t *d) {
    assert(d->ops == &s_fake_ops);
    return d->ctx;
}

void djn_dev_fake_hold(djn_dev_t *d, bool held) {
    s_fake_t *f = s_fake(d);
    pthread_mutex_lock(&f->mu);
    f->held = held;
    if (!held)
        s_drain_locked(f);
    pthread_mutex_unlock(&f->mu);
}

bool djn_dev_fake_step(djn_dev_t *d, djn_dev_stream_t *s) {
    s_fake_t *f = s_fake(d);
    pthread_mutex_lock(&f->mu);
    bool ran = s_step_locked(f, s_stream(f, s));
    pthread_mutex_unlock(&f->mu);
    return ran;
}

uint64_t djn_dev_fake_drain(djn_dev_t *d) {
    s_fake_t *f = s_fake(d);
    pthread_mutex_lock(&f->mu);
    uint64_t n = s_drain_locked(f);
    pthread_mutex_unlock(&f->mu);
    return n;
}

void djn_dev_fake_fail_reserve_after(djn_dev_t *d, int64_t n) {
    s_fake_t *f = s_fake(d);
    pthread_mutex_lock(&f->mu);
    f->fail_after = n;
    pthread_mutex_unlock(&f->mu);
}

void djn_dev_fake_set_total(djn_dev_t *d, uint64_t bytes) {
    s_fake_t *f = s_fake(d);
    pthread_mutex_lock(&f->mu);
    f->total = bytes;
    pthread_mutex_unlock(&f->mu);
}

void djn_dev_fake_stats(djn_dev_t *d, djn_dev_fake_stats_t *out) {
    s_fake_t *f = s_fake(d);
    pthread_mutex_lock(&f->mu);
    *out = f->st;
    pthread_mutex_unlock(&f->mu);
}

uint64_t djn_dev_fake_graph_ops(djn_dev_graph_t *g) {
    return g->nops;
}
uint64_t djn_dev_fake_graph_launches(djn_dev_graph_t *g) {
    return g->launches;
}
