/* djn_dvmu.c: Data heap + stack slab over one device arena, reuse ordered by stream
 * events (see djn_dvmu.h).
 *
 * Data segment.
 *   free(p, s):
 *     1. queue a memset(0) of the block on s (scrub: the next owner reads zeros);
 *     2. record the range as dirty on s (no event yet) and give the block back to the
 *        heap at once: an allocation on s itself may take it (stream order);
 *     3. past S_FENCE_AT unfenced dirty ranges, record one event ("fence") per stream
 *        that has some, shared by all of them.
 *   alloc(n, s):
 *     1. reap: drop the dirty ranges whose fence is done (an event query per fence);
 *     2. best-fit from the heap (djn_heap); none fits: NULL;
 *     3. for each dirty range overlapping the block and dirty on another stream: fence
 *        its stream if not yet, and make s wait on the fence (cudaStreamWaitEvent): the
 *        new owner's work starts after the old owner's last use and the scrub.
 *   Rejected: an event per free, reaped before reuse (an event record on every free in
 *   the common one-stream case, where stream order makes it useless); per-stream pools
 *   like the caching allocator's (each stream's pool fragments the arena on its own).
 *
 * Stack slab: windows. A fragment runs in a window [base, end) of the slab: the planner's
 * offsets are relative to base, and bump allocations go above the planned region up to
 * end. At the fragment's end the range it used is zeroed on its stream and an event is
 * recorded after that: the range is "in flight" on that stream until the event is done
 * (the same rule as a dirty Data range, with one event per fragment). A window still
 * referenced by a live slab allocation at the end is HELD instead, and retired so by
 * its last release, on the releasing stream.
 *   begin(s, peak, want):
 *     1. reap: in-flight ranges whose event is done leave (an event query each);
 *     2. beside other streams' work: among the candidates ({want}, or {0} U the ends of
 *        held windows and of ranges in flight on other streams), the largest span free
 *        of held windows and of other streams' ranges; if it holds the peak, take it: no
 *        wait. Ranges in flight on s itself are no obstacle (stream order);
 *     3. else the lowest candidate ({want}, or 0 and the ends of held windows) whose span
 *        free of held windows holds the peak, and s waits on each other stream's range
 *        in it (cudaStreamWaitEvent: device-side, the host does not block);
 *     4. none: DJN_ERR_OOM, the fragment runs unplanned (in Data);
 *     5. the window ends at the next obstacle of the step that chose it.
 *   slab_alloc(n, s) past the window's end: the window grows to the next held window (or
 *   capacity), s waiting on the ranges in flight there; no room: NULL.
 *   A range recorded on s drops older ranges of s inside it (the newer event comes after
 *   them on s); past S_MAX_USED ranges the host waits for the oldest (back pressure).
 *   Rejected: freeing a generation as soon as some stream waited on it (the waiting
 *   stream is ordered after it, but a third stream is not: only the event being done
 *   frees bytes for everyone); two fixed slab halves (half the slab for every fragment).
 *
 * Invariants (test_dvmu.c checks them through the fake device, which executes queued
 * work only when told):
 *   1. a byte of the arena is handed to work on stream t only when every earlier use of
 *      it on another stream is done or t waits on an event recorded after that use;
 *   2. at most one OPEN window; it never overlaps a HELD one, nor a range in flight on
 *      another stream that its stream has not waited on;
 *   3. everything free in the arena is zero once the queued scrubs have executed, and
 *      work on the next owner's stream is ordered after the scrub;
 *   4. no host wait on any path but destroy, back pressure past S_MAX_USED ranges, a
 *      failure of the host-side bookkeeping or of an event record (then the stream is
 *      synchronised instead). */
#define _GNU_SOURCE
#include "djn_dvmu.h"

#include <assert.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "djn_mem.h"
#include "djn_slab.h"

#define S_ALIGN 256u
#define S_MAX_GENS 16 /* windows open or held at once */
#define S_MAX_USED 64 /* slab ranges in flight before the host waits for the oldest */
#define S_MAX_DEVS 64
#define S_FENCE_AT 64 /* unfenced dirty ranges before fences are recorded */
#define S_ANY UINT64_MAX
#define S_MIN_DATA (1ull << 20) /* the least Data segment a sized-from-the-device arena has */

