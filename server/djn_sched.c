/* djn_sched.c: per device, one FIFO per QoS class under one mutex, a condition variable
 * per device. The lock is held for a few pointer moves and, at worst, a walk of the
 * queued items of one device (bounded by --session-max-queued times the sessions).
 *
 * Choosing the next item of a device (s_pick), under the lock:
 *   1. the candidate is the head of the best non-empty class;
 *   2. aging: a head of a worse class that was passed over `age_passes` times or waited
 *      `age_ns` goes instead (the longest-waiting such head); every worse head that is
 *      passed over counts one more pass. So a batch item waits at most age_passes picks
 *      or age_ns, whatever arrives: batch never starves;
 *   3. share: if the candidate is interactive, a batch item is queued and interactive
 *      work has used up its share of the device (the bucket below is empty), the batch
 *      head goes instead;
 *   4. order: if the candidate's owner (its session) has an older item queued in another
 *      class, that oldest item goes instead: a session's fragments run in the order sent,
 *      so an interactive fragment behind its own batch fragment lifts that one (priority
 *      inheritance) rather than overtaking it and reading results not yet written;
 *   5. the chosen item is unlinked (from the middle of its list, for step 4).
 * Preemption (djn_sched_pop_urgent): the worker of a long item asks between nodes for a
 * queued item of a strictly better class whose owner has nothing older queued and is
 * not the running item's owner; the worker runs it nested and then resumes. A lock-free
 * count of queued items per class makes the question nearly free when nothing waits.
 * An interactive item is not nested into a batch item while the bucket is empty.
 * Lanes (djn_sched_pop_lane): extra threads of a device that take realtime and
 * interactive items only, and only while the worker is busy (an idle worker takes them
 * itself, planned into the slab), under the rules of a nested run (owner order, a
 * session lock free at once) plus one: never an item of the owner whose item the worker
 * runs (it may be popped and not yet locked). The batch share does not bind a lane: the
 * share bounds what interactive work takes from the worker's time, and a lane's run
 * takes none of it (the batch item runs on meanwhile). Measured with the share binding
 * lanes too (benchmarks/qos_bench.py, 2-core VM), batch kept the same 90 % of its solo
 * throughput with or without the share, while the interactive p99 was 1.54x its solo
 * p99 instead of 1.16x: the charge throttled work that cost batch nothing. While a lane
 * waits the worker nests nothing, so a paused batch item is no longer the price of an
 * interactive one: preemption between nodes left the interactive p99 one batch node
 * above its solo p99 (results/qos.md); a lane removes that wait where the device has a
 * spare core.
 *
 * The batch share, per device, is a bucket of nanoseconds of device time, counted in
 * the device's own time (what the worker reports: CPU time on a CPU device, so a host
 * busy with other processes changes nothing; wall time on a GPU):
 *   a. batch work that runs earns interactive work share' = (100 - share) / share of its
 *      run time (reported between nodes, djn_sched_pop_urgent's `progress`, and at its
 *      end, djn_sched_ran), up to a burst (DJN_SCHED_BURST_NS);
 *   b. an interactive item chosen while batch work waited (queued, for step 2b; paused
 *      under it, for preemption) is charged its run time when it ends (djn_sched_ran);
 *   c. when no batch work waits, the bucket is full again: the share protects waiting
 *      batch work, it is no debt an interactive tenant carries.
 * So while batch work waits, interactive work takes at most (100 - share)% of the device
 * plus one burst plus the item that overdrew the bucket, whatever else the host does.
 * Realtime work is neither limited nor charged (a right the operator grants). While the
 * bucket is empty, `unblock_at` (the running batch item's progress at which it refills
 * past zero) lets the lock-free hint answer "not yet" between two nodes without the lock.
 * Measured (benchmarks/qos_bench.py, 2-core VM shared with other work, results/qos.md):
 * with tokens that need about as much of the device as the batch tenant's nodes
 * (8 192x192 matmuls beside 256x256 ones), aging and preemption alone left batch 28% of
 * its solo throughput; the share keeps it at 70%. Charging wall
 * time instead (the first version) let a loaded host's descheduling of one token look
 * like 100 ms of device time and stall interactive work for seconds.
 *
 * Invariants: depth == the sum of the class lists' lengths; waiting[c] == the length of
 * list c; per owner, the items of the lists are taken in increasing seq.
 *
 * Rejected: one queue sorted by a priority number (a heap): a session's order would
 * need the same inheritance walk anyway, and three FIFOs keep push O(1); strict priority
 * without aging: a tenant decoding without pause would starve every batch tenant;
 * aging alone as the bound on what interactive work takes (it bounds a batch item's
 * wait to be picked, not the time taken from it once it runs and is paused at every
 * node); a sliding window of run times (the bucket is the same bound in O(1) state);
 * preempting inside a node (signals, killing kernels): a node is the unit ATen runs, so
 * node boundaries are where a fragment can be paused with its state consistent. */
