/* test_sched.c: the device work queues (server/djn_sched.c).
 *
 * Covers: FIFO order per device and independence of devices; depth; take never waits;
 * pop waits until a push (or a stop) and then returns exactly the pushed item; stop
 * wakes every waiter on every device, after which pop returns NULL while take still
 * drains what is left; push stamps enq_ns in order; many producers and one consumer per
 * device keep each producer's order with nothing lost or duplicated; create/destroy and
 * allocation failure; idle (what a drain waits for) is false while anything is queued,
 * running or claimed on any device; classes, aging, owner order, preemption; the batch
 * share (interactive work over its share of the device waits for batch work); removing
 * an expired owner's items; the load placement reads; lanes (what they take, what they
 * leave to the worker, the share, and waking them).
 *
 * Threads are plain pthreads. Every wait for another thread is bounded (S_WAIT_MS): a
 * broken queue fails the test instead of hanging it. The one place that needs time to
 * pass is the check that pop is still blocked before any push: it waits S_BLOCK_MS and
 * asserts that nothing came back, which can only produce a false pass, never a false
 * failure. */
#include "djn_test.h"

#include <pthread.h>
#include <stdbool.h>
#include <string.h>
#include <time.h>

#include "djn_proto.h"
#include "djn_sched.h"

#define S_WAIT_MS 10000
#define S_BLOCK_MS 50

typedef struct {
    djn_sched_item_t it; /* first: the queue links items through it */
    uint32_t producer, seq;
} job_t;

/* ------------------------------------------------------------------ a bounded latch */

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int count;
} latch_t;

static void latch_init(latch_t *l) {
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cv, NULL);
    l->count = 0;
}
static void latch_destroy(latch_t *l) {
    pthread_cond_destroy(&l->cv);
    pthread_mutex_destroy(&l->mu);
}
static void latch_add(latch_t *l) {
    pthread_mutex_lock(&l->mu);
    l->count++;
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
}
/* Wait until count >= n or ms pass; returns the count seen. */
static int latch_wait(latch_t *l, int n, int ms) {
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += ms / 1000;
    dl.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&l->mu);
    while (l->count < n)
        if (pthread_cond_timedwait(&l->cv, &l->mu, &dl) != 0)
            break;
    int c = l->count;
    pthread_mutex_unlock(&l->mu);
    return c;
}

/* ------------------------------------------------------------------ waiters */

typedef struct {
    djn_sched_t *s;
    uint32_t dev;
    latch_t *started, *done;
    djn_sched_item_t *got; /* written before `done` is counted */
    bool lane;             /* pop as a lane (djn_sched_pop_lane) */
    djn_sched_ok_fn ok_fn;
    void *ok_ctx;
} waiter_t;

static void *s_waiter_fn(void *arg) {
    waiter_t *w = arg;
    latch_add(w->started);
    w->got = w->lane ? djn_sched_pop_lane(w->s, w->dev, w->ok_fn, w->ok_ctx)
                     : djn_sched_pop(w->s, w->dev);
    latch_add(w->done);
    return NULL;
}

/* Join the threads that finished; a thread stuck in pop (a failed test) is left to die
 * with the child process rather than hanging the run. */
static bool s_join_all(pthread_t *th, int n, latch_t *done) {
    if (latch_wait(done, n, S_WAIT_MS) < n)
        return false;
    for (int i = 0; i < n; i++)
        pthread_join(th[i], NULL);
    return true;
}

/* ------------------------------------------------------------------ tests */

static void test_fifo_per_device(void) {
    djn_sched_t *s = djn_sched_new(3);
    CHECK(s != NULL);
    if (!s)
        return;
    job_t jobs[12] = {0};
    for (uint32_t i = 0; i < 12; i++) {
        jobs[i].producer = i % 3; /* device */
        jobs[i].seq = i;
        djn_sched_push(s, i % 3, &jobs[i].it);
    }
    CHECK_EQ_INT(djn_sched_depth(s, 0), 4);
    CHECK_EQ_INT(djn_sched_depth(s, 1), 4);
    CHECK_EQ_INT(djn_sched_depth(s, 2), 4);
    /* Device 1 first: the others are untouched. */
    for (uint32_t k = 0; k < 4; k++) {
        job_t *j = (job_t *)djn_sched_pop(s, 1);
        CHECK(j == &jobs[1 + 3 * k]);
        CHECK(j && j->it.next == NULL); /* unlinked when handed out */
        CHECK_EQ_INT(djn_sched_depth(s, 1), 3 - k);
    }
    CHECK(djn_sched_take(s, 1) == NULL);
    CHECK_EQ_INT(djn_sched_depth(s, 0), 4);
    /* Interleaved pop and take on device 0, pushes in between on device 2. */
    CHECK(djn_sched_take(s, 0) == &jobs[0].it);
    CHECK(djn_sched_pop(s, 0) == &jobs[3].it);
    job_t late = {.producer = 2, .seq = 99};
    djn_sched_push(s, 2, &late.it);
    CHECK_EQ_INT(djn_sched_depth(s, 2), 5);
    CHECK(djn_sched_take(s, 0) == &jobs[6].it);
    CHECK(djn_sched_pop(s, 0) == &jobs[9].it);
    CHECK(djn_sched_take(s, 0) == NULL);
    for (uint32_t k = 0; k < 4; k++)
        CHECK(djn_sched_take(s, 2) == &jobs[2 + 3 * k].it);
    CHECK(djn_sched_take(s, 2) == &late.it);
    CHECK(djn_sched_take(s, 2) == NULL);
    for (uint32_t d = 0; d < 3; d++)
        CHECK_EQ_INT(djn_sched_depth(s, d), 0);
    /* A queue emptied and refilled keeps working (head and tail reset). */
    djn_sched_push(s, 0, &jobs[0].it);
    djn_sched_push(s, 0, &jobs[1].it);
    CHECK(djn_sched_take(s, 0) == &jobs[0].it);
    djn_sched_push(s, 0, &jobs[2].it);
    CHECK(djn_sched_take(s, 0) == &jobs[1].it);
    CHECK(djn_sched_take(s, 0) == &jobs[2].it);
    CHECK(djn_sched_take(s, 0) == NULL);
    djn_sched_destroy(&s);
    CHECK(s == NULL);
    djn_sched_destroy(&s);
    djn_sched_destroy(NULL);
}