typedef enum { S_FREE, S_OPEN, S_HELD } s_state_t;

/* A window of the slab: the running fragment's (OPEN), or one a live result still
 * references (HELD). */
typedef struct {
    s_state_t state;
    uint64_t lo, hi; /* OPEN: the window; HELD: the range it used */
    uint64_t live;   /* slab allocations in it not yet released */
} s_gen_t;

/* A range of the slab whose last use (and scrub) is queued on `stream`, free once `ev`
 * is done. */
typedef struct {
    uint64_t lo, hi;
    djn_dev_stream_t *stream;
    djn_dev_stream_t *waited; /* the last stream that waited on ev (need not again) */
    djn_dev_event_t *ev;
} s_used_t;

typedef struct {
    djn_dev_event_t *ev; /* NULL: a free slot */
    uint32_t refs;       /* dirty ranges naming it */
    uint64_t waited;     /* the allocation (call_seq) whose stream waited on it last */
} s_fence_t;

typedef struct {
    uint64_t lo, hi;
    djn_dev_stream_t *stream;
    int32_t fence; /* -1: not fenced yet */
} s_dirty_t;

struct djn_dvmu {
    djn_dev_t *dev;
    uint8_t *base;
    uint64_t data_bytes, slab_bytes;
    pthread_mutex_t mu;
    djn_heap_t *heap;
    djn_slab_t *slab;
    s_gen_t gens[S_MAX_GENS];
    int open; /* the OPEN window, -1: none */
    s_used_t used[S_MAX_USED];
    uint32_t nused;
    djn_dev_event_t **pool;
    uint32_t npool, pool_cap;
    s_dirty_t *dirty;
    uint32_t ndirty, dirty_cap, unfenced;
    s_fence_t *fences;
    uint32_t nfences; /* slots */
    uint64_t call_seq;
    djn_dvmu_stats_t st;
};

static uint64_t s_up(uint64_t n) {
    return (n + S_ALIGN - 1) & ~(uint64_t)(S_ALIGN - 1);
}

/* ------------------------------------------------------------------ events */

static djn_status_t s_ev_get(djn_dvmu_t *v, djn_dev_event_t **out) {
    if (v->npool) {
        *out = v->pool[--v->npool];
        return DJN_OK;
    }
    djn_status_t st = djn_dev_event_new(v->dev, out);
    if (st == DJN_OK)
        v->st.events++;
    return st;
}

/* Back to the pool, pending or not: re-recording a pooled event changes nothing for the
 * waits already queued on it (djn_dev.h, semantics 3). */
static void s_ev_put(djn_dvmu_t *v, djn_dev_event_t *e) {
    if (v->npool == v->pool_cap) {
        uint32_t cap = v->pool_cap ? 2 * v->pool_cap : 16;
        djn_dev_event_t **p = djn_realloc(v->pool, v->pool_cap * sizeof(*p), cap * sizeof(*p));
        if (!p) {
            (void)djn_dev_event_wait(v->dev, e);
            djn_dev_event_destroy(v->dev, e);
            return;
        }
        v->pool = p;
        v->pool_cap = cap;
    }
    v->pool[v->npool++] = e;
}

/* ------------------------------------------------------------------ Data */

static void s_fence_unref(djn_dvmu_t *v, int32_t f) {
    if (f < 0)
        return;
    assert(v->fences[f].refs > 0);
    if (--v->fences[f].refs == 0) {
        s_ev_put(v, v->fences[f].ev);
        v->fences[f].ev = NULL;
    }
}

static void s_dirty_drop(djn_dvmu_t *v, uint32_t i) {
    if (v->dirty[i].fence < 0)
        v->unfenced--;
    s_fence_unref(v, v->dirty[i].fence);
    v->dirty[i] = v->dirty[--v->ndirty];
}

/* One event recorded on `stream`, shared by all its unfenced dirty ranges. On failure
 * the stream is synchronised and its unfenced ranges dropped (they are then done). */
