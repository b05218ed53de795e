/* djn_stage.c: the pinned staging ring (see djn_stage.h).
 *
 * State: the ring [0, cap), `head` (where the next chunk starts unless it wraps), and
 * the chunk records of tickets [first, next) in a circular array of max_chunks. The
 * oldest live chunk starts at `tail` = rec(first).off (head when there is none).
 * acquire(n):
 *   1. n > cap: DJN_ERR_LIMIT.
 *   2. reclaim: from `first` on, while the chunk is released and its fence (if any) is
 *      done, it leaves (its event goes back to the pool); when none is left, head = 0.
 *   3. fit: no chunk: at 0. head > tail: at head if n <= cap - head, else at 0 if
 *      n <= tail (the bytes past head are skipped: a wrap). head < tail: at head if
 *      n <= tail - head. head == tail with chunks: full. Also full: max_chunks live.
 *   4. full: if the oldest chunk is released and fenced, the host waits for its fence
 *      (wait == true, else DJN_ERR_TIMEOUT) and goes back to 2; unreleased: DJN_ERR_OOM.
 * Invariants: live chunks lie in ring order from tail to head without overlapping; a
 * chunk's bytes are handed out again only after it was released and its fence was done
 * (so no copy still reading or writing them); every event is in exactly one place (a
 * chunk, or the pool). */
#include "djn_stage.h"

#include <assert.h>
#include <pthread.h>
#include <stdio.h>

#include "djn_mem.h"

#define S_ALIGN 256u

typedef struct {
    uint64_t off, n;
    bool released;
    djn_dev_event_t *ev; /* the fence; NULL: none */
} s_rec_t;

struct djn_stage {
    pthread_mutex_t mu;
    djn_dev_t *dev;
    uint8_t *base;
    uint64_t cap, head;
    s_rec_t *rec;
    uint32_t max;
    uint64_t first, next; /* tickets */
    djn_dev_event_t **pool;
    uint32_t npool;
    djn_stage_stats_t st;
};

static s_rec_t *s_rec(djn_stage_t *r, uint64_t ticket) {
    assert(ticket >= r->first && ticket < r->next);
    return &r->rec[ticket % r->max];
}

djn_stage_t *djn_stage_new(djn_dev_t *dev, uint64_t bytes, uint32_t max_chunks, char *err,
                           size_t errlen) {
    djn_stage_t *r = djn_calloc(1, sizeof(*r));
    if (!r) {
        snprintf(err, errlen, "out of host memory");
        return NULL;
    }
    pthread_mutex_init(&r->mu, NULL);
    r->dev = dev;
    r->cap = (bytes + S_ALIGN - 1) & ~(uint64_t)(S_ALIGN - 1);
    r->max = max_chunks ? max_chunks : 64;
    r->rec = djn_calloc(r->max, sizeof(s_rec_t));
    r->pool = djn_calloc(r->max, sizeof(djn_dev_event_t *)); /* one event per live chunk */
    if (!r->rec || !r->pool || !r->cap) {
        snprintf(err, errlen, r->cap ? "out of host memory" : "a staging ring of 0 bytes");
        goto fail;
    }
    void *p = NULL;
    if (djn_dev_host_alloc(dev, r->cap, &p) != DJN_OK) {
        snprintf(err, errlen, "cannot allocate %llu bytes of pinned host memory: %s",
                 (unsigned long long)r->cap, djn_dev_last_error(dev));
        goto fail;
    }
    r->base = p;
    r->st.capacity = r->cap;
    return r;
fail:
    djn_stage_destroy(&r);
    return NULL;
}

void djn_stage_destroy(djn_stage_t **self_p) {
    if (!self_p || !*self_p)
        return;
    djn_stage_t *r = *self_p;
    assert(!r->rec || r->first == r->next || r->first + r->max >= r->next);
    for (uint64_t t = r->first; t < r->next; t++) {
        s_rec_t *c = s_rec(r, t);
        assert(c->released); /* every chunk released before the ring goes */
        if (c->ev) {
            (void)djn_dev_event_wait(r->dev, c->ev);
            djn_dev_event_destroy(r->dev, c->ev);
        }
    }
    for (uint32_t i = 0; i < r->npool; i++)
        djn_dev_event_destroy(r->dev, r->pool[i]); /* pooled only once done */
    if (r->base)
        djn_dev_host_free(r->dev, r->base);
    djn_free(r->rec, r->max * sizeof(s_rec_t));
    djn_free(r->pool, r->max * sizeof(djn_dev_event_t *));
    pthread_mutex_destroy(&r->mu);
    djn_free(r, sizeof(*r));
    *self_p = NULL;
}

uint64_t djn_stage_capacity(const djn_stage_t *r) {
    return r->cap;
}