static uint64_t s_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* push stamps enq_ns with the monotonic clock, in push order. */
static void test_enqueue_time(void) {
    djn_sched_t *s = djn_sched_new(1);
    job_t a = {0}, b = {0};
    a.it.enq_ns = b.it.enq_ns = 0;
    uint64_t t0 = s_now_ns();
    djn_sched_push(s, 0, &a.it);
    djn_sched_push(s, 0, &b.it);
    uint64_t t1 = s_now_ns();
    CHECK(a.it.enq_ns >= t0 && a.it.enq_ns <= t1);
    CHECK(b.it.enq_ns >= a.it.enq_ns && b.it.enq_ns <= t1);
    CHECK(djn_sched_take(s, 0) == &a.it);
    CHECK(djn_sched_take(s, 0) == &b.it);
    djn_sched_destroy(&s);
}

/* pop waits for a push on its own device, and returns that item. */
static void test_pop_blocks_until_push(void) {
    djn_sched_t *s = djn_sched_new(2);
    latch_t started, done;
    latch_init(&started);
    latch_init(&done);
    waiter_t w = {.s = s, .dev = 1, .started = &started, .done = &done};
    pthread_t th;
    CHECK_EQ_INT(pthread_create(&th, NULL, s_waiter_fn, &w), 0);
    CHECK_EQ_INT(latch_wait(&started, 1, S_WAIT_MS), 1);
    /* Nothing queued: still waiting after a while; a push on device 0 does not wake it. */
    CHECK_EQ_INT(latch_wait(&done, 1, S_BLOCK_MS), 0);
    job_t other = {0}, mine = {0};
    djn_sched_push(s, 0, &other.it);
    CHECK_EQ_INT(latch_wait(&done, 1, S_BLOCK_MS), 0);
    djn_sched_push(s, 1, &mine.it);
    bool joined = s_join_all(&th, 1, &done);
    CHECK(joined);
    CHECK(w.got == &mine.it);
    CHECK_EQ_INT(djn_sched_depth(s, 1), 0);
    CHECK_EQ_INT(djn_sched_depth(s, 0), 1);
    CHECK(djn_sched_take(s, 0) == &other.it);
    if (joined) {
        djn_sched_destroy(&s);
        latch_destroy(&started);
        latch_destroy(&done);
    }
}

/* An item pushed before pop is returned at once. */
static void test_pop_does_not_wait_when_queued(void) {
    djn_sched_t *s = djn_sched_new(1);
    job_t j = {0};
    djn_sched_push(s, 0, &j.it);
    CHECK(djn_sched_pop(s, 0) == &j.it); /* would hang the test if it waited */
    CHECK(djn_sched_take(s, 0) == NULL);
    djn_sched_destroy(&s);
}

/* stop wakes every waiter on every device; pop then returns NULL, take still drains. */
static void test_stop_wakes_waiters(void) {
    enum { NDEV = 3, PER = 2, N = NDEV * PER };
    djn_sched_t *s = djn_sched_new(NDEV);
    latch_t started, done;
    latch_init(&started);
    latch_init(&done);
    waiter_t w[N];
    pthread_t th[N];
    for (int i = 0; i < N; i++) {
        w[i] = (waiter_t){.s = s,
                          .dev = (uint32_t)(i % NDEV),
                          .started = &started,
                          .done = &done,
                          .got = (djn_sched_item_t *)&w[i]};
        CHECK_EQ_INT(pthread_create(&th[i], NULL, s_waiter_fn, &w[i]), 0);
    }
    CHECK_EQ_INT(latch_wait(&started, N, S_WAIT_MS), N);
    CHECK_EQ_INT(latch_wait(&done, 1, S_BLOCK_MS), 0);
    djn_sched_stop(s);
    bool joined = s_join_all(th, N, &done);
    CHECK(joined);
    for (int i = 0; i < N; i++)
        CHECK(w[i].got == NULL);
    /* After stop: pop returns NULL at once even with work queued; take drains it. */
    job_t a = {0}, b = {0};
    djn_sched_push(s, 2, &a.it);
    djn_sched_push(s, 2, &b.it);
    CHECK(djn_sched_pop(s, 2) == NULL);
    CHECK_EQ_INT(djn_sched_depth(s, 2), 2);
    CHECK(djn_sched_take(s, 2) == &a.it);
    CHECK(djn_sched_take(s, 2) == &b.it);
    CHECK(djn_sched_take(s, 2) == NULL);
    djn_sched_stop(s); /* twice is harmless */
    if (joined) {
        djn_sched_destroy(&s);
        latch_destroy(&started);
        latch_destroy(&done);
    }
}