static int32_t s_fence_stream(djn_dvmu_t *v, djn_dev_stream_t *stream) {
    int32_t f = -1;
    for (uint32_t i = 0; i < v->nfences; i++)
        if (!v->fences[i].ev) {
            f = (int32_t)i;
            break;
        }
    if (f < 0) {
        s_fence_t *p = djn_realloc(v->fences, v->nfences * sizeof(*p),
                                   (v->nfences ? 2 * v->nfences : 8) * sizeof(*p));
        if (p) {
            memset(p + v->nfences, 0, v->nfences ? v->nfences * sizeof(*p) : 8 * sizeof(*p));
            f = (int32_t)v->nfences;
            v->nfences = v->nfences ? 2 * v->nfences : 8;
            v->fences = p;
        }
    }
    djn_dev_event_t *e = NULL;
    if (f < 0 || s_ev_get(v, &e) != DJN_OK || djn_dev_event_record(v->dev, e, stream) != DJN_OK) {
        if (e)
            s_ev_put(v, e);
        (void)djn_dev_stream_sync(v->dev, stream);
        for (uint32_t i = 0; i < v->ndirty;)
            if (v->dirty[i].stream == stream && v->dirty[i].fence < 0)
                s_dirty_drop(v, i);
            else
                i++;
        return -1;
    }
    v->st.data_fences++;
    v->fences[f].ev = e;
    for (uint32_t i = 0; i < v->ndirty; i++)
        if (v->dirty[i].stream == stream && v->dirty[i].fence < 0) {
            v->dirty[i].fence = f;
            v->fences[f].refs++;
            v->unfenced--;
        }
    if (!v->fences[f].refs) { /* nothing named it after all */
        s_ev_put(v, e);
        v->fences[f].ev = NULL;
    }
    return f;
}

static void s_reap_dirty(djn_dvmu_t *v) {
    for (uint32_t f = 0; f < v->nfences; f++) {
        if (!v->fences[f].ev || djn_dev_event_query(v->dev, v->fences[f].ev) != DJN_OK)
            continue;
        for (uint32_t i = 0; i < v->ndirty;)
            if (v->dirty[i].fence == (int32_t)f)
                s_dirty_drop(v, i); /* may put the fence's event back: ev NULL after */
            else
                i++;
    }
}

void *djn_dvmu_data_alloc(djn_dvmu_t *v, uint64_t n, djn_dev_stream_t *s) {
    uint64_t off;
    pthread_mutex_lock(&v->mu);
    s_reap_dirty(v);                                    /* 1 */
    djn_status_t st = djn_heap_alloc(v->heap, n, &off); /* 2 */
    if (st == DJN_OK) {                                 /* 3 */
        uint64_t end = off + djn_heap_size_of(v->heap, off);
        v->call_seq++;
        for (uint32_t i = 0; i < v->ndirty; i++) {
            s_dirty_t *d = &v->dirty[i];
            if (d->stream == s || d->hi <= off || d->lo >= end)
                continue;
            if (d->fence < 0 && s_fence_stream(v, d->stream) < 0) {
                i = (uint32_t)-1; /* its stream was synchronised and its ranges dropped */
                continue;
            }
            s_fence_t *f = &v->fences[d->fence];
            if (f->waited == v->call_seq)
                continue;
            f->waited = v->call_seq;
            if (djn_dev_stream_wait(v->dev, s, f->ev) != DJN_OK)
                (void)djn_dev_event_wait(v->dev, f->ev); /* the host waits instead */
            v->st.data_stream_waits++;
        }
    }
    pthread_mutex_unlock(&v->mu);
    return st == DJN_OK ? v->base + off : NULL;
}

static bool s_dirty_push(djn_dvmu_t *v, uint64_t lo, uint64_t hi, djn_dev_stream_t *s) {
    if (v->ndirty == v->dirty_cap) {
        uint32_t cap = v->dirty_cap ? 2 * v->dirty_cap : 32;
        s_dirty_t *p = djn_realloc(v->dirty, v->dirty_cap * sizeof(*p), cap * sizeof(*p));
        if (!p)
            return false;
        v->dirty = p;
        v->dirty_cap = cap;
    }
    v->dirty[v->ndirty++] = (s_dirty_t){lo, hi, s, -1};
    v->unfenced++;
    return true;
}