#include "djn_sched.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "djn_mem.h"

typedef struct {
    djn_sched_item_t *head, *tail;
} s_list_t;

typedef struct {
    uint32_t wait_us[DJN_SCHED_SAMPLES], run_us[DJN_SCHED_SAMPLES];
    uint64_t count; /* samples ever noted; the ring holds the last DJN_SCHED_SAMPLES */
} s_lat_t;

typedef struct {
    s_list_t cls[DJN_SCHED_NCLASS];
    _Atomic uint32_t waiting[DJN_SCHED_NCLASS];
    uint32_t depth;
    uint64_t next_seq;
    bool running, claimed;
    uint64_t run_owner; /* ... and its owner: no lane takes that owner's items meanwhile */
    pthread_cond_t cv;
    pthread_cond_t lane_cv;       /* lanes wait here for realtime or interactive work */
    uint32_t lanes_running;       /* lanes running an item */
    _Atomic uint32_t lanes_ready; /* lanes waiting in pop_lane: they take better classes */
    _Atomic uint64_t preemptions, lane_runs;
    s_lat_t lat[DJN_SCHED_NCLASS];
    int64_t bucket_ns;           /* interactive time left ahead of waiting batch work */
    uint64_t credited_ns;        /* the running batch item's progress already earned (a.) */
    _Atomic uint64_t unblock_at; /* bucket empty: that progress at which it is not (0: no) */
} s_queue_t;

struct djn_sched {
    pthread_mutex_t mu;
    bool stop;
    uint32_t n;
    uint32_t age_passes;
    uint64_t age_ns;
    uint32_t prio_pm;  /* per mille of time interactive work may take (1000: unlimited) */
    uint64_t burst_ns; /* the bucket's size */
    s_queue_t *q;
};

static uint64_t s_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

djn_sched_t *djn_sched_new(uint32_t ndevices) {
    djn_sched_t *s = djn_calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->q = djn_calloc(ndevices ? ndevices : 1, sizeof(s_queue_t));
    if (!s->q) {
        djn_free(s, sizeof(*s));
        return NULL;
    }
    s->n = ndevices;
    s->age_passes = DJN_SCHED_AGE_PASSES;
    s->age_ns = DJN_SCHED_AGE_NS;
    s->prio_pm = 1000 - DJN_SCHED_BATCH_SHARE * 10;
    s->burst_ns = DJN_SCHED_BURST_NS;
    pthread_mutex_init(&s->mu, NULL);
    for (uint32_t i = 0; i < ndevices; i++) {
        pthread_cond_init(&s->q[i].cv, NULL);
        pthread_cond_init(&s->q[i].lane_cv, NULL);
        s->q[i].bucket_ns = (int64_t)s->burst_ns;
    }
    return s;
}

void djn_sched_destroy(djn_sched_t **self_p) {
    if (!self_p || !*self_p)
        return;
    djn_sched_t *s = *self_p;
    for (uint32_t i = 0; i < s->n; i++) {
        pthread_cond_destroy(&s->q[i].cv);
        pthread_cond_destroy(&s->q[i].lane_cv);
    }
    pthread_mutex_destroy(&s->mu);
    djn_free(s->q, (s->n ? s->n : 1) * sizeof(s_queue_t));
    djn_free(s, sizeof(*s));
    *self_p = NULL;
}