/* Producers push concurrently; one consumer per device pops. Each producer's items come
 * out in its order, and every item comes out exactly once. */
enum { P_PRODUCERS = 4, P_DEVICES = 2, P_ITEMS = 2000 };

typedef struct {
    djn_sched_t *s;
    uint32_t id;
    job_t *jobs; /* P_ITEMS */
} producer_t;

typedef struct {
    djn_sched_t *s;
    uint32_t dev;
    uint32_t expect; /* items this consumer must see */
    uint32_t got, out_of_order, wrong_device;
    uint32_t next_seq[P_PRODUCERS];
    latch_t *done;
} consumer_t;

static void *s_producer_fn(void *arg) {
    producer_t *p = arg;
    for (uint32_t i = 0; i < P_ITEMS; i++) {
        p->jobs[i].producer = p->id;
        p->jobs[i].seq = i;
        djn_sched_push(p->s, (p->id + i) % P_DEVICES, &p->jobs[i].it);
    }
    return NULL;
}

static void *s_consumer_fn(void *arg) {
    consumer_t *c = arg;
    while (c->got < c->expect) {
        job_t *j = (job_t *)djn_sched_pop(c->s, c->dev);
        if (!j)
            break; /* stopped */
        if ((j->producer + j->seq) % P_DEVICES != c->dev)
            c->wrong_device++;
        if (j->seq < c->next_seq[j->producer])
            c->out_of_order++;
        c->next_seq[j->producer] = j->seq + 1;
        c->got++;
    }
    latch_add(c->done);
    return NULL;
}

static void test_many_producers(void) {
    djn_sched_t *s = djn_sched_new(P_DEVICES);
    static job_t jobs[P_PRODUCERS][P_ITEMS];
    latch_t done;
    latch_init(&done);
    consumer_t cons[P_DEVICES];
    pthread_t cth[P_DEVICES], pth[P_PRODUCERS];
    for (uint32_t d = 0; d < P_DEVICES; d++) {
        cons[d] = (consumer_t){.s = s, .dev = d, .done = &done};
        cons[d].expect = P_PRODUCERS * P_ITEMS / P_DEVICES;
        CHECK_EQ_INT(pthread_create(&cth[d], NULL, s_consumer_fn, &cons[d]), 0);
    }
    producer_t prod[P_PRODUCERS];
    for (uint32_t p = 0; p < P_PRODUCERS; p++) {
        prod[p] = (producer_t){s, p, jobs[p]};
        CHECK_EQ_INT(pthread_create(&pth[p], NULL, s_producer_fn, &prod[p]), 0);
    }
    for (uint32_t p = 0; p < P_PRODUCERS; p++)
        pthread_join(pth[p], NULL); /* producers never block */
    bool finished = latch_wait(&done, P_DEVICES, S_WAIT_MS) == P_DEVICES;
    CHECK(finished);
    if (!finished)
        djn_sched_stop(s); /* release the consumers before joining them */
    for (uint32_t d = 0; d < P_DEVICES; d++)
        pthread_join(cth[d], NULL);
    uint32_t total = 0;
    for (uint32_t d = 0; d < P_DEVICES; d++) {
        CHECK_EQ_INT(cons[d].got, cons[d].expect);
        CHECK_EQ_INT(cons[d].out_of_order, 0);
        CHECK_EQ_INT(cons[d].wrong_device, 0);
        CHECK_EQ_INT(djn_sched_depth(s, d), 0);
        CHECK(djn_sched_take(s, d) == NULL);
        total += cons[d].got;
    }
    CHECK_EQ_INT(total, P_PRODUCERS * P_ITEMS);
    djn_sched_destroy(&s);
    latch_destroy(&done);
}

static void test_new_and_fault_injection(void) {
    int64_t mem0 = djn_mem_in_use();
    for (int64_t n = 0; n < 2; n++) { /* the scheduler, then its queues */
        djn_mem_fail_after(n);
        djn_sched_t *s = djn_sched_new(4);
        djn_mem_fail_after(-1);
        CHECK(s == NULL);
        CHECK_EQ_INT(djn_mem_in_use(), mem0);
    }
    djn_sched_t *s = djn_sched_new(DJN_MAX_DEVICES);
    CHECK(s != NULL);
    CHECK(djn_mem_in_use() > mem0);
    if (s) {
        job_t j = {0};
        djn_sched_push(s, DJN_MAX_DEVICES - 1, &j.it);
        CHECK_EQ_INT(djn_sched_depth(s, DJN_MAX_DEVICES - 1), 1);
        CHECK(djn_sched_take(s, DJN_MAX_DEVICES - 1) == &j.it);
    }
    djn_sched_destroy(&s);
    CHECK_EQ_INT(djn_mem_in_use(), mem0);
}

