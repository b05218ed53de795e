/* djn_heartbeat.c: the periodic thread (see djn_heartbeat.h). A condition variable with
 * a monotonic clock makes stop prompt and the period immune to wall-clock jumps. */
#define _GNU_SOURCE
#include "djn_heartbeat.h"

#include <pthread.h>
#include <stdbool.h>
#include <time.h>

#include "djn_mem.h"

struct djn_heartbeat {
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;
    int ms;
    djn_heartbeat_fn fn;
    void *arg;
};

static void *s_main(void *arg) {
    djn_heartbeat_t *hb = arg;
    pthread_mutex_lock(&hb->mu);
    while (!hb->stop) {
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += hb->ms / 1000;
        until.tv_nsec += (long)(hb->ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        while (!hb->stop && pthread_cond_timedwait(&hb->cv, &hb->mu, &until) == 0) {
        }
        if (hb->stop)
            break;
        pthread_mutex_unlock(&hb->mu);
        hb->fn(hb->arg);
        pthread_mutex_lock(&hb->mu);
    }
    pthread_mutex_unlock(&hb->mu);
    return NULL;
}

djn_heartbeat_t *djn_heartbeat_start(int period_ms, djn_heartbeat_fn tick_fn, void *arg) {
    if (period_ms <= 0)
        return NULL;
    djn_heartbeat_t *hb = djn_calloc(1, sizeof(*hb));
    if (!hb)
        return NULL;
    hb->ms = period_ms;
    hb->fn = tick_fn;
    hb->arg = arg;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&hb->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&hb->mu, NULL);
    if (pthread_create(&hb->th, NULL, s_main, hb) != 0) {
        pthread_cond_destroy(&hb->cv);
        pthread_mutex_destroy(&hb->mu);
        djn_free(hb, sizeof(*hb));
        return NULL;
    }
    return hb;
}

void djn_heartbeat_stop(djn_heartbeat_t **hb_p) {
    if (!hb_p || !*hb_p)
        return;
    djn_heartbeat_t *hb = *hb_p;
    pthread_mutex_lock(&hb->mu);
    hb->stop = true;
    pthread_cond_broadcast(&hb->cv);
    pthread_mutex_unlock(&hb->mu);
    pthread_join(hb->th, NULL);
    pthread_cond_destroy(&hb->cv);
    pthread_mutex_destroy(&hb->mu);
    djn_free(hb, sizeof(*hb));
    *hb_p = NULL;
}

void djn_heartbeat_forget(djn_heartbeat_t **hb_p) {
    if (!hb_p || !*hb_p)
        return;
    djn_free(*hb_p, sizeof(djn_heartbeat_t));
    *hb_p = NULL;
}