void djn_sched_set_aging(djn_sched_t *s, uint32_t passes, uint64_t ns) {
    pthread_mutex_lock(&s->mu);
    s->age_passes = passes;
    s->age_ns = ns;
    pthread_mutex_unlock(&s->mu);
}

/* ------------------------------------------------------------------ the batch share */

#define S_DEBT_MAX (60ll * 1000000000ll) /* one pathological item overdraws a minute at most */

/* Where the lock-free hint reads the bucket: the running batch item's progress at which
 * it is positive again (lock held). */
static void s_set_unblock(djn_sched_t *s, s_queue_t *q) {
    uint64_t at = 0;
    if (q->bucket_ns <= 0 && s->prio_pm < 1000)
        at = q->credited_ns + (uint64_t)(-q->bucket_ns) * (1000 - s->prio_pm) / s->prio_pm + 1;
    atomic_store_explicit(&q->unblock_at, at, memory_order_relaxed);
}

/* a.: batch work ran `ns` more (lock held). */
static void s_earn(djn_sched_t *s, s_queue_t *q, uint64_t ns) {
    uint64_t add = ns / (1000 - s->prio_pm) * s->prio_pm; /* ns * prio / (1000 - prio) */
    q->bucket_ns = add >= s->burst_ns || q->bucket_ns + (int64_t)add > (int64_t)s->burst_ns
                       ? (int64_t)s->burst_ns
                       : q->bucket_ns + (int64_t)add;
}

/* c.: no batch work waits any more (lock held). */
static void s_refill(djn_sched_t *s, s_queue_t *q) {
    q->bucket_ns = (int64_t)s->burst_ns;
    q->credited_ns = 0;
    atomic_store_explicit(&q->unblock_at, 0, memory_order_relaxed);
}

void djn_sched_set_share(djn_sched_t *s, uint32_t batch_pct, uint64_t burst_ns) {
    pthread_mutex_lock(&s->mu);
    s->prio_pm = batch_pct ? 1000 - 10 * (batch_pct > 95 ? 95 : batch_pct) : 1000;
    s->burst_ns = burst_ns;
    for (uint32_t i = 0; i < s->n; i++)
        s_refill(s, &s->q[i]);
    pthread_mutex_unlock(&s->mu);
}

void djn_sched_ran(djn_sched_t *s, uint32_t dev, const djn_sched_item_t *it, uint64_t run_ns) {
    if (dev >= s->n || s->prio_pm >= 1000 || (it->cls != DJN_SCHED_BATCH && !it->charged))
        return;
    pthread_mutex_lock(&s->mu);
    s_queue_t *q = &s->q[dev];
    if (it->cls == DJN_SCHED_BATCH) { /* a. the rest of its run */
        s_earn(s, q, run_ns > q->credited_ns ? run_ns - q->credited_ns : 0);
        q->credited_ns = 0;
    } else { /* b. */
        q->bucket_ns -= run_ns > (uint64_t)S_DEBT_MAX ? S_DEBT_MAX : (int64_t)run_ns;
        if (q->bucket_ns < -S_DEBT_MAX)
            q->bucket_ns = -S_DEBT_MAX;
    }
    s_set_unblock(s, q);
    pthread_mutex_unlock(&s->mu);
}

void djn_sched_push(djn_sched_t *s, uint32_t dev, djn_sched_item_t *it) {
    it->next = NULL;
    it->enq_ns = s_now_ns();
    it->passed = 0;
    it->charged = false;
    if (it->cls >= DJN_SCHED_NCLASS)
        it->cls = DJN_SCHED_BATCH;
    pthread_mutex_lock(&s->mu);
    s_queue_t *q = &s->q[dev];
    it->seq = q->next_seq++;
    s_list_t *l = &q->cls[it->cls];
    if (l->tail)
        l->tail->next = it;
    else
        l->head = it;
    l->tail = it;
    q->depth++;
    atomic_fetch_add(&q->waiting[it->cls], 1);
    pthread_cond_signal(&q->cv);
    if (it->cls < DJN_SCHED_BATCH && q->lanes_ready && q->running)
        pthread_cond_signal(&q->lane_cv);
    pthread_mutex_unlock(&s->mu);
}