static void s_data_release(djn_dvmu_t *v, uint64_t off, djn_dev_stream_t *s) {
    uint64_t n = djn_heap_size_of(v->heap, off);
    if (!n)
        return; /* not a live block: the heap would refuse it too */
    if (djn_dev_memset(v->dev, v->base + off, 0, n, s) != DJN_OK)
        return; /* a device that cannot scrub keeps the block: never hand out old bytes */
    v->st.scrub_bytes += n;
    if (!s_dirty_push(v, off, off + n, s))
        (void)djn_dev_stream_sync(v->dev, s); /* no bookkeeping: make it done instead */
    djn_heap_free(v->heap, off);
    if (v->unfenced > S_FENCE_AT) {
        /* one fence per stream with unfenced ranges (each call fences one stream) */
        while (v->unfenced) {
            djn_dev_stream_t *t = NULL;
            for (uint32_t i = 0; i < v->ndirty; i++)
                if (v->dirty[i].fence < 0) {
                    t = v->dirty[i].stream;
                    break;
                }
            s_fence_stream(v, t);
        }
    }
    s_reap_dirty(v);
}

/* ------------------------------------------------------------------ slab windows */

static void s_used_drop(djn_dvmu_t *v, uint32_t i) {
    s_ev_put(v, v->used[i].ev);
    v->used[i] = v->used[--v->nused];
}

static void s_reap_used(djn_dvmu_t *v) {
    for (uint32_t i = 0; i < v->nused;)
        if (djn_dev_event_query(v->dev, v->used[i].ev) == DJN_OK)
            s_used_drop(v, i);
        else
            i++;
}

/* The free span from b up to the next obstacle: a live window (OPEN, HELD) and, with
 * `others`, bytes in flight on a stream other than s. 0 if b lies inside one. */
static uint64_t s_span(const djn_dvmu_t *v, uint64_t b, djn_dev_stream_t *s, bool others) {
    if (b >= v->slab_bytes)
        return 0;
    uint64_t end = v->slab_bytes;
    for (int i = 0; i < S_MAX_GENS; i++) {
        const s_gen_t *g = &v->gens[i];
        if (g->state == S_FREE)
            continue;
        if (g->lo <= b && b < g->hi)
            return 0;
        if (g->lo > b && g->lo < end)
            end = g->lo;
    }
    for (uint32_t i = 0; others && i < v->nused; i++) {
        const s_used_t *u = &v->used[i];
        if (u->stream == s)
            continue;
        if (u->lo <= b && b < u->hi)
            return 0;
        if (u->lo > b && u->lo < end)
            end = u->lo;
    }
    return end - b;
}

/* s waits on every range in flight on another stream that overlaps [lo, hi). */
static void s_wait_used(djn_dvmu_t *v, uint64_t lo, uint64_t hi, djn_dev_stream_t *s) {
    for (uint32_t i = 0; i < v->nused; i++) {
        s_used_t *u = &v->used[i];
        if (u->stream == s || u->waited == s || u->hi <= lo || u->lo >= hi)
            continue;
        if (djn_dev_stream_wait(v->dev, s, u->ev) != DJN_OK)
            (void)djn_dev_event_wait(v->dev, u->ev); /* the host waits instead */
        u->waited = s;
        v->st.slab_stream_waits++;
    }
}

/* [lo, hi) was used on s: zero it there and record the event after which it is free. */
static bool s_retire(djn_dvmu_t *v, uint64_t lo, uint64_t hi, djn_dev_stream_t *s) {
    if (djn_dev_memset(v->dev, v->base + v->data_bytes + lo, 0, hi - lo, s) != DJN_OK)
        return false; /* never hand out old bytes: the caller keeps the range held */
    v->st.scrub_bytes += hi - lo;
    /* an older range of s inside this one is covered by the newer event (stream order) */
    for (uint32_t i = 0; i < v->nused;)
        if (v->used[i].stream == s && v->used[i].lo >= lo && v->used[i].hi <= hi)
            s_used_drop(v, i);
        else
            i++;
    if (v->nused == S_MAX_USED) { /* back pressure: the host waits for the oldest */
        (void)djn_dev_event_wait(v->dev, v->used[0].ev);
        s_used_drop(v, 0);
    }
    djn_dev_event_t *e = NULL;
    if (s_ev_get(v, &e) != DJN_OK || djn_dev_event_record(v->dev, e, s) != DJN_OK) {
        if (e)
            s_ev_put(v, e);
        (void)djn_dev_stream_sync(v->dev, s); /* no event: make it done instead */
        return true;
    }
    v->used[v->nused++] = (s_used_t){lo, hi, s, NULL, e};
    return true;
}