static void s_reclaim(djn_stage_t *r) { /* 2 */
    while (r->first < r->next) {
        s_rec_t *c = s_rec(r, r->first);
        if (!c->released || (c->ev && djn_dev_event_query(r->dev, c->ev) != DJN_OK))
            break;
        if (c->ev) {
            assert(r->npool < r->max);
            r->pool[r->npool++] = c->ev;
            c->ev = NULL;
        }
        r->first++;
        r->st.chunks--;
    }
    if (r->first == r->next)
        r->head = 0;
}

static uint64_t s_tail(djn_stage_t *r) {
    return r->first < r->next ? s_rec(r, r->first)->off : r->head;
}

/* Where n bytes fit now, or UINT64_MAX (3). */
static uint64_t s_fit(djn_stage_t *r, uint64_t n) {
    if (r->first == r->next)
        return 0;
    if (r->next - r->first >= r->max)
        return UINT64_MAX;
    uint64_t tail = s_tail(r);
    if (r->head > tail) {
        if (n <= r->cap - r->head)
            return r->head;
        return n <= tail ? 0 : UINT64_MAX;
    }
    if (r->head < tail && n <= tail - r->head)
        return r->head;
    return UINT64_MAX;
}

djn_status_t djn_stage_acquire(djn_stage_t *r, uint64_t n, bool wait, djn_stage_chunk_t *out) {
    if (!n || n > r->cap) /* 1 */
        return DJN_ERR_LIMIT;
    uint64_t len = (n + S_ALIGN - 1) & ~(uint64_t)(S_ALIGN - 1);
    if (len > r->cap)
        len = r->cap;
    pthread_mutex_lock(&r->mu);
    djn_status_t st = DJN_OK;
    uint64_t off;
    for (;;) {
        s_reclaim(r);
        if ((off = s_fit(r, len)) != UINT64_MAX)
            break;
        s_rec_t *old = s_rec(r, r->first); /* 4: full, so some chunk is live */
        if (!old->released) {
            st = DJN_ERR_OOM;
            break;
        }
        if (!wait) {
            st = DJN_ERR_TIMEOUT;
            break;
        }
        r->st.host_waits++;
        if ((st = djn_dev_event_wait(r->dev, old->ev)) != DJN_OK)
            break; /* released and not reclaimed: it has a pending fence */
    }
    if (st == DJN_OK) {
        if (off < r->head)
            r->st.wraps++;
        uint64_t t = r->next++;
        s_rec_t *c = s_rec(r, t);
        *c = (s_rec_t){off, len, false, NULL};
        r->head = off + len;
        r->st.chunks++;
        r->st.acquires++;
        r->st.bytes += n;
        *out = (djn_stage_chunk_t){r->base + off, n, t};
    } else {
        r->st.full++;
    }
    pthread_mutex_unlock(&r->mu);
    return st;
}

djn_status_t djn_stage_fence(djn_stage_t *r, uint64_t ticket, djn_dev_stream_t *s) {
    pthread_mutex_lock(&r->mu);
    s_rec_t *c = s_rec(r, ticket);
    assert(!c->released);
    if (!c->ev && r->npool)
        c->ev = r->pool[--r->npool]; /* pooled events are done */
    if ((!c->ev && djn_dev_event_new(r->dev, &c->ev) != DJN_OK) ||
        djn_dev_event_record(r->dev, c->ev, s) != DJN_OK) {
        /* no fence: make the copies done instead (c->ev, if any, reads as done) */
        (void)djn_dev_stream_sync(r->dev, s);
    }
    pthread_mutex_unlock(&r->mu);
    return DJN_OK;
}

djn_status_t djn_stage_wait(djn_stage_t *r, uint64_t ticket) {
    pthread_mutex_lock(&r->mu);
    djn_dev_event_t *e = s_rec(r, ticket)->ev;
    if (e)
        r->st.host_waits++;
    pthread_mutex_unlock(&r->mu);
    /* outside the lock: another thread may acquire meanwhile (the chunk stays live) */
    return e ? djn_dev_event_wait(r->dev, e) : DJN_OK;
}

void djn_stage_release(djn_stage_t *r, uint64_t ticket) {
    pthread_mutex_lock(&r->mu);
    s_rec_t *c = s_rec(r, ticket);
    assert(!c->released);
    c->released = true;
    s_reclaim(r);
    pthread_mutex_unlock(&r->mu);
}

void djn_stage_stats(djn_stage_t *r, djn_stage_stats_t *out) {
    pthread_mutex_lock(&r->mu);
    *out = r->st;
    uint64_t tail = s_tail(r);
    out->in_use = r->first == r->next ? 0
                  : r->head > tail    ? r->head - tail
                                      : r->cap - tail + r->head;
    pthread_mutex_unlock(&r->mu);
}