/* Unlink `it` from list `c` (it is there). */
static void s_unlink(s_queue_t *q, uint8_t c, djn_sched_item_t *it) {
    s_list_t *l = &q->cls[c];
    djn_sched_item_t *prev = NULL;
    for (djn_sched_item_t *p = l->head; p && p != it; p = p->next)
        prev = p;
    if (prev)
        prev->next = it->next;
    else
        l->head = it->next;
    if (l->tail == it)
        l->tail = prev;
    it->next = NULL;
    q->depth--;
    atomic_fetch_sub(&q->waiting[c], 1);
}

/* The oldest queued item of `owner` in any class, or NULL. Each list is in push order,
 * so the first match of a list is that list's oldest. */
static djn_sched_item_t *s_oldest_of(s_queue_t *q, uint64_t owner) {
    djn_sched_item_t *best = NULL;
    for (uint8_t c = 0; c < DJN_SCHED_NCLASS; c++)
        for (djn_sched_item_t *p = q->cls[c].head; p; p = p->next)
            if (p->owner == owner) {
                if (!best || p->seq < best->seq)
                    best = p;
                break;
            }
    return best;
}

/* Whether realtime or interactive work is queued: what a lane takes (lock held). */
static bool s_lane_work(const s_queue_t *q) {
    return q->cls[DJN_SCHED_REALTIME].head || q->cls[DJN_SCHED_INTERACTIVE].head;
}

/* Steps 1-4 of the file comment; NULL when nothing is queued. */
static djn_sched_item_t *s_pick(djn_sched_t *s, s_queue_t *q) {
    int best = -1;
    for (int c = 0; c < DJN_SCHED_NCLASS && best < 0; c++)
        if (q->cls[c].head)
            best = c;
    if (best < 0)
        return NULL;
    djn_sched_item_t *it = q->cls[best].head;
    uint64_t now = s->age_ns ? s_now_ns() : 0;
    djn_sched_item_t *aged = NULL;
    for (int c = best + 1; c < DJN_SCHED_NCLASS; c++) {
        djn_sched_item_t *h = q->cls[c].head;
        if (!h)
            continue;
        bool old = (s->age_passes && h->passed >= s->age_passes) ||
                   (s->age_ns && now - h->enq_ns >= s->age_ns);
        if (old && (!aged || h->enq_ns < aged->enq_ns))
            aged = h;
    }
    if (aged)
        it = aged;
    djn_sched_item_t *bh = q->cls[DJN_SCHED_BATCH].head;
    if (it->cls == DJN_SCHED_INTERACTIVE && bh && s->prio_pm < 1000) { /* 3 */
        if (q->bucket_ns > 0)
            it->charged = true;
        else
            it = bh;
    }
    for (int c = best + 1; c < DJN_SCHED_NCLASS; c++) /* the heads passed over this time */
        if (q->cls[c].head && q->cls[c].head != it)
            q->cls[c].head->passed++;
    if (it->owner) {
        djn_sched_item_t *first = s_oldest_of(q, it->owner);
        if (first && first->seq < it->seq) {
            first->charged = it->charged && first->cls == DJN_SCHED_INTERACTIVE;
            it->charged = false;
            it = first;
        }
    }
    s_unlink(q, it->cls, it);
    if (it->cls == DJN_SCHED_BATCH) { /* its progress is what earns (a.) */
        q->credited_ns = 0;
        s_set_unblock(s, q);
    } else if (!q->cls[DJN_SCHED_BATCH].head) { /* c. */
        s_refill(s, q);
    }
    return it;
}