static void test_idle(void) {
    djn_sched_t *s = djn_sched_new(2);
    job_t a = {0};
    CHECK(djn_sched_idle(s));
    djn_sched_push(s, 1, &a.it); /* queued */
    CHECK(!djn_sched_idle(s));
    CHECK(djn_sched_pop(s, 1) == &a.it); /* running */
    CHECK(!djn_sched_idle(s));
    djn_sched_done(s, 1);
    CHECK(djn_sched_idle(s));
    CHECK(djn_sched_try_claim(s, 0)); /* claimed by the transport */
    CHECK(!djn_sched_idle(s));
    djn_sched_release(s, 0);
    CHECK(djn_sched_idle(s));
    djn_sched_destroy(&s);
}

/* ------------------------------------------------------------------ QoS classes */

static void s_push_as(djn_sched_t *s, job_t *j, uint8_t cls, uint64_t owner, uint32_t seq) {
    memset(j, 0, sizeof(*j));
    j->it.cls = cls;
    j->it.owner = owner;
    j->seq = seq;
    djn_sched_push(s, 0, &j->it);
}

/* Better classes first; FIFO inside a class; an out-of-range class is batch. */
static void test_classes_in_order(void) {
    djn_sched_t *s = djn_sched_new(1);
    djn_sched_set_aging(s, 0, 0);
    job_t b1, i1, r1, b2, i2, bad;
    s_push_as(s, &b1, DJN_SCHED_BATCH, 1, 0);
    s_push_as(s, &i1, DJN_SCHED_INTERACTIVE, 2, 0);
    s_push_as(s, &b2, DJN_SCHED_BATCH, 3, 0);
    s_push_as(s, &r1, DJN_SCHED_REALTIME, 4, 0);
    s_push_as(s, &i2, DJN_SCHED_INTERACTIVE, 5, 0);
    s_push_as(s, &bad, 200, 6, 0);
    CHECK_EQ_INT(bad.it.cls, DJN_SCHED_BATCH);
    CHECK_EQ_INT(djn_sched_depth(s, 0), 6);
    job_t *want[] = {&r1, &i1, &i2, &b1, &b2, &bad};
    for (int k = 0; k < 6; k++) {
        djn_sched_item_t *it = djn_sched_pop(s, 0);
        CHECK(it == &want[k]->it);
        djn_sched_done(s, 0);
    }
    CHECK_EQ_INT(djn_sched_depth(s, 0), 0);
    djn_sched_destroy(&s);
}

/* Aging by passes: with interactive work always queued, a batch item still goes after
 * `passes` interactive picks. Without aging it would wait for all of them. */
static void test_batch_never_starves(void) {
    enum { N = 40, PASSES = 5 };
    djn_sched_t *s = djn_sched_new(1);
    djn_sched_set_aging(s, PASSES, 0);
    job_t batch, inter[N];
    s_push_as(s, &batch, DJN_SCHED_BATCH, 1, 0);
    for (uint32_t i = 0; i < N; i++)
        s_push_as(s, &inter[i], DJN_SCHED_INTERACTIVE, 2 + i, i);
    int at = -1;
    for (int k = 0; k < N + 1; k++) {
        djn_sched_item_t *it = djn_sched_pop(s, 0);
        djn_sched_done(s, 0);
        if (it == &batch.it)
            at = k;
    }
    CHECK_EQ_INT(at, PASSES);
    /* and by time: a batch item that waited age_ns goes before fresher interactive work */
    djn_sched_set_aging(s, 0, 1);
    s_push_as(s, &batch, DJN_SCHED_BATCH, 1, 0);
    s_push_as(s, &inter[0], DJN_SCHED_INTERACTIVE, 2, 0);
    struct timespec ts = {0, 2000};
    nanosleep(&ts, NULL);
    CHECK(djn_sched_pop(s, 0) == &batch.it);
    CHECK(djn_sched_take(s, 0) == &inter[0].it);
    djn_sched_destroy(&s);
}

/* A session's items keep their order across classes: its interactive item behind its
 * own batch item lifts the batch one, and pop_urgent never hands out an item whose
 * owner has an older one queued, nor one of the running item's owner. */
