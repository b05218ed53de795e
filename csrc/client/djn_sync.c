/* djn_sync.c: shadow sync (see djn_sync.h).
 *
 * The thread, in steps, until every item is staged or it is told to stop:
 *   1. take the client's lock (the user's thread holds it across the recording of one
 *      node and across every sync point, so the thread only ever runs between them);
 *   2. stage pending items, in order, until S_BATCH_BYTES or S_BATCH_ITEMS are staged:
 *      read the bytes (pread), hash and stage them (djn_client_stage_upload);
 *   3. flush without waiting: the client offers the hashes first (HAVE) and sends only
 *      what the server lacks; release the lock, so the user's thread gets its turn.
 * An error of the client (a lost session, an unreachable server) stops the sync and is
 * kept in its progress; the items left pending are then staged by djn_sync_need only.
 *
 * Locks, always in this order: the client's, the registry's (s_reg_mu: which syncs
 * exist), a sync's own (s->mu: item states and progress). The registry is what the
 * client's hook searches; a sync leaves it when finished or destroyed, so the hook
 * never sees a freed sync. s_pending counts pending items of all syncs: the hook's
 * fast path is one atomic load. */
#define _GNU_SOURCE
#include "djn_sync.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "djn_client.h"
#include "djn_map.h"
#include "djn_mem.h"

#define S_BATCH_BYTES (32ull << 20)
#define S_BATCH_ITEMS 64u

struct djn_sync {
    djn_client_t *c;
    int device;
    int *fds;
    uint32_t nfiles;
    djn_sync_item_t *items;
    uint8_t *staged; /* per item, under mu */
    uint32_t n, next;
    djn_map_t index; /* handle -> item + 1 (read-only after start) */
    pthread_t th;
    bool started, listed, counted;
    _Atomic bool stop;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    djn_sync_progress_t prog;
    djn_sync_t *next_sync;
};

static pthread_mutex_t s_reg_mu = PTHREAD_MUTEX_INITIALIZER;
static djn_sync_t *s_reg;
static _Atomic uint64_t s_pending;

static void s_unlist(djn_sync_t *s) {
    pthread_mutex_lock(&s_reg_mu);
    for (djn_sync_t **pp = &s_reg; *pp; pp = &(*pp)->next_sync)
        if (*pp == s) {
            *pp = s->next_sync;
            break;
        }
    s->listed = false;
    pthread_mutex_unlock(&s_reg_mu);
}

static void s_set_error(djn_sync_t *s, djn_status_t st, const char *msg) {
    pthread_mutex_lock(&s->mu);
    if (s->prog.st == DJN_OK) {
        s->prog.st = st;
        snprintf(s->prog.msg, sizeof s->prog.msg, "%s", msg);
    }
    pthread_mutex_unlock(&s->mu);
}

/* Step 2 for one item (client lock held). */
static djn_status_t s_stage(djn_sync_t *s, uint32_t i) {
    pthread_mutex_lock(&s->mu);
    bool done = s->staged[i];
    s->staged[i] = 1; /* claimed: nobody else stages it */
    pthread_mutex_unlock(&s->mu);
    if (done)
        return DJN_OK;
    atomic_fetch_sub(&s_pending, 1);
    const djn_sync_item_t *it = &s->items[i];
    uint8_t *buf = djn_malloc(it->bytes ? it->bytes : 1);
    char msg[256];
    if (!buf) {
        snprintf(msg, sizeof msg, "djinn: out of host memory reading %llu bytes to upload",
                 (unsigned long long)it->bytes);
        s_set_error(s, DJN_ERR_NOMEM, msg);
        return DJN_ERR_NOMEM;
    }
    uint64_t got = 0;
    while (got < it->bytes) {
        ssize_t r = pread(s->fds[it->file], buf + got, it->bytes - got, (off_t)(it->offset + got));
        if (r <= 0)
            break;
        got += (uint64_t)r;
    }
    if (got != it->bytes) {
        djn_free(buf, it->bytes ? it->bytes : 1);
        snprintf(msg, sizeof msg, "djinn: shadow sync: short read of a checkpoint file (%s)",
                 strerror(errno));
        s_set_error(s, DJN_ERR_IO, msg);
        return DJN_ERR_IO;
    }
    if (!it->bytes) {
        djn_free(buf, 1);
        buf = NULL;
    }
    djn_status_t st = djn_client_stage_upload(s->c, s->device, it->handle, buf, it->bytes);
    pthread_mutex_lock(&s->mu);
    if (st == DJN_OK) {
        s->prog.items_done++;
        s->prog.bytes_done += it->bytes;
    }
    pthread_mutex_unlock(&s->mu);
    if (st != DJN_OK)
        s_set_error(s, st, djn_client_errmsg());
    return st;
}