djn_sched_item_t *djn_sched_pop(djn_sched_t *s, uint32_t dev) {
    pthread_mutex_lock(&s->mu);
    s_queue_t *q = &s->q[dev];
    while ((!q->depth || q->claimed) && !s->stop)
        pthread_cond_wait(&q->cv, &s->mu);
    djn_sched_item_t *it = s->stop ? NULL : s_pick(s, q);
    q->running = it != NULL;
    if (it) {
        q->run_owner = it->owner;
        if (q->lanes_ready && s_lane_work(q))
            pthread_cond_broadcast(&q->lane_cv); /* the worker is busy: what waits is theirs */
    }
    pthread_mutex_unlock(&s->mu);
    return it;
}

void djn_sched_done(djn_sched_t *s, uint32_t dev) {
    pthread_mutex_lock(&s->mu);
    s_queue_t *q = &s->q[dev];
    q->running = false;
    q->run_owner = 0; /* what waits now goes to the worker (lanes only help a busy one) */
    pthread_mutex_unlock(&s->mu);
}

/* ------------------------------------------------------------------ lanes */

/* The item a lane may take now, unlinked, or NULL; *busy: one was refused by ok_fn
 * (a lock held elsewhere), so the lane should look again soon (lock held). */
static djn_sched_item_t *s_lane_pick(s_queue_t *q, djn_sched_ok_fn ok_fn, void *ctx, bool *busy) {
    if (!q->running) /* an idle worker takes it: planned into the slab, not beside it */
        return NULL;
    djn_sched_item_t *got = NULL;
    for (uint8_t c = 0; c < DJN_SCHED_BATCH && !got; c++) {
        for (djn_sched_item_t *p = q->cls[c].head; p; p = p->next) {
            if (p->owner && (p->owner == q->run_owner || s_oldest_of(q, p->owner) != p))
                continue;
            if (ok_fn && !ok_fn(p, ctx)) {
                *busy = true;
                continue;
            }
            got = p;
            break;
        }
    }
    if (!got)
        return NULL;
    s_unlink(q, got->cls, got);
    got->charged = false; /* the worker's batch work does not wait for it: no share */
    atomic_fetch_add(&q->lane_runs, 1);
    return got;
}

#define S_LANE_RETRY_NS 1000000 /* a refused item (its session busy) is tried again after */

djn_sched_item_t *djn_sched_pop_lane(djn_sched_t *s, uint32_t dev, djn_sched_ok_fn ok_fn,
                                     void *ctx) {
    pthread_mutex_lock(&s->mu);
    s_queue_t *q = &s->q[dev];
    djn_sched_item_t *got = NULL;
    atomic_fetch_add(&q->lanes_ready, 1); /* from now on the worker leaves such work to it */
    while (!s->stop) {
        bool busy = false;
        if (!q->claimed && s_lane_work(q) && (got = s_lane_pick(q, ok_fn, ctx, &busy)) != NULL)
            break;
        if (busy) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += S_LANE_RETRY_NS;
            if (ts.tv_nsec >= 1000000000) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000;
            }
            pthread_cond_timedwait(&q->lane_cv, &s->mu, &ts);
        } else {
            pthread_cond_wait(&q->lane_cv, &s->mu);
        }
    }
    atomic_fetch_sub(&q->lanes_ready, 1);
    if (got)
        q->lanes_running++;
    pthread_mutex_unlock(&s->mu);
    return got;
}

void djn_sched_lane_done(djn_sched_t *s, uint32_t dev) {
    pthread_mutex_lock(&s->mu);
    s->q[dev].lanes_running--;
    pthread_mutex_unlock(&s->mu);
}

uint64_t djn_sched_lane_runs(djn_sched_t *s, uint32_t dev) {
    return dev < s->n ? atomic_load(&s->q[dev].lane_runs) : 0;
}

bool djn_sched_urgent(djn_sched_t *s, uint32_t dev, uint8_t cls, uint64_t *need_progress) {
    s_queue_t *q = &s->q[dev];
    *need_progress = 0;
    if (atomic_load_explicit(&q->lanes_ready, memory_order_relaxed))
        return false; /* a lane waits: it takes such work, the running item goes on */
    for (uint8_t c = 0; c < cls && c < DJN_SCHED_NCLASS; c++)
        if (atomic_load_explicit(&q->waiting[c], memory_order_relaxed)) {
            if (c == DJN_SCHED_INTERACTIVE && cls == DJN_SCHED_BATCH) /* within the share */
                *need_progress = atomic_load_explicit(&q->unblock_at, memory_order_relaxed);
            return true;
        }
    return false;
}