static void test_owner_order_and_urgent(void) {
    djn_sched_t *s = djn_sched_new(1);
    djn_sched_set_aging(s, 0, 0);
    job_t a_b, a_i, b_i, c_b;
    s_push_as(s, &c_b, DJN_SCHED_BATCH, 3, 0);
    s_push_as(s, &a_b, DJN_SCHED_BATCH, 1, 0);
    s_push_as(s, &a_i, DJN_SCHED_INTERACTIVE, 1, 1);
    s_push_as(s, &b_i, DJN_SCHED_INTERACTIVE, 2, 0);
    /* nothing better than interactive waits for an interactive item */
    CHECK(djn_sched_pop_urgent(s, 0, DJN_SCHED_INTERACTIVE, 9, 0, NULL, NULL) == NULL);
    /* the running batch item of owner 2 (say) may be preempted by... owner 1's
     * interactive item? No: owner 1 has an older batch item queued. b_i is its owner's */
    CHECK(djn_sched_pop_urgent(s, 0, DJN_SCHED_BATCH, 2, 0, NULL, NULL) == NULL);
    CHECK(djn_sched_pop_urgent(s, 0, DJN_SCHED_BATCH, 7, 0, NULL, NULL) == &b_i.it);
    CHECK_EQ_INT(djn_sched_preemptions(s, 0), 1);
    CHECK_EQ_INT(djn_sched_depth(s, 0), 3);
    /* the first pop wants a_i (best class) but owner 1's batch item is older: it goes */
    CHECK(djn_sched_pop(s, 0) == &a_b.it);
    djn_sched_done(s, 0);
    CHECK(djn_sched_pop(s, 0) == &a_i.it);
    djn_sched_done(s, 0);
    CHECK(djn_sched_pop(s, 0) == &c_b.it);
    djn_sched_done(s, 0);
    djn_sched_destroy(&s);
}

static bool s_refuse_fn(djn_sched_item_t *it, void *ctx) {
    (void)it;
    (*(int *)ctx)++;
    return false;
}

/* ok_fn can refuse (a session lock that is taken): the item stays queued. */
static void test_urgent_respects_ok_fn(void) {
    djn_sched_t *s = djn_sched_new(1);
    job_t r;
    s_push_as(s, &r, DJN_SCHED_REALTIME, 5, 0);
    int asked = 0;
    CHECK(djn_sched_pop_urgent(s, 0, DJN_SCHED_BATCH, 1, 0, s_refuse_fn, &asked) == NULL);
    CHECK_EQ_INT(asked, 1);
    CHECK_EQ_INT(djn_sched_depth(s, 0), 1);
    CHECK(djn_sched_pop_urgent(s, 0, DJN_SCHED_REALTIME, 1, 0, NULL, NULL) == NULL);
    CHECK(djn_sched_take(s, 0) == &r.it);
    djn_sched_destroy(&s);
}

/* Percentiles by nearest rank over the samples kept; out-of-range arguments are 0. */
static void test_latency_percentiles(void) {
    djn_sched_t *s = djn_sched_new(2);
    djn_sched_lat_t l;
    djn_sched_latency(s, 1, DJN_SCHED_BATCH, &l);
    CHECK_EQ_INT(l.count, 0);
    CHECK_EQ_INT(l.wait_p99_us, 0);
    for (uint64_t i = 100; i >= 1; i--) /* 1..100 ms wait, 1..100 us run */
        djn_sched_note(s, 1, DJN_SCHED_BATCH, i * 1000000ull, i * 1000ull);
    djn_sched_latency(s, 1, DJN_SCHED_BATCH, &l);
    CHECK_EQ_INT(l.count, 100);
    CHECK_EQ_INT(l.wait_p50_us, 50000);
    CHECK_EQ_INT(l.wait_p99_us, 99000);
    CHECK_EQ_INT(l.run_p50_us, 50);
    CHECK_EQ_INT(l.run_p99_us, 99);
    djn_sched_latency(s, 0, DJN_SCHED_BATCH, &l);
    CHECK_EQ_INT(l.count, 0);
    djn_sched_latency(s, 5, DJN_SCHED_BATCH, &l);
    CHECK_EQ_INT(l.count, 0);
    /* the ring keeps the most recent samples */
    for (uint32_t i = 0; i < DJN_SCHED_SAMPLES; i++)
        djn_sched_note(s, 0, DJN_SCHED_REALTIME, 7000, 3000);
    djn_sched_latency(s, 0, DJN_SCHED_REALTIME, &l);
    CHECK_EQ_INT(l.wait_p99_us, 7);
    CHECK_EQ_INT(l.run_p50_us, 3);
    djn_sched_destroy(&s);
}

#define MS (1000000ull)

/* The batch share, in device time: while batch work waits, interactive work that used
 * up its share (here 25%: batch earns it a third of its own run time, bursts of 10 ms)
 * no longer goes first nor nests into a batch item until batch progress has earned it
 * back; realtime work is not limited; an item chosen while no batch work waited is not
 * charged, and the bucket is full again once none waits; share 0 turns it off. No clock
 * is involved: progress and run times are what the worker reports. */