djn_status_t djn_dvmu_fragment_begin(djn_dvmu_t *v, djn_dev_stream_t *s, uint64_t planned_peak,
                                     uint64_t want_base) {
    pthread_mutex_lock(&v->mu);
    djn_status_t st = DJN_OK;
    uint64_t need = s_up(planned_peak ? planned_peak : 1), b = S_ANY, span = 0;
    int slot = -1;
    if (v->open >= 0 || (want_base != S_ANY && (want_base & (S_ALIGN - 1)))) {
        st = DJN_ERR_ARGS;
        goto out;
    }
    s_reap_used(v); /* 1 */
    for (int i = 0; i < S_MAX_GENS && slot < 0; i++)
        if (v->gens[i].state == S_FREE)
            slot = i;
    if (slot < 0) {
        st = DJN_ERR_OOM; /* every slot holds a referenced window */
        goto out;
    }
    /* 2: beside other streams' work, no wait: the largest span among the candidates */
    uint64_t best_span = s_span(v, want_base == S_ANY ? 0 : want_base, s, true);
    b = want_base == S_ANY ? 0 : want_base;
    for (int i = 0; want_base == S_ANY && i < S_MAX_GENS + (int)v->nused; i++) {
        uint64_t c =
            i < S_MAX_GENS
                ? (v->gens[i].state != S_FREE ? s_up(v->gens[i].hi) : 0)
                : (v->used[i - S_MAX_GENS].stream != s ? s_up(v->used[i - S_MAX_GENS].hi) : 0);
        uint64_t sp = c ? s_span(v, c, s, true) : 0;
        if (sp > best_span || (sp == best_span && sp && c < b)) {
            b = c;
            best_span = sp;
        }
    }
    span = best_span;
    if (span < need) { /* 3: the lowest candidate that fits once s waits on the device */
        b = S_ANY;
        if (want_base != S_ANY) {
            if ((span = s_span(v, want_base, s, false)) >= need)
                b = want_base;
        } else {
            for (int i = -1; i < S_MAX_GENS; i++) {
                uint64_t c = i < 0 ? 0 : s_up(v->gens[i].hi);
                uint64_t sp = i < 0 || v->gens[i].state == S_HELD ? s_span(v, c, s, false) : 0;
                if (sp >= need && (b == S_ANY || c < b)) {
                    b = c;
                    span = sp;
                }
            }
        }
        if (b == S_ANY) {
            st = DJN_ERR_OOM; /* 4 */
            goto out;
        }
        s_wait_used(v, b, b + span, s);
    }
    s_gen_t *g = &v->gens[slot]; /* 5 */
    *g = (s_gen_t){S_OPEN, b, b + span, 0};
    v->open = slot;
    djn_slab_reset(v->slab, 0);
    st = djn_slab_reserve_at(v->slab, b, planned_peak);
    assert(st == DJN_OK); /* b is aligned and b + need fits, by construction */
    v->st.fragments++;
    if (b)
        v->st.windows_moved++;
    if (b + planned_peak > v->st.slab_high_water)
        v->st.slab_high_water = b + planned_peak;
out:
    pthread_mutex_unlock(&v->mu);
    return st;
}

bool djn_dvmu_window(djn_dvmu_t *v, uint64_t *base, uint64_t *end) {
    pthread_mutex_lock(&v->mu);
    bool open = v->open >= 0;
    if (open) {
        *base = v->gens[v->open].lo;
        *end = v->gens[v->open].hi;
    }
    pthread_mutex_unlock(&v->mu);
    return open;
}

void *djn_dvmu_slab_at(djn_dvmu_t *v, uint64_t offset, uint64_t n) {
    void *p = NULL;
    pthread_mutex_lock(&v->mu);
    if (v->open >= 0) {
        s_gen_t *g = &v->gens[v->open];
        uint64_t span = g->hi - g->lo;
        if (offset <= span && n <= span - offset) {
            /* the used range (scrubbed at the end) must cover it */
            if (g->lo + offset + n > djn_slab_mark(v->slab))
                djn_slab_reserve_at(v->slab, g->lo, offset + n);
            g->live++;
            v->st.slab_live++;
            p = v->base + v->data_bytes + g->lo + offset;
        }
    }
    pthread_mutex_unlock(&v->mu);
    return p;
}