static void s_finish(djn_sync_t *s) {
    s_unlist(s);
    pthread_mutex_lock(&s->mu);
    s->prog.finished = true;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static void *s_main(void *arg) {
    djn_sync_t *s = arg;
    djn_status_t st = DJN_OK;
    /* DJINN_SYNC_PAUSE_MS: the thread starts that late (tests: only the hook uploads) */
    const char *pause = getenv("DJINN_SYNC_PAUSE_MS");
    long ms = pause && *pause ? strtol(pause, NULL, 10) : 0;
    if (ms > 0) {
        struct timespec dl;
        clock_gettime(CLOCK_REALTIME, &dl);
        dl.tv_sec += ms / 1000;
        dl.tv_nsec += (ms % 1000) * 1000000L;
        if (dl.tv_nsec >= 1000000000L) {
            dl.tv_sec++;
            dl.tv_nsec -= 1000000000L;
        }
        pthread_mutex_lock(&s->mu);
        while (!atomic_load(&s->stop) && pthread_cond_timedwait(&s->cv, &s->mu, &dl) != ETIMEDOUT) {
        }
        pthread_mutex_unlock(&s->mu);
    }
    while (st == DJN_OK && s->next < s->n && !atomic_load(&s->stop)) {
        djn_client_lock(s->c); /* 1 */
        uint64_t bytes = 0;
        uint32_t k = 0;
        while (st == DJN_OK && s->next < s->n && bytes < S_BATCH_BYTES && k < S_BATCH_ITEMS) {
            bytes += s->items[s->next].bytes;
            k++;
            st = s_stage(s, s->next++); /* 2 */
        }
        if (st == DJN_OK && (st = djn_client_flush(s->c, false)) != DJN_OK) /* 3 */
            s_set_error(s, st, djn_client_errmsg());
        djn_client_unlock(s->c);
    }
    s_finish(s);
    return NULL;
}

djn_sync_t *djn_sync_start(djn_client_t *c, int device, const char *const *files, uint32_t nfiles,
                           const djn_sync_item_t *items, uint32_t n, char *err, size_t errlen) {
    djn_sync_t *s = djn_calloc(1, sizeof(*s));
    if (!s) {
        snprintf(err, errlen, "out of host memory");
        return NULL;
    }
    s->c = c;
    s->device = device;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    s->fds = djn_calloc(nfiles ? nfiles : 1, sizeof(int));
    s->items = djn_malloc((n ? n : 1) * sizeof(djn_sync_item_t));
    s->staged = djn_calloc(n ? n : 1, 1);
    if (!s->fds || !s->items || !s->staged) {
        snprintf(err, errlen, "out of host memory");
        goto fail;
    }
    for (uint32_t f = 0; f < nfiles; f++)
        s->fds[f] = -1;
    s->nfiles = nfiles;
    for (uint32_t f = 0; f < nfiles; f++)
        if ((s->fds[f] = open(files[f], O_RDONLY | O_CLOEXEC)) < 0) {
            snprintf(err, errlen, "cannot read '%s': %s", files[f], strerror(errno));
            goto fail;
        }
    memcpy(s->items, items, n * sizeof(djn_sync_item_t));
    s->n = n;
    s->prog.items = n;
    for (uint32_t i = 0; i < n; i++) {
        struct stat st;
        if (items[i].file >= nfiles || fstat(s->fds[items[i].file], &st) != 0 ||
            items[i].offset > (uint64_t)st.st_size ||
            items[i].bytes > (uint64_t)st.st_size - items[i].offset) {
            snprintf(err, errlen, "shadow sync item %u lies outside its file", i);
            goto fail;
        }
        if (!djn_map_put(&s->index, items[i].handle, i + 1)) {
            snprintf(err, errlen, "out of host memory");
            goto fail;
        }
        s->prog.bytes += items[i].bytes;
    }
    atomic_fetch_add(&s_pending, n);
    s->counted = true;
    pthread_mutex_lock(&s_reg_mu);
    s->next_sync = s_reg;
    s_reg = s;
    s->listed = true;
    pthread_mutex_unlock(&s_reg_mu);
    if (pthread_create(&s->th, NULL, s_main, s) != 0) {
        s_unlist(s);
        snprintf(err, errlen, "cannot start the shadow sync thread");
        goto fail;
    }
    s->started = true;
    return s;
fail:
    djn_sync_destroy(&s);
    return NULL;
}

void djn_sync_progress(djn_sync_t *s, djn_sync_progress_t *out) {
    pthread_mutex_lock(&s->mu);
    *out = s->prog;
    pthread_mutex_unlock(&s->mu);
}

djn_status_t djn_sync_wait(djn_sync_t *s, int timeout_ms) {
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    if (timeout_ms > 0) {
        dl.tv_sec += timeout_ms / 1000;
        dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (dl.tv_nsec >= 1000000000L) {
            dl.tv_sec++;
            dl.tv_nsec -= 1000000000L;
        }
    }
    pthread_mutex_lock(&s->mu);
    while (!s->prog.finished && timeout_ms != 0) {
        if (timeout_ms < 0)
            pthread_cond_wait(&s->cv, &s->mu);
        else if (pthread_cond_timedwait(&s->cv, &s->mu, &dl) == ETIMEDOUT)
            break;
    }
    djn_status_t st = !s->prog.finished ? DJN_ERR_TIMEOUT : s->prog.st;
    pthread_mutex_unlock(&s->mu);
    return st;
}

void djn_sync_destroy(djn_sync_t **self_p) {
    if (!self_p || !*self_p)
        return;
    djn_sync_t *s = *self_p;
    pthread_mutex_lock(&s->mu);
    atomic_store(&s->stop, true);
    pthread_cond_broadcast(&s->cv); /* a paused thread wakes up */
    pthread_mutex_unlock(&s->mu);
    if (s->listed)
        s_unlist(s);
    if (s->started)
        pthread_join(s->th, NULL);
    uint64_t left = 0;
    for (uint32_t i = 0; s->staged && i < s->n; i++)
        left += !s->staged[i];
    if (s->counted) /* counted at start: what was never staged leaves the count */
        atomic_fetch_sub(&s_pending, left);
    for (uint32_t f = 0; s->fds && f < s->nfiles; f++)
        if (s->fds[f] >= 0)
            close(s->fds[f]);
    djn_free(s->fds, (s->nfiles ? s->nfiles : 1) * sizeof(int));
    djn_free(s->items, (s->n ? s->n : 1) * sizeof(djn_sync_item_t));
    djn_free(s->staged, s->n ? s->n : 1);
    djn_map_release(&s->index);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    djn_free(s, sizeof(*s));
    *self_p = NULL;
}

void djn_sync_need(djn_client_t *c, uint64_t handle) {
    if (!atomic_load_explicit(&s_pending, memory_order_relaxed))
        return;
    pthread_mutex_lock(&s_reg_mu);
    for (djn_sync_t *s = s_reg; s; s = s->next_sync) {
        uint64_t i;
        if (s->c != c || !djn_map_get(&s->index, handle, &i))
            continue;
        if (djn_client_rec_device(c) == s->device)
            s_stage(s, (uint32_t)(i - 1));
        break;
    }
    pthread_mutex_unlock(&s_reg_mu);
}