djn_sched_item_t *djn_sched_pop_urgent(djn_sched_t *s, uint32_t dev, uint8_t cls, uint64_t owner,
                                       uint64_t progress_ns, djn_sched_ok_fn ok_fn, void *ctx) {
    s_queue_t *q = &s->q[dev];
    uint64_t need;
    if (!djn_sched_urgent(s, dev, cls, &need) || progress_ns < need)
        return NULL;
    djn_sched_item_t *got = NULL;
    pthread_mutex_lock(&s->mu);
    /* into a batch item, interactive work goes only within its share; the batch item's
     * progress so far has earned some (a.) */
    bool share = true;
    if (cls == DJN_SCHED_BATCH && s->prio_pm < 1000) {
        if (progress_ns > q->credited_ns) {
            s_earn(s, q, progress_ns - q->credited_ns);
            q->credited_ns = progress_ns;
        }
        s_set_unblock(s, q);
        share = q->bucket_ns > 0;
    }
    for (uint8_t c = 0; c < cls && c < DJN_SCHED_NCLASS && !got && !s->stop; c++) {
        if (c == DJN_SCHED_INTERACTIVE && !share)
            break;
        for (djn_sched_item_t *p = q->cls[c].head; p; p = p->next) {
            if (p->owner == owner || (p->owner && s_oldest_of(q, p->owner) != p))
                continue;
            if (ok_fn && !ok_fn(p, ctx))
                continue;
            got = p;
            break;
        }
    }
    if (got) {
        s_unlink(q, got->cls, got);
        got->charged = cls == DJN_SCHED_BATCH && got->cls == DJN_SCHED_INTERACTIVE;
        atomic_fetch_add(&q->preemptions, 1);
    }
    pthread_mutex_unlock(&s->mu);
    return got;
}

bool djn_sched_try_claim(djn_sched_t *s, uint32_t dev) {
    if (pthread_mutex_trylock(&s->mu) != 0)
        return false;
    s_queue_t *q = &s->q[dev];
    bool ok = !q->depth && !q->running && !q->lanes_running && !q->claimed && !s->stop;
    if (ok)
        q->claimed = true;
    pthread_mutex_unlock(&s->mu);
    return ok;
}

void djn_sched_release(djn_sched_t *s, uint32_t dev) {
    pthread_mutex_lock(&s->mu);
    s->q[dev].claimed = false;
    if (s->q[dev].depth) { /* what was pushed meanwhile may go now */
        pthread_cond_signal(&s->q[dev].cv);
        pthread_cond_broadcast(&s->q[dev].lane_cv);
    }
    pthread_mutex_unlock(&s->mu);
}

djn_sched_item_t *djn_sched_take(djn_sched_t *s, uint32_t dev) {
    pthread_mutex_lock(&s->mu);
    s_queue_t *q = &s->q[dev];
    djn_sched_item_t *it = NULL;
    for (uint8_t c = 0; c < DJN_SCHED_NCLASS; c++)
        if (q->cls[c].head && (!it || q->cls[c].head->seq < it->seq))
            it = q->cls[c].head;
    if (it)
        s_unlink(q, it->cls, it);
    pthread_mutex_unlock(&s->mu);
    return it;
}

djn_sched_item_t *djn_sched_remove_owner(djn_sched_t *s, uint32_t dev, uint64_t owner) {
    djn_sched_item_t *head = NULL, **tail = &head;
    pthread_mutex_lock(&s->mu);
    s_queue_t *q = &s->q[dev];
    djn_sched_item_t *it;
    while (owner && (it = s_oldest_of(q, owner)) != NULL) {
        s_unlink(q, it->cls, it);
        *tail = it;
        tail = &it->next;
    }
    pthread_mutex_unlock(&s->mu);
    return head;
}