void *djn_dvmu_slab_alloc(djn_dvmu_t *v, uint64_t n, djn_dev_stream_t *s) {
    void *p = NULL;
    pthread_mutex_lock(&v->mu);
    if (v->open < 0)
        goto out;
    s_gen_t *g = &v->gens[v->open];
    uint64_t mark = djn_slab_mark(v->slab), off;
    if (djn_slab_alloc(v->slab, n, &off) != DJN_OK)
        goto out; /* past the slab's capacity */
    uint64_t end = off + (n ? n : 1);
    if (end > g->hi) {     /* grow up to the next referenced window, waiting on what is there */
        g->state = S_FREE; /* not its own obstacle */
        uint64_t hi = g->lo + s_span(v, g->lo, s, false);
        g->state = S_OPEN;
        if (end > hi) {
            djn_slab_reset(v->slab, mark); /* a held window, or the end: no room */
            goto out;
        }
        s_wait_used(v, g->hi, hi, s);
        g->hi = hi;
    }
    g->live++;
    v->st.slab_live++;
    if (end > v->st.slab_high_water)
        v->st.slab_high_water = end;
    p = v->base + v->data_bytes + off;
out:
    pthread_mutex_unlock(&v->mu);
    return p;
}

djn_status_t djn_dvmu_fragment_end(djn_dvmu_t *v, djn_dev_stream_t *s) {
    pthread_mutex_lock(&v->mu);
    if (v->open < 0) {
        pthread_mutex_unlock(&v->mu);
        return DJN_ERR_ARGS;
    }
    s_gen_t *g = &v->gens[v->open];
    v->open = -1;
    uint64_t top = djn_slab_mark(v->slab);
    g->hi = top > g->lo ? s_up(top) : g->lo;
    if (g->hi > v->slab_bytes)
        g->hi = v->slab_bytes;
    if (g->live) {
        if (g->hi == g->lo) /* only zero-byte placements: keep a block so it can be found */
            g->hi = g->lo + S_ALIGN;
        g->state = S_HELD;
        v->st.gens_held++;
    } else if (g->hi == g->lo || s_retire(v, g->lo, g->hi, s)) {
        g->state = S_FREE;
    } else {
        g->state = S_HELD; /* could not be scrubbed: never reused */
        g->live = UINT64_MAX / 2;
        v->st.gens_held++;
    }
    djn_slab_reset(v->slab, 0);
    pthread_mutex_unlock(&v->mu);
    return DJN_OK;
}

static void s_slab_release(djn_dvmu_t *v, uint64_t off, djn_dev_stream_t *s) {
    for (int i = 0; i < S_MAX_GENS; i++) {
        s_gen_t *g = &v->gens[i];
        if (g->state == S_FREE || off < g->lo || off >= g->hi)
            continue;
        assert(g->live > 0);
        g->live--;
        v->st.slab_live--;
        if (g->state == S_HELD && !g->live && s_retire(v, g->lo, g->hi, s)) {
            g->state = S_FREE;
            v->st.gens_held--;
        } else if (g->state == S_HELD && !g->live) {
            g->live = UINT64_MAX / 2; /* could not be scrubbed: never reused */
        }
        return;
    }
    assert(!"a slab address outside every open or held window");
}

/* ------------------------------------------------------------------ life cycle */

static djn_dvmu_t *_Atomic s_by_dev[S_MAX_DEVS];

bool djn_dvmu_register(int device, djn_dvmu_t *v) {
    if (device < 0 || device >= S_MAX_DEVS)
        return false;
    atomic_store_explicit(&s_by_dev[device], v, memory_order_release);
    return true;
}

djn_dvmu_t *djn_dvmu_of_device(int device) {
    if (device < 0 || device >= S_MAX_DEVS)
        return NULL;
    return atomic_load_explicit(&s_by_dev[device], memory_order_acquire);
}