static void test_batch_share(void) {
    djn_sched_t *s = djn_sched_new(1);
    djn_sched_set_aging(s, 0, 0);
    djn_sched_set_share(s, 75, 10 * MS);
    job_t b1, b2, i1, i2, i3, r1;
    uint64_t need;
    s_push_as(s, &b1, DJN_SCHED_BATCH, 1, 0);
    s_push_as(s, &i1, DJN_SCHED_INTERACTIVE, 2, 0);
    djn_sched_item_t *it = djn_sched_pop(s, 0);
    CHECK(it == &i1.it); /* the bucket is full: interactive first, charged */
    CHECK(it->charged);
    djn_sched_ran(s, 0, it, 20 * MS); /* 10 ms over: batch must run 30 ms to pay it back */
    djn_sched_done(s, 0);
    s_push_as(s, &i2, DJN_SCHED_INTERACTIVE, 3, 0);
    CHECK(djn_sched_pop(s, 0) == &b1.it); /* over its share: batch goes first */
    /* b1 runs: i2 may nest once b1 has run 30 ms, not before; the hint says when */
    CHECK(djn_sched_urgent(s, 0, DJN_SCHED_BATCH, &need));
    CHECK(need > 29 * MS && need <= 30 * MS + 1);
    CHECK(djn_sched_pop_urgent(s, 0, DJN_SCHED_BATCH, 1, 0, NULL, NULL) == NULL);
    CHECK(djn_sched_pop_urgent(s, 0, DJN_SCHED_BATCH, 1, 15 * MS, NULL, NULL) == NULL);
    /* realtime is not limited */
    s_push_as(s, &r1, DJN_SCHED_REALTIME, 4, 0);
    CHECK(djn_sched_urgent(s, 0, DJN_SCHED_BATCH, &need) && need == 0);
    it = djn_sched_pop_urgent(s, 0, DJN_SCHED_BATCH, 1, 15 * MS, NULL, NULL);
    CHECK(it == &r1.it);
    CHECK(!it->charged);
    djn_sched_ran(s, 0, it, 100 * MS);
    it = djn_sched_pop_urgent(s, 0, DJN_SCHED_BATCH, 1, 31 * MS, NULL, NULL);
    CHECK(it == &i2.it); /* paid back: nested, and charged */
    CHECK(it->charged);
    djn_sched_ran(s, 0, it, 2 * MS);
    CHECK(djn_sched_urgent(s, 0, DJN_SCHED_BATCH, &need) == false); /* nothing waits */
    djn_sched_ran(s, 0, &b1.it, 40 * MS); /* b1 ends: the rest of its run earns too */
    djn_sched_done(s, 0);
    /* no batch work waiting: interactive is chosen and not charged */
    s_push_as(s, &i3, DJN_SCHED_INTERACTIVE, 5, 0);
    it = djn_sched_pop(s, 0);
    CHECK(it == &i3.it);
    CHECK(!it->charged);
    djn_sched_done(s, 0);
    /* deep in debt while batch waited; once no batch work waits the debt is forgotten */
    s_push_as(s, &b2, DJN_SCHED_BATCH, 1, 0);
    s_push_as(s, &i1, DJN_SCHED_INTERACTIVE, 2, 0);
    it = djn_sched_pop(s, 0);
    CHECK(it == &i1.it && it->charged);
    djn_sched_ran(s, 0, it, 1000 * MS);
    djn_sched_done(s, 0);
    CHECK(djn_sched_pop(s, 0) == &b2.it);
    djn_sched_ran(s, 0, &b2.it, 1 * MS);
    djn_sched_done(s, 0);
    s_push_as(s, &i1, DJN_SCHED_INTERACTIVE, 2, 0);
    it = djn_sched_pop(s, 0); /* nothing batch queued: the bucket is full again */
    CHECK(it == &i1.it && !it->charged);
    djn_sched_done(s, 0);
    s_push_as(s, &b2, DJN_SCHED_BATCH, 1, 0);
    s_push_as(s, &i2, DJN_SCHED_INTERACTIVE, 3, 0);
    CHECK(djn_sched_pop(s, 0) == &i2.it);
    djn_sched_done(s, 0);
    /* share 0: interactive always first, however much it ran */
    djn_sched_set_share(s, 0, 0);
    s_push_as(s, &i1, DJN_SCHED_INTERACTIVE, 2, 0);
    it = djn_sched_pop(s, 0);
    CHECK(it == &i1.it);
    djn_sched_ran(s, 0, it, 60ull * 1000 * MS);
    djn_sched_done(s, 0);
    s_push_as(s, &i2, DJN_SCHED_INTERACTIVE, 3, 0);
    CHECK(djn_sched_pop(s, 0) == &i2.it);
    djn_sched_done(s, 0);
    CHECK(djn_sched_take(s, 0) == &b2.it);
    djn_sched_destroy(&s);
}

/* An expired session's items leave every class at once, oldest first; the others stay.
 * The load counts the queued items and the running one. */