uint32_t djn_sched_load(djn_sched_t *s, uint32_t dev) {
    pthread_mutex_lock(&s->mu);
    uint32_t d =
        s->q[dev].depth + (s->q[dev].running || s->q[dev].claimed) + s->q[dev].lanes_running;
    pthread_mutex_unlock(&s->mu);
    return d;
}

uint32_t djn_sched_depth(djn_sched_t *s, uint32_t dev) {
    pthread_mutex_lock(&s->mu);
    uint32_t d = s->q[dev].depth;
    pthread_mutex_unlock(&s->mu);
    return d;
}

bool djn_sched_idle(djn_sched_t *s) {
    pthread_mutex_lock(&s->mu);
    bool idle = true;
    for (uint32_t i = 0; i < s->n && idle; i++)
        idle = !s->q[i].depth && !s->q[i].running && !s->q[i].claimed && !s->q[i].lanes_running;
    pthread_mutex_unlock(&s->mu);
    return idle;
}

void djn_sched_stop(djn_sched_t *s) {
    pthread_mutex_lock(&s->mu);
    s->stop = true;
    for (uint32_t i = 0; i < s->n; i++) {
        pthread_cond_broadcast(&s->q[i].cv);
        pthread_cond_broadcast(&s->q[i].lane_cv);
    }
    pthread_mutex_unlock(&s->mu);
}

/* ------------------------------------------------------------------ latency */

static uint32_t s_us(uint64_t ns) {
    uint64_t us = ns / 1000;
    return us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
}

void djn_sched_note(djn_sched_t *s, uint32_t dev, uint8_t cls, uint64_t wait_ns, uint64_t run_ns) {
    if (dev >= s->n || cls >= DJN_SCHED_NCLASS)
        return;
    pthread_mutex_lock(&s->mu);
    s_lat_t *l = &s->q[dev].lat[cls];
    uint32_t i = (uint32_t)(l->count % DJN_SCHED_SAMPLES);
    l->wait_us[i] = s_us(wait_ns);
    l->run_us[i] = s_us(run_ns);
    l->count++;
    pthread_mutex_unlock(&s->mu);
}

static int s_cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* The p-th percentile (nearest rank) of n sorted samples. */
static uint64_t s_pct(const uint32_t *v, uint32_t n, uint32_t p) {
    if (!n)
        return 0;
    uint32_t rank = (uint32_t)(((uint64_t)p * n + 99) / 100); /* ceil(p/100 * n), >= 1 */
    return v[rank - 1];
}

void djn_sched_latency(djn_sched_t *s, uint32_t dev, uint8_t cls, djn_sched_lat_t *out) {
    memset(out, 0, sizeof(*out));
    if (dev >= s->n || cls >= DJN_SCHED_NCLASS)
        return;
    static _Thread_local uint32_t wait[DJN_SCHED_SAMPLES], run[DJN_SCHED_SAMPLES];
    pthread_mutex_lock(&s->mu);
    const s_lat_t *l = &s->q[dev].lat[cls];
    uint32_t n = l->count < DJN_SCHED_SAMPLES ? (uint32_t)l->count : DJN_SCHED_SAMPLES;
    memcpy(wait, l->wait_us, n * sizeof(uint32_t));
    memcpy(run, l->run_us, n * sizeof(uint32_t));
    out->count = l->count;
    pthread_mutex_unlock(&s->mu);
    qsort(wait, n, sizeof(uint32_t), s_cmp_u32);
    qsort(run, n, sizeof(uint32_t), s_cmp_u32);
    out->wait_p50_us = s_pct(wait, n, 50);
    out->wait_p99_us = s_pct(wait, n, 99);
    out->run_p50_us = s_pct(run, n, 50);
    out->run_p99_us = s_pct(run, n, 99);
}

uint64_t djn_sched_preemptions(djn_sched_t *s, uint32_t dev) {
    return dev < s->n ? atomic_load(&s->q[dev].preemptions) : 0;
}