djn_dvmu_t *djn_dvmu_find(const void *p) {
    for (int i = 0; i < S_MAX_DEVS; i++) {
        djn_dvmu_t *v = atomic_load_explicit(&s_by_dev[i], memory_order_acquire);
        if (v && djn_dvmu_owns(v, p))
            return v;
    }
    return NULL;
}

djn_dvmu_t *djn_dvmu_new(djn_dev_t *dev, uint64_t data_bytes, uint64_t slab_bytes, char *err,
                         size_t errlen) {
    djn_dvmu_t *v = djn_calloc(1, sizeof(*v));
    if (!v) {
        snprintf(err, errlen, "out of host memory");
        return NULL;
    }
    v->dev = dev;
    v->open = -1;
    pthread_mutex_init(&v->mu, NULL);
    if (!data_bytes) {
        uint64_t free_b = 0, total = 0;
        if (djn_dev_mem_info(dev, &free_b, &total) != DJN_OK) {
            snprintf(err, errlen, "cannot read the device's free memory: %s",
                     djn_dev_last_error(dev));
            goto fail;
        }
        uint64_t usable = free_b / 10 * 9;
        if (!slab_bytes)
            slab_bytes = usable / 8;
        if (usable < slab_bytes + S_MIN_DATA) {
            snprintf(err, errlen,
                     "the device has %llu bytes free: too little for a %llu-byte slab and a Data "
                     "segment",
                     (unsigned long long)free_b, (unsigned long long)slab_bytes);
            goto fail;
        }
        data_bytes = usable - slab_bytes;
    }
    v->data_bytes = data_bytes & ~(uint64_t)(S_ALIGN - 1);
    v->slab_bytes = slab_bytes & ~(uint64_t)(S_ALIGN - 1);
    v->heap = djn_heap_new(v->data_bytes, S_ALIGN);
    v->slab = djn_slab_new(v->slab_bytes, S_ALIGN);
    if (!v->heap || !v->slab) {
        snprintf(err, errlen, "cannot create the VMU segments (data %llu, slab %llu bytes)",
                 (unsigned long long)v->data_bytes, (unsigned long long)v->slab_bytes);
        goto fail;
    }
    void *p = NULL;
    uint64_t total = v->data_bytes + v->slab_bytes;
    if (djn_dev_reserve(dev, total, &p) != DJN_OK) {
        snprintf(err, errlen, "cannot reserve %llu bytes of device memory for the VMU: %s",
                 (unsigned long long)total, djn_dev_last_error(dev));
        goto fail;
    }
    v->base = p;
    if (djn_dev_memset(dev, p, 0, total, NULL) != DJN_OK ||
        djn_dev_stream_sync(dev, NULL) != DJN_OK) {
        snprintf(err, errlen, "cannot zero the VMU's device memory: %s", djn_dev_last_error(dev));
        goto fail;
    }
    v->st.slab_capacity = v->slab_bytes;
    return v;
fail:
    djn_dvmu_destroy(&v);
    return NULL;
}

void djn_dvmu_destroy(djn_dvmu_t **self_p) {
    if (!self_p || !*self_p)
        return;
    djn_dvmu_t *v = *self_p;
    while (v->unfenced) { /* every scrub queued on the streams must run before the end */
        for (uint32_t i = 0; i < v->ndirty; i++)
            if (v->dirty[i].fence < 0) {
                s_fence_stream(v, v->dirty[i].stream);
                break;
            }
    }
    for (int i = 0; i < S_MAX_DEVS; i++) {
        djn_dvmu_t *self = v;
        atomic_compare_exchange_strong(&s_by_dev[i], &self, NULL);
    }
    for (uint32_t i = 0; i < v->nused; i++) {
        (void)djn_dev_event_wait(v->dev, v->used[i].ev);
        djn_dev_event_destroy(v->dev, v->used[i].ev);
    }
    for (uint32_t f = 0; f < v->nfences; f++)
        if (v->fences[f].ev) {
            (void)djn_dev_event_wait(v->dev, v->fences[f].ev);
            djn_dev_event_destroy(v->dev, v->fences[f].ev);
        }
    for (uint32_t i = 0; i < v->npool; i++) {
        (void)djn_dev_event_wait(v->dev, v->pool[i]);
        djn_dev_event_destroy(v->dev, v->pool[i]);
    }
    djn_free(v->pool, v->pool_cap * sizeof(*v->pool));
    djn_free(v->dirty, v->dirty_cap * sizeof(*v->dirty));
    djn_free(v->fences, v->nfences * sizeof(*v->fences));
    if (v->base) {
        /* scrubs queued on streams that are gone now ran on them before they went */
        (void)djn_dev_stream_sync(v->dev, NULL);
        djn_dev_release(v->dev, v->base);
    }
    djn_heap_destroy(&v->heap);
    djn_slab_destroy(&v->slab);
    pthread_mutex_destroy(&v->mu);
    djn_free(v, sizeof(*v));
    *self_p = NULL;
}