static void test_remove_owner_and_load(void) {
    djn_sched_t *s = djn_sched_new(2);
    job_t a1, a2, a3, b1;
    s_push_as(s, &a1, DJN_SCHED_BATCH, 7, 0);
    s_push_as(s, &b1, DJN_SCHED_INTERACTIVE, 8, 0);
    s_push_as(s, &a2, DJN_SCHED_INTERACTIVE, 7, 1);
    s_push_as(s, &a3, DJN_SCHED_REALTIME, 7, 2);
    CHECK_EQ_INT(djn_sched_load(s, 0), 4);
    CHECK(djn_sched_remove_owner(s, 1, 7) == NULL);
    djn_sched_item_t *l = djn_sched_remove_owner(s, 0, 7);
    CHECK(l == &a1.it && l->next == &a2.it && l->next->next == &a3.it && !a3.it.next);
    CHECK_EQ_INT(djn_sched_depth(s, 0), 1);
    CHECK(djn_sched_remove_owner(s, 0, 7) == NULL);
    CHECK(djn_sched_pop(s, 0) == &b1.it);
    CHECK_EQ_INT(djn_sched_load(s, 0), 1); /* running */
    djn_sched_done(s, 0);
    CHECK_EQ_INT(djn_sched_load(s, 0), 0);
    djn_sched_destroy(&s);
}

/* ------------------------------------------------------------------ lanes */

/* A lane popping on device 0: started, and its result once `done` counts 1. */
typedef struct {
    waiter_t w;
    latch_t started, done;
    pthread_t th;
} lane_t;

static void s_lane_start(lane_t *l, djn_sched_t *s, djn_sched_ok_fn ok_fn, void *ctx) {
    latch_init(&l->started);
    latch_init(&l->done);
    l->w = (waiter_t){s, 0, &l->started, &l->done, NULL, true, ok_fn, ctx};
    CHECK_EQ_INT(pthread_create(&l->th, NULL, s_waiter_fn, &l->w), 0);
    CHECK_EQ_INT(latch_wait(&l->started, 1, S_WAIT_MS), 1);
}

/* What the lane popped (NULL: still blocked after ms, or stopped); joined if it ended. */
static djn_sched_item_t *s_lane_got(lane_t *l, int ms) {
    if (latch_wait(&l->done, 1, ms) < 1)
        return NULL;
    pthread_join(l->th, NULL);
    latch_destroy(&l->started);
    latch_destroy(&l->done);
    return l->w.got;
}

static bool s_once_fn(djn_sched_item_t *it, void *ctx) { /* refuses the first time it is asked */
    (void)it;
    return (*(int *)ctx)++ > 0;
}

/* A lane takes realtime and interactive items only, never batch, and only while the
 * worker is busy (an idle worker takes them itself); never an item of the owner the
 * worker runs, nor one behind an older item of its owner; while it waits, the worker
 * nests nothing (the lane takes it with the batch item left running); try_claim, load
 * and idle count what lanes run; an item ok_fn refused is tried again; stop wakes a
 * waiting lane. */
static void test_lanes(void) {
    djn_sched_t *s = djn_sched_new(1);
    djn_sched_set_aging(s, 0, 0);
    job_t b1, b2, a_i, c_b, c_i, d_i, r1;
    uint64_t need;
    s_push_as(s, &b1, DJN_SCHED_BATCH, 1, 0);
    CHECK(djn_sched_pop(s, 0) == &b1.it); /* the worker runs owner 1's batch item */
    lane_t l;
    s_lane_start(&l, s, NULL, NULL);
    s_push_as(s, &b2, DJN_SCHED_BATCH, 2, 0);
    s_push_as(s, &a_i, DJN_SCHED_INTERACTIVE, 1, 1); /* the running owner's */
    s_push_as(s, &c_b, DJN_SCHED_BATCH, 3, 0);
    s_push_as(s, &c_i, DJN_SCHED_INTERACTIVE, 3, 1); /* behind its owner's batch item */
    CHECK(s_lane_got(&l, S_BLOCK_MS) == NULL);       /* none of these is the lane's */
    /* the worker nests a_i? no: its owner is the one running */
    CHECK(djn_sched_pop_urgent(s, 0, DJN_SCHED_BATCH, 1, 0, NULL, NULL) == NULL);
    s_push_as(s, &d_i, DJN_SCHED_INTERACTIVE, 4, 0);
    CHECK(s_lane_got(&l, S_WAIT_MS) == &d_i.it);
    CHECK(!d_i.it.charged);                    /* it takes no time from the worker: no share */
    CHECK_EQ_INT(djn_sched_load(s, 0), 4 + 2); /* a_i, b2, c_b, c_i; the worker and the lane */
    CHECK(!djn_sched_try_claim(s, 0));
    djn_sched_lane_done(s, 0);
    CHECK_EQ_INT(djn_sched_lane_runs(s, 0), 1);
    /* an idle worker takes what waits itself (planned into its slab): a lane only helps
     * a busy one, so a_i, free to go now, is still not the lane's */
    djn_sched_done(s, 0);
    int asked = 0;
    s_lane_start(&l, s, s_once_fn, &asked);
    CHECK(s_lane_got(&l, S_BLOCK_MS) == NULL);
    CHECK(djn_sched_pop(s, 0) == &a_i.it);
    djn_sched_done(s, 0);
    /* while a lane waits, interactive work beside a batch item is the lane's: the worker
     * is not told to pause (realtime neither) */
    CHECK(djn_sched_pop(s, 0) == &c_b.it);     /* c_i (best class) lifts its owner's c_b */
    CHECK(s_lane_got(&l, S_BLOCK_MS) == NULL); /* c_i is the running owner's */
    s_push_as(s, &r1, DJN_SCHED_REALTIME, 5, 0);
    CHECK(!djn_sched_urgent(s, 0, DJN_SCHED_BATCH, &need));
    CHECK(djn_sched_pop_urgent(s, 0, DJN_SCHED_BATCH, 3, 0, NULL, NULL) == NULL);
    /* ok_fn refused r1 once (its session busy): the lane tried again by itself */
    CHECK(s_lane_got(&l, S_WAIT_MS) == &r1.it);
    CHECK_EQ_INT(asked, 2);
    CHECK(!r1.it.charged);
    djn_sched_lane_done(s, 0);
    djn_sched_done(s, 0);
    CHECK(!djn_sched_idle(s));
    CHECK(djn_sched_pop(s, 0) == &c_i.it);
    djn_sched_done(s, 0);
    CHECK(djn_sched_pop(s, 0) == &b2.it);
    djn_sched_done(s, 0);
    CHECK(djn_sched_idle(s));
    CHECK(djn_sched_try_claim(s, 0));
    djn_sched_release(s, 0);
    /* stop wakes a waiting lane */
    s_lane_start(&l, s, NULL, NULL);
    djn_sched_stop(s);
    CHECK_EQ_INT(latch_wait(&l.done, 1, S_WAIT_MS), 1);
    CHECK(s_lane_got(&l, 0) == NULL);
    djn_sched_destroy(&s);
}

