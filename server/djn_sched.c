/* djn_sched.c: one FIFO per device under one mutex, a condition variable per device.
 * The lock is held for a few pointer moves; a worker waits on its own condition. */
#include "djn_sched.h"

#include <pthread.h>
#include <time.h>

#include "djn_mem.h"

typedef struct {
    djn_sched_item_t *head, *tail;
    uint32_t depth;
    bool running, claimed;
    pthread_cond_t cv;
} s_queue_t;

struct djn_sched {
    pthread_mutex_t mu;
    bool stop;
    uint32_t n;
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
    pthread_mutex_init(&s->mu, NULL);
    for (uint32_t i = 0; i < ndevices; i++)
        pthread_cond_init(&s->q[i].cv, NULL);
    return s;
}

void djn_sched_destroy(djn_sched_t **self_p) {
    if (!self_p || !*self_p)
        return;
    djn_sched_t *s = *self_p;
    for (uint32_t i = 0; i < s->n; i++)
        pthread_cond_destroy(&s->q[i].cv);
    pthread_mutex_destroy(&s->mu);
    djn_free(s->q, (s->n ? s->n : 1) * sizeof(s_queue_t));
    djn_free(s, sizeof(*s));
    *self_p = NULL;
}

void djn_sched_push(djn_sched_t *s, uint32_t dev, djn_sched_item_t *it) {
    it->next = NULL;
    it->enq_ns = s_now_ns();
    pthread_mutex_lock(&s->mu);
    s_queue_t *q = &s->q[dev];
    if (q->tail)
        q->tail->next = it;
    else
        q->head = it;
    q->tail = it;
    q->depth++;
    pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&s->mu);
}

static djn_sched_item_t *s_take(s_queue_t *q) {
    djn_sched_item_t *it = q->head;
    if (it) {
        q->head = it->next;
        if (!q->head)
            q->tail = NULL;
        q->depth--;
        it->next = NULL;
    }
    return it;
}

djn_sched_item_t *djn_sched_pop(djn_sched_t *s, uint32_t dev) {
    pthread_mutex_lock(&s->mu);
    s_queue_t *q = &s->q[dev];
    while ((!q->head || q->claimed) && !s->stop)
        pthread_cond_wait(&q->cv, &s->mu);
    djn_sched_item_t *it = s->stop ? NULL : s_take(q);
    q->running = it != NULL;
    pthread_mutex_unlock(&s->mu);
    return it;
}

void djn_sched_done(djn_sched_t *s, uint32_t dev) {
    pthread_mutex_lock(&s->mu);
    s->q[dev].running = false;
    pthread_mutex_unlock(&s->mu);
}

bool djn_sched_try_claim(djn_sched_t *s, uint32_t dev) {
    if (pthread_mutex_trylock(&s->mu) != 0)
        return false;
    s_queue_t *q = &s->q[dev];
    bool ok = !q->head && !q->running && !q->claimed && !s->stop;
    if (ok)
        q->claimed = true;
    pthread_mutex_unlock(&s->mu);
    return ok;
}

void djn_sched_release(djn_sched_t *s, uint32_t dev) {
    pthread_mutex_lock(&s->mu);
    s->q[dev].claimed = false;
    if (s->q[dev].head) /* what was pushed meanwhile may go now */
        pthread_cond_signal(&s->q[dev].cv);
    pthread_mutex_unlock(&s->mu);
}

djn_sched_item_t *djn_sched_take(djn_sched_t *s, uint32_t dev) {
    pthread_mutex_lock(&s->mu);
    djn_sched_item_t *it = s_take(&s->q[dev]);
    pthread_mutex_unlock(&s->mu);
    return it;
}

uint32_t djn_sched_depth(djn_sched_t *s, uint32_t dev) {
    pthread_mutex_lock(&s->mu);
    uint32_t d = s->q[dev].depth;
    pthread_mutex_unlock(&s->mu);
    return d;
}

void djn_sched_stop(djn_sched_t *s) {
    pthread_mutex_lock(&s->mu);
    s->stop = true;
    for (uint32_t i = 0; i < s->n; i++)
        pthread_cond_broadcast(&s->q[i].cv);
    pthread_mutex_unlock(&s->mu);
}