djn_dev_t *djn_dvmu_dev(const djn_dvmu_t *v) {
    return v->dev;
}

bool djn_dvmu_owns(const djn_dvmu_t *v, const void *p) {
    const uint8_t *q = p;
    return v->base && q >= v->base && q < v->base + v->data_bytes + v->slab_bytes;
}

bool djn_dvmu_in_slab(const djn_dvmu_t *v, const void *p) {
    const uint8_t *q = p;
    return djn_dvmu_owns(v, p) && q >= v->base + v->data_bytes;
}

bool djn_dvmu_release(djn_dvmu_t *v, void *p, djn_dev_stream_t *s) {
    if (!djn_dvmu_owns(v, p))
        return false;
    uint64_t off = (uint64_t)((uint8_t *)p - v->base);
    pthread_mutex_lock(&v->mu);
    if (off >= v->data_bytes)
        s_slab_release(v, off - v->data_bytes, s);
    else
        s_data_release(v, off, s);
    pthread_mutex_unlock(&v->mu);
    return true;
}

void djn_dvmu_stats(djn_dvmu_t *v, djn_dvmu_stats_t *out) {
    pthread_mutex_lock(&v->mu);
    *out = v->st;
    djn_heap_stats(v->heap, &out->data);
    out->data_dirty = v->ndirty;
    out->slab_inflight = v->nused;
    pthread_mutex_unlock(&v->mu);
}

/* ------------------------------------------------------------------ pluggable allocator */

static __thread bool t_slab;
static __thread char t_oom[256];

bool djn_dvmu_thread_slab(bool on) {
    bool prev = t_slab;
    t_slab = on;
    return prev;
}

const char *djn_dvmu_oom_words(void) {
    return t_oom;
}

void *djn_dvmu_alloc_fn(size_t size, int device, void *stream) {
    djn_dvmu_t *v = djn_dvmu_of_device(device);
    if (!v) {
        snprintf(t_oom, sizeof t_oom, "no djinn VMU for CUDA device %d", device);
        return NULL;
    }
    djn_dev_stream_t *s = stream;
    void *p = NULL;
    if (t_slab) {
        p = djn_dvmu_slab_alloc(v, size, s);
        if (!p) {
            uint64_t base = 0, end = 0;
            if (djn_dvmu_window(v, &base, &end)) {
                snprintf(t_oom, sizeof t_oom,
                         "the fragment needs more than its stack-slab window ([%llu, %llu) of "
                         "%llu bytes) to allocate %zu bytes",
                         (unsigned long long)base, (unsigned long long)end,
                         (unsigned long long)v->slab_bytes, size);
                return NULL;
            }
        }
    }
    if (!p)
        p = djn_dvmu_data_alloc(v, size, s);
    if (!p) {
        djn_dvmu_stats_t st;
        djn_dvmu_stats(v, &st);
        snprintf(t_oom, sizeof t_oom,
                 "the Data segment cannot fit %zu bytes (%llu of %llu used, largest free block "
                 "%llu)",
                 size, (unsigned long long)st.data.used, (unsigned long long)st.data.capacity,
                 (unsigned long long)st.data.largest_free);
    }
    return p;
}

void djn_dvmu_free_fn(void *ptr, size_t size, int device, void *stream) {
    (void)size;
    if (!ptr)
        return;
    djn_dvmu_t *v = djn_dvmu_find(ptr);
    if (!v)
        v = djn_dvmu_of_device(device);
    if (v)
        djn_dvmu_release(v, ptr, stream);
}