/* The batch share binds the worker, not lanes: with interactive work over its share
 * (the worker would be told to pause only once its batch item paid the debt back), a
 * waiting lane takes interactive work at once, uncharged, and the worker is told
 * nothing while a lane waits. */
static void test_lane_share(void) {
    djn_sched_t *s = djn_sched_new(1);
    djn_sched_set_aging(s, 0, 0);
    djn_sched_set_share(s, 75, 10 * MS);
    job_t b1, i0, i1, i2, i3;
    uint64_t need;
    s_push_as(s, &b1, DJN_SCHED_BATCH, 1, 0);
    s_push_as(s, &i0, DJN_SCHED_INTERACTIVE, 2, 0);
    djn_sched_item_t *it = djn_sched_pop(s, 0);
    CHECK(it == &i0.it && it->charged);
    djn_sched_ran(s, 0, it, 20 * MS); /* 10 ms over its share */
    djn_sched_done(s, 0);
    CHECK(djn_sched_pop(s, 0) == &b1.it);
    s_push_as(s, &i1, DJN_SCHED_INTERACTIVE, 3, 0);
    CHECK(djn_sched_urgent(s, 0, DJN_SCHED_BATCH, &need)); /* no lane: wait for the share */
    CHECK(need > 29 * MS && need <= 30 * MS + 1);
    lane_t l;
    s_lane_start(&l, s, NULL, NULL);
    CHECK(s_lane_got(&l, S_WAIT_MS) == &i1.it);
    CHECK(!i1.it.charged);
    djn_sched_ran(s, 0, &i1.it, 20 * MS);
    djn_sched_lane_done(s, 0);
    s_lane_start(&l, s, NULL, NULL);
    s_push_as(s, &i2, DJN_SCHED_INTERACTIVE, 4, 0);
    CHECK(s_lane_got(&l, S_WAIT_MS) == &i2.it);
    CHECK(!i2.it.charged);
    djn_sched_lane_done(s, 0);
    /* a lane waits (i3 is the running owner's: not its to take): no pause is asked */
    s_lane_start(&l, s, NULL, NULL);
    s_push_as(s, &i3, DJN_SCHED_INTERACTIVE, 1, 1);
    CHECK(s_lane_got(&l, S_BLOCK_MS) == NULL);
    CHECK(!djn_sched_urgent(s, 0, DJN_SCHED_BATCH, &need));
    CHECK(djn_sched_pop_urgent(s, 0, DJN_SCHED_BATCH, 1, 60 * MS, NULL, NULL) == NULL);
    CHECK_EQ_INT(djn_sched_preemptions(s, 0), 0);
    djn_sched_done(s, 0);
    CHECK(djn_sched_pop(s, 0) == &i3.it); /* the worker, idle, takes it itself */
    djn_sched_done(s, 0);
    djn_sched_stop(s);
    CHECK(s_lane_got(&l, S_WAIT_MS) == NULL);
    djn_sched_destroy(&s);
}

int main(void) {
    RUN(test_idle);
    RUN(test_fifo_per_device);
    RUN(test_enqueue_time);
    RUN(test_pop_blocks_until_push);
    RUN(test_pop_does_not_wait_when_queued);
    RUN(test_stop_wakes_waiters);
    RUN(test_many_producers);
    RUN(test_new_and_fault_injection);
    RUN(test_classes_in_order);
    RUN(test_batch_never_starves);
    RUN(test_owner_order_and_urgent);
    RUN(test_urgent_respects_ok_fn);
    RUN(test_latency_percentiles);
    RUN(test_batch_share);
    RUN(test_remove_owner_and_load);
    RUN(test_lanes);
    RUN(test_lane_share);
    return djn_test_report();
}
