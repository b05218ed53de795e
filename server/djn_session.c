/* djn_session.c: session table and per-session handle tables (see djn_session.h).
 *
 * Leases. A session is reclaimed (djn_sessions_expire, every 250 ms on the transport
 * thread) when both hold:
 *   1. it has been silent for lease_ms, counted from the later of the last message heard
 *      from it (any message naming it renews) and the moment a queued message of it last
 *      finished (queue_leave): a client that waited minutes for a reply is not charged
 *      for them, and gets a whole lease to send its next message;
 *   2. it has nothing queued or running, or the connection it was last heard on is gone
 *      (ZeroMQ reported it closed: the process died, or ZMTP heartbeats timed out).
 * So a session whose messages wait behind a long batch job keeps its lease however long
 * the wait (the server made it wait), whether or not its client sends heartbeats
 * meanwhile; a client that dies while its messages wait is reclaimed one lease after it
 * was last heard, its queued messages dropped unrun (the server does that: it owns the
 * queues) and a fragment of it that is running stopped at its next node.
 * Rejected: renewing the lease when a queued message starts or ends only (a session
 * queued behind a job longer than the lease would still expire while it waits); never
 * expiring a session with queued work (a dead client's work would run, and hold its
 * memory, however long the queue); dropping a session the moment its connection closes
 * (a network blip reconnects with the same routing id, and the session must survive it). */
#include "djn_session.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include <xxhash.h>

#include "djn_map.h"
#include "djn_mem.h"

#define S_MAX_DEVICES 64

typedef struct {
    djn_stor_t *stor; /* NULL: declared, not materialised */
    uint64_t nbytes;
    bool text;      /* stor is shared content from the Text segment (read-only) */
    bool poisoned;  /* an op that should have produced it failed: reading it is an error */
    bool transient; /* stor lives in the stack slab: not charged to the session */
    djn_text_key_t tkey;
} s_entry_t;

struct djn_session {
    uint64_t sid;
    djn_peer_t peer; /* the tenant and connection that opened it: only they may use it */
    _Atomic int refs;
    _Atomic uint64_t cache_bytes; /* plan-cache bytes charged to this session */
    _Atomic uint64_t reply_bytes; /* fetched bytes allocated and not yet sent */
    djn_session_t *reap_next;
    pthread_mutex_t mu;
    djn_map_t handles; /* handle -> s_entry_t* */
    uint64_t bytes;    /* bytes of materialised storages */
    uint64_t peak;     /* high-water mark of bytes */
    uint64_t next_dyn;
    int64_t last_seen_ms;
    uint64_t evicted; /* transport thread only: seq of a fragment answered E_EVICTED */
    void *gens[S_MAX_DEVICES];
    djn_sessions_t *owner;
    _Atomic uint32_t queued;
    _Atomic uint64_t queued_bytes; /* data frames of the queued messages */
    _Atomic bool closed;           /* left the table: nothing more may be filed for it */
    _Atomic bool expired;          /* left it by its lease: queued work is dropped */
    _Atomic int64_t idle_since_ms; /* when a queued message of it last finished */
    _Atomic uint64_t devices;      /* bit d: it uses device d (djn_session_use_device) */
    int conn_fd;                   /* the socket it was last heard on (-1: unknown); t->mu */
    bool conn_lost;                /* that connection is gone; t->mu */
    uint64_t peer_key;             /* s_peer_key(peer) */
    char last_failure[256];        /* why poisoned handles were never computed */
    djn_chunked_t ups[DJN_MAX_OPEN_UPLOADS]; /* uploads arriving in chunks, nups open */
    uint32_t nups;
};

struct djn_sessions {
    pthread_mutex_t mu;
    djn_map_t by_id; /* sid -> djn_session_t* */
    uint64_t lease_ms;
    /* the reaper: sessions whose last reference went away are freed on this thread, so
     * that releasing gigabytes never stalls the transport thread */
    pthread_t reaper;
    bool reaper_on, reaper_stop;
    pthread_cond_t reap_cv;
    djn_session_t *reap_head;
    uint64_t opened, closed, expired, refused;
    djn_sessions_limits_t lim;
    uint64_t quota_bytes; /* lim.quota_bytes */
    uint32_t max_queued;  /* lim.max_queued */
    djn_map_t per_peer;   /* s_peer_key -> open sessions of that connection */
    djn_text_t *text;
    _Atomic uint64_t handles, bytes; /* over all sessions */
};

djn_sessions_t *djn_sessions_new(const djn_sessions_limits_t *limits, djn_text_t *text) {
    djn_sessions_t *t = djn_calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->reap_cv, NULL);
    t->lim = *limits;
    t->lease_ms = limits->lease_ms;
    t->quota_bytes = limits->quota_bytes;
    t->max_queued = limits->max_queued;
    t->text = text;
    return t;
}

/* A connection's key in per_peer: a hash of tenant and routing id (a collision only
 * makes two connections share one count). */
static uint64_t s_peer_key(const djn_peer_t *p) {
    uint8_t buf[sizeof p->tenant + 1 + sizeof p->rid];
    size_t n = strnlen(p->tenant, sizeof p->tenant);
    memcpy(buf, p->tenant, n);
    buf[n++] = 0;
    memcpy(buf + n, p->rid, p->rid_len);
    uint64_t k = XXH3_64bits(buf, n + p->rid_len);
    return k ? k : 1;
}

/* A session left the table (under t->mu): it stops counting against its connection. */
static void s_left(djn_sessions_t *t, djn_session_t *s) {
    uint64_t n;
    atomic_store(&s->closed, true);
    if (djn_map_get(&t->per_peer, s->peer_key, &n)) {
        if (n > 1)
            djn_map_put(&t->per_peer, s->peer_key, n - 1);
        else
            djn_map_del(&t->per_peer, s->peer_key, NULL);
    }
}

static void s_session_free(djn_session_t *s) {
    uint64_t k, v;
    for (uint32_t it = 0; djn_map_next(&s->handles, &it, &k, &v);) {
        s_entry_t *e = (s_entry_t *)(uintptr_t)v;
        if (e->stor) {
            if (e->text)
                djn_text_release(s->owner->text, &e->tkey);
            else if (!e->transient)
                atomic_fetch_sub(&s->owner->bytes, e->nbytes);
            djn_stor_release(e->stor);
        }
        atomic_fetch_sub(&s->owner->handles, 1);
        djn_free(e, sizeof(*e));
    }
    djn_map_release(&s->handles);
    for (uint32_t i = 0; i < s->nups; i++) { /* a client that died mid-upload */
        atomic_fetch_sub(&s->owner->bytes, s->ups[i].total);
        djn_stor_release(s->ups[i].stor);
        djn_text_hasher_destroy(&s->ups[i].hasher);
    }
    for (int i = 0; i < S_MAX_DEVICES; i++)
        if (s->gens[i])
            djn_exec_gen_release(s->gens[i]);
    pthread_mutex_destroy(&s->mu);
    djn_free(s, sizeof(*s));
}

static void *s_reaper_main(void *arg) {
    djn_sessions_t *t = arg;
    pthread_mutex_lock(&t->mu);
    for (;;) {
        while (!t->reap_head && !t->reaper_stop)
            pthread_cond_wait(&t->reap_cv, &t->mu);
        djn_session_t *s = t->reap_head;
        if (!s)
            break; /* stopping, nothing left */
        t->reap_head = s->reap_next;
        pthread_mutex_unlock(&t->mu);
        s_session_free(s);
        pthread_mutex_lock(&t->mu);
    }
    pthread_mutex_unlock(&t->mu);
    return NULL;
}

bool djn_sessions_start_reaper(djn_sessions_t *t) {
    if (pthread_create(&t->reaper, NULL, s_reaper_main, t) != 0)
        return false;
    t->reaper_on = true;
    return true;
}

djn_session_t *djn_session_retain(djn_session_t *s) {
    atomic_fetch_add(&s->refs, 1);
    return s;
}

void djn_session_release(djn_session_t **s_p) {
    if (!s_p || !*s_p)
        return;
    djn_session_t *s = *s_p;
    *s_p = NULL;
    if (atomic_fetch_sub(&s->refs, 1) != 1)
        return;
    djn_sessions_t *t = s->owner;
    pthread_mutex_lock(&t->mu);
    if (t->reaper_on && !t->reaper_stop) {
        s->reap_next = t->reap_head;
        t->reap_head = s;
        pthread_cond_signal(&t->reap_cv);
        s = NULL;
    }
    pthread_mutex_unlock(&t->mu);
    if (s)
        s_session_free(s);
}

void djn_sessions_destroy(djn_sessions_t **self_p) {
    if (!self_p || !*self_p)
        return;
    djn_sessions_t *t = *self_p;
    uint64_t k, v;
    pthread_mutex_lock(&t->mu);
    djn_map_t all = t->by_id;
    memset(&t->by_id, 0, sizeof t->by_id);
    djn_map_release(&t->per_peer);
    pthread_mutex_unlock(&t->mu);
    for (uint32_t it = 0; djn_map_next(&all, &it, &k, &v);) {
        djn_session_t *s = (djn_session_t *)(uintptr_t)v;
        djn_session_release(&s);
    }
    djn_map_release(&all);
    if (t->reaper_on) { /* frees what is queued, then stops */
        pthread_mutex_lock(&t->mu);
        t->reaper_stop = true;
        pthread_cond_signal(&t->reap_cv);
        pthread_mutex_unlock(&t->mu);
        pthread_join(t->reaper, NULL);
    }
    pthread_cond_destroy(&t->reap_cv);
    pthread_mutex_destroy(&t->mu);
    djn_free(t, sizeof(*t));
    *self_p = NULL;
}

static bool s_same_peer(const djn_peer_t *a, const djn_peer_t *b) {
    return strcmp(a->tenant, b->tenant) == 0 && a->rid_len == b->rid_len &&
           memcmp(a->rid, b->rid, a->rid_len) == 0;
}

/* A random non-zero id: session ids must not be guessable (and a restarted server must
 * not hand out an id a client of the previous process still holds). */
static uint64_t s_random_sid(void) {
    uint64_t v = 0;
    while (v == 0) {
        ssize_t n = getrandom(&v, sizeof v, 0);
        if (n != (ssize_t)sizeof v && errno != EINTR)
            v = ((uint64_t)time(NULL) << 32) ^ (uint64_t)(uintptr_t)&v ^ (uint64_t)clock();
    }
    return v;
}

djn_session_t *djn_sessions_open(djn_sessions_t *t, int64_t now_ms, const djn_peer_t *peer,
                                 djn_status_t *st, char *err, size_t errlen) {
    *st = DJN_ERR_NOMEM;
    snprintf(err, errlen, "out of host memory opening a session");
    djn_session_t *s = djn_calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    pthread_mutex_init(&s->mu, NULL);
    s->refs = 2; /* the table's and the caller's */
    s->last_seen_ms = now_ms;
    s->conn_fd = peer->fd;
    s->owner = t;
    s->peer = *peer;
    s->peer_key = s_peer_key(peer);
    pthread_mutex_lock(&t->mu);
    uint64_t mine = 0;
    djn_map_get(&t->per_peer, s->peer_key, &mine);
    bool full = t->lim.max_sessions && t->by_id.len >= t->lim.max_sessions;
    if (full || (t->lim.max_per_peer && mine >= t->lim.max_per_peer)) {
        t->refused++;
        pthread_mutex_unlock(&t->mu);
        *st = DJN_ERR_LIMIT;
        if (full)
            snprintf(err, errlen,
                     "the server holds %u sessions, its limit (--max-sessions): close one or "
                     "wait for a lease to run out",
                     t->lim.max_sessions);
        else
            snprintf(err, errlen,
                     "this connection holds %" PRIu64
                     " sessions, the limit per connection (--max-sessions-per-connection)",
                     mine);
        pthread_mutex_destroy(&s->mu);
        djn_free(s, sizeof(*s));
        return NULL;
    }
    do
        s->sid = s_random_sid();
    while (djn_map_get(&t->by_id, s->sid, NULL));
    /* server-issued handles carry 20 bits of the session id: a client can tell a handle
     * of a session it lost from one of its current session */
    s->next_dyn = djn_handle_server_base(s->sid);
    if (!djn_map_put(&t->by_id, s->sid, (uint64_t)(uintptr_t)s) ||
        !djn_map_put(&t->per_peer, s->peer_key, mine + 1)) {
        djn_map_del(&t->by_id, s->sid, NULL);
        pthread_mutex_unlock(&t->mu);
        pthread_mutex_destroy(&s->mu);
        djn_free(s, sizeof(*s));
        return NULL;
    }
    t->opened++;
    pthread_mutex_unlock(&t->mu);
    *st = DJN_OK;
    err[0] = 0;
    return s;
}

djn_session_t *djn_sessions_get(djn_sessions_t *t, uint64_t sid, int64_t now_ms,
                                const djn_peer_t *peer) {
    uint64_t v;
    djn_session_t *s = NULL;
    pthread_mutex_lock(&t->mu);
    if (djn_map_get(&t->by_id, sid, &v)) {
        s = (djn_session_t *)(uintptr_t)v;
        if (!s_same_peer(&s->peer, peer)) {
            s = NULL; /* another tenant's or connection's: as if it did not exist */
        } else {
            atomic_fetch_add(&s->refs, 1);
            s->last_seen_ms = now_ms;
            s->conn_fd = peer->fd; /* heard on it now: it is up (a reconnect may change it) */
            s->conn_lost = false;
        }
    }
    pthread_mutex_unlock(&t->mu);
    return s;
}

bool djn_sessions_close(djn_sessions_t *t, uint64_t sid, const djn_peer_t *peer) {
    uint64_t v;
    pthread_mutex_lock(&t->mu);
    bool found = djn_map_get(&t->by_id, sid, &v) &&
                 s_same_peer(&((djn_session_t *)(uintptr_t)v)->peer, peer) &&
                 djn_map_del(&t->by_id, sid, &v);
    if (found) {
        t->closed++;
        s_left(t, (djn_session_t *)(uintptr_t)v);
    }
    pthread_mutex_unlock(&t->mu);
    if (found) {
        djn_session_t *s = (djn_session_t *)(uintptr_t)v;
        djn_session_release(&s);
    }
    return found;
}

/* Rule 2 of "Leases": may its lease run now? (t->mu held) */
static bool s_lease_runs(const djn_session_t *s) {
    return atomic_load(&s->queued) == 0 || s->conn_lost;
}

uint32_t djn_sessions_expire(djn_sessions_t *t, int64_t now_ms, uint64_t *gone, uint32_t cap) {
    if (!t->lease_ms || !cap)
        return 0;
    uint32_t n = 0;
    uint64_t k, v;
    /* one pass collects the victims (the map must not change while iterating), a second
     * takes them out: O(open sessions) per call, whatever expires */
    pthread_mutex_lock(&t->mu);
    for (uint32_t it = 0; n < cap && djn_map_next(&t->by_id, &it, &k, &v);) {
        djn_session_t *s = (djn_session_t *)(uintptr_t)v;
        bool runs = s_lease_runs(s); /* the count first: see djn_session_queue_leave */
        int64_t idle = atomic_load(&s->idle_since_ms);
        int64_t from = s->last_seen_ms > idle ? s->last_seen_ms : idle; /* rule 1 */
        if (runs && now_ms - from > (int64_t)t->lease_ms)
            gone[n++] = k;
    }
    djn_session_t *victims = NULL;
    for (uint32_t i = 0; i < n; i++) {
        djn_map_del(&t->by_id, gone[i], &v);
        djn_session_t *s = (djn_session_t *)(uintptr_t)v;
        atomic_store(&s->expired, true); /* before s_left: whoever sees closed sees why */
        s_left(t, s);
        s->reap_next = victims; /* free to reuse: not queued for the reaper while referenced */
        victims = s;
        t->expired++;
    }
    pthread_mutex_unlock(&t->mu);
    while (victims) {
        djn_session_t *s = victims;
        victims = s->reap_next;
        s->reap_next = NULL;
        djn_session_release(&s);
    }
    return n;
}

uint32_t djn_sessions_conn_lost(djn_sessions_t *t, int fd) {
    if (fd < 0)
        return 0;
    uint32_t n = 0;
    uint64_t k, v;
    pthread_mutex_lock(&t->mu);
    for (uint32_t it = 0; djn_map_next(&t->by_id, &it, &k, &v);) {
        djn_session_t *s = (djn_session_t *)(uintptr_t)v;
        if (s->conn_fd == fd && !s->conn_lost) {
            s->conn_lost = true;
            n++;
        }
    }
    pthread_mutex_unlock(&t->mu);
    return n;
}

void djn_sessions_per_device(djn_sessions_t *t, uint64_t except, uint32_t ndev, uint32_t *counts) {
    uint64_t k, v;
    memset(counts, 0, ndev * sizeof *counts);
    pthread_mutex_lock(&t->mu);
    for (uint32_t it = 0; djn_map_next(&t->by_id, &it, &k, &v);) {
        if (k == except)
            continue;
        uint64_t m = atomic_load(&((djn_session_t *)(uintptr_t)v)->devices);
        for (uint32_t d = 0; d < ndev && d < 64; d++)
            counts[d] += (uint32_t)((m >> d) & 1);
    }
    pthread_mutex_unlock(&t->mu);
}

void djn_sessions_stats(djn_sessions_t *t, djn_sessions_stats_t *out) {
    pthread_mutex_lock(&t->mu);
    out->open = t->by_id.len;
    out->opened_total = t->opened;
    out->closed_total = t->closed;
    out->expired_total = t->expired;
    out->refused_total = t->refused;
    pthread_mutex_unlock(&t->mu);
    out->handles = atomic_load(&t->handles);
    out->bytes = atomic_load(&t->bytes);
}

uint64_t djn_sessions_lease_ms(const djn_sessions_t *t) {
    return t->lease_ms;
}

uint64_t djn_session_id(const djn_session_t *s) {
    return s->sid;
}
bool djn_session_live(const djn_session_t *s) {
    return !atomic_load(&s->closed);
}
bool djn_session_expired(const djn_session_t *s) {
    return atomic_load_explicit(&s->expired, memory_order_relaxed);
}
uint64_t djn_session_evicted(const djn_session_t *s) {
    return s->evicted;
}
void djn_session_set_evicted(djn_session_t *s, uint64_t seq) {
    s->evicted = seq;
}
void djn_session_use_device(djn_session_t *s, uint32_t dev) {
    if (dev < 64 && !(atomic_load_explicit(&s->devices, memory_order_relaxed) & (1ull << dev)))
        atomic_fetch_or(&s->devices, 1ull << dev);
}
void djn_session_lock(djn_session_t *s) {
    pthread_mutex_lock(&s->mu);
}
void djn_session_unlock(djn_session_t *s) {
    pthread_mutex_unlock(&s->mu);
}

static s_entry_t *s_entry(djn_session_t *s, uint64_t handle) {
    uint64_t v;
    return djn_map_get(&s->handles, handle, &v) ? (s_entry_t *)(uintptr_t)v : NULL;
}

static void s_set_stor(djn_session_t *s, s_entry_t *e, djn_stor_t *stor) {
    if (e->stor) {
        if (e->text) {
            djn_text_release(s->owner->text, &e->tkey);
            s->bytes -= e->nbytes;
            e->text = false;
        } else if (!e->transient) {
            atomic_fetch_sub(&s->owner->bytes, e->nbytes);
            s->bytes -= e->nbytes;
        }
        djn_stor_release(e->stor);
    }
    e->stor = stor;
    e->poisoned = false;
    e->transient = stor && djn_stor_in_slab(stor);
    if (stor) {
        e->nbytes = djn_stor_nbytes(stor);
        if (!e->transient) { /* activations in the slab are bounded by the slab, not quotas */
            atomic_fetch_add(&s->owner->bytes, e->nbytes);
            s->bytes += e->nbytes;
            if (s->bytes > s->peak)
                s->peak = s->bytes;
        }
    }
}

static djn_status_t s_quota(djn_session_t *s, uint64_t more, char *err, size_t errlen) {
    uint64_t q = s->owner->quota_bytes,
             held = s->bytes + atomic_load(&s->cache_bytes) + s->handles.len * DJN_HANDLE_COST;
    if (q && held + more > q) {
        if (err)
            snprintf(err, errlen,
                     "session quota exceeded: the session holds %" PRIu64 " bytes, needs %" PRIu64
                     " more, its quota is %" PRIu64 " bytes (--session-quota-bytes)",
                     held, more, q);
        return DJN_ERR_QUOTA;
    }
    return DJN_OK;
}

djn_status_t djn_session_declare(djn_session_t *s, uint64_t handle, uint64_t nbytes) {
    if (!handle)
        return DJN_ERR_HANDLE;
    s_entry_t *e = s_entry(s, handle);
    if (e) /* a handle is declared once; re-declaring is a client bug, not fatal */
        return e->text ? DJN_OK : DJN_ERR_HANDLE; /* HAVE may have bound it already */
    if (s->owner->lim.max_handles && s->handles.len >= s->owner->lim.max_handles)
        return DJN_ERR_LIMIT;
    if (s_quota(s, DJN_HANDLE_COST, NULL, 0) != DJN_OK)
        return DJN_ERR_QUOTA;
    e = djn_calloc(1, sizeof(*e));
    if (!e)
        return DJN_ERR_NOMEM;
    e->nbytes = nbytes;
    if (!djn_map_put(&s->handles, handle, (uint64_t)(uintptr_t)e)) {
        djn_free(e, sizeof(*e));
        return DJN_ERR_NOMEM;
    }
    atomic_fetch_add(&s->owner->handles, 1);
    return DJN_OK;
}

djn_status_t djn_session_bind(djn_session_t *s, uint64_t handle, djn_stor_t *stor) {
    /* a storage of the shared Text segment stays shared, whatever path led to it (an
     * alias, a view a kernel returned): writes to it copy first */
    djn_text_key_t key;
    djn_stor_t *shared = djn_text_acquire_storage(s->owner->text, stor, &key);
    if (shared) {
        djn_status_t st = djn_session_bind_text(s, handle, &key, shared);
        if (st != DJN_OK)
            djn_text_release(s->owner->text, &key);
        return st;
    }
    s_entry_t *e = s_entry(s, handle);
    uint64_t have = e && e->stor && !e->text && !e->transient ? e->nbytes : 0,
             need = djn_stor_nbytes(stor);
    if (!djn_stor_in_slab(stor) && need > have && s_quota(s, need - have, NULL, 0) != DJN_OK)
        return DJN_ERR_QUOTA;
    if (!e) {
        djn_status_t st = djn_session_declare(s, handle, djn_stor_nbytes(stor));
        if (st != DJN_OK)
            return st;
        e = s_entry(s, handle);
    }
    djn_stor_t *r = djn_stor_retain(stor);
    if (!r)
        return DJN_ERR_NOMEM;
    s_set_stor(s, e, r);
    return DJN_OK;
}

djn_status_t djn_session_bind_text(djn_session_t *s, uint64_t handle, const djn_text_key_t *k,
                                   djn_stor_t *shared) {
    s_entry_t *e = s_entry(s, handle);
    uint64_t n = djn_stor_nbytes(shared);
    /* a session is charged for the shared content it pins, like for its own */
    if (s_quota(s, n, NULL, 0) != DJN_OK)
        return DJN_ERR_QUOTA;
    if (e && e->stor) /* new content for a handle that held some: replace it */
        s_set_stor(s, e, NULL);
    if (!e) {
        djn_status_t st = djn_session_declare(s, handle, djn_stor_nbytes(shared));
        if (st != DJN_OK)
            return st;
        e = s_entry(s, handle);
    }
    djn_stor_t *r = djn_stor_retain(shared);
    if (!r)
        return DJN_ERR_NOMEM;
    e->stor = r;
    e->nbytes = n;
    e->text = true;
    e->tkey = *k;
    e->poisoned = false;
    s->bytes += n;
    if (s->bytes > s->peak)
        s->peak = s->bytes;
    return DJN_OK;
}

djn_status_t djn_session_queue_enter(djn_session_t *s, uint64_t frame_bytes, char *err,
                                     size_t errlen) {
    uint32_t max = s->owner->max_queued;
    uint32_t n = atomic_fetch_add(&s->queued, 1) + 1;
    if (max && n > max) {
        atomic_fetch_sub(&s->queued, 1);
        snprintf(err, errlen,
                 "session quota exceeded: more than %u fragments queued (--session-max-queued)",
                 max);
        return DJN_ERR_QUOTA;
    }
    uint64_t q = s->owner->quota_bytes, cur = atomic_load(&s->queued_bytes);
    do {
        if (q && (frame_bytes > q || cur > q - frame_bytes)) {
            atomic_fetch_sub(&s->queued, 1);
            snprintf(err, errlen,
                     "session quota exceeded: %" PRIu64 " bytes of uploads queued and %" PRIu64
                     " more would pass the quota of %" PRIu64 " bytes (--session-quota-bytes)",
                     cur, frame_bytes, q);
            return DJN_ERR_QUOTA;
        }
    } while (!atomic_compare_exchange_weak(&s->queued_bytes, &cur, cur + frame_bytes));
    return DJN_OK;
}

void djn_session_queue_leave(djn_session_t *s, uint64_t frame_bytes, int64_t now_ms) {
    atomic_fetch_sub(&s->queued_bytes, frame_bytes);
    /* the restart point is written before the count drops: the expiry pass, which reads
     * the count first, never sees "nothing queued" with an old restart point */
    int64_t prev = atomic_load(&s->idle_since_ms);
    while (prev < now_ms && !atomic_compare_exchange_weak(&s->idle_since_ms, &prev, now_ms)) {
    }
    atomic_fetch_sub(&s->queued, 1);
}

uint64_t djn_session_bytes(const djn_session_t *s) {
    return s->bytes;
}
uint64_t djn_session_peak(const djn_session_t *s) {
    return s->peak;
}

void djn_session_free(djn_session_t *s, uint64_t handle) {
    uint64_t v;
    if (!djn_map_del(&s->handles, handle, &v))
        return; /* unknown frees are harmless: a handle freed before it was ever used */
    s_entry_t *e = (s_entry_t *)(uintptr_t)v;
    s_set_stor(s, e, NULL);
    atomic_fetch_sub(&s->owner->handles, 1);
    djn_free(e, sizeof(*e));
}

djn_status_t djn_session_resolve(djn_session_t *s, djn_exec_t *x, uint64_t handle, int write,
                                 uint64_t slab_off, djn_stor_t **out, char *err, size_t errlen) {
    *out = NULL;
    s_entry_t *e = s_entry(s, handle);
    if (!e) {
        snprintf(err, errlen, "unknown handle 0x%" PRIx64 " (not owned by this session)", handle);
        return DJN_ERR_HANDLE;
    }
    if (e->poisoned) {
        snprintf(err, errlen, "this tensor was never computed because an earlier op failed: %s",
                 s->last_failure[0] ? s->last_failure : "see the earlier error");
        return DJN_ERR_OP;
    }
    if (!e->stor || (write && e->text)) {
        bool planned = !e->stor && slab_off != UINT64_MAX;
        djn_status_t st;
        if (!planned && (st = s_quota(s, e->nbytes, err, errlen)) != DJN_OK)
            return st;
        djn_stor_t *stor = NULL;
        if ((st = djn_exec_alloc(x, e->nbytes, planned ? slab_off : UINT64_MAX, &stor, err,
                                 errlen)) != DJN_OK)
            return st;
        /* copy-on-write: a write to shared Text content goes to a private copy; fresh
         * memory starts as zeros, never as what another session left there */
        if (e->stor)
            st = djn_exec_copy(x, stor, e->stor, e->nbytes, err, errlen);
        else
            st = djn_exec_zero(x, stor, err, errlen);
        if (st != DJN_OK) {
            djn_stor_release(stor);
            return st;
        }
        s_set_stor(s, e, stor);
    }
    *out = e->stor;
    return DJN_OK;
}

bool djn_session_is_lazy(djn_session_t *s, uint64_t handle) {
    s_entry_t *e = s_entry(s, handle);
    return e && !e->stor;
}

djn_status_t djn_session_new_handle(djn_session_t *s, uint64_t nbytes, uint64_t *out) {
    uint64_t span = (nbytes + 511) & ~255ull;
    if (s->next_dyn + span < s->next_dyn)
        return DJN_ERR_LIMIT;
    *out = s->next_dyn;
    s->next_dyn += span;
    return DJN_OK;
}

void **djn_session_gen_slot(djn_session_t *s, uint32_t device) {
    return &s->gens[device < S_MAX_DEVICES ? device : 0];
}

uint64_t djn_session_quota(const djn_session_t *s) {
    return s->owner->quota_bytes;
}

void djn_session_poison(djn_session_t *s, uint64_t handle, const char *why, bool force) {
    s_entry_t *e = s_entry(s, handle);
    if (!e || (e->stor && !force))
        return; /* only outputs that never got a value, unless the op failed half-way */
    if (e->stor)
        s_set_stor(s, e, NULL);
    e->poisoned = true;
    if (why)
        snprintf(s->last_failure, sizeof s->last_failure, "%s", why);
}

djn_status_t djn_session_copy_out(djn_session_t *s, djn_exec_t *x, uint64_t handle, uint64_t *bytes,
                                  char *err, size_t errlen) {
    s_entry_t *e = s_entry(s, handle);
    if (!e || !e->stor || e->text || !djn_exec_in_slab(x, e->stor))
        return DJN_OK;
    djn_stor_t *d = NULL;
    char why[160] = {0};
    djn_status_t st = s_quota(s, e->nbytes, why, sizeof why);
    if (st == DJN_OK &&
        (st = djn_exec_alloc(x, e->nbytes, UINT64_MAX, &d, why, sizeof why)) == DJN_OK)
        st = djn_exec_copy(x, d, e->stor, e->nbytes, why, sizeof why);
    if (st != DJN_OK) { /* the slab is about to be reused: never leave the handle naming it */
        if (d)
            djn_stor_release(d);
        s_set_stor(s, e, NULL);
        e->poisoned = true;
        snprintf(s->last_failure, sizeof s->last_failure,
                 "keeping a result of %" PRIu64 " bytes failed: %s", e->nbytes, why);
        snprintf(err, errlen, "%s", s->last_failure);
        return st;
    }
    *bytes += e->nbytes;
    s_set_stor(s, e, d);
    return DJN_OK;
}

const djn_peer_t *djn_session_peer(const djn_session_t *s) {
    return &s->peer;
}

bool djn_session_charge_cache(djn_session_t *s, uint64_t bytes) {
    uint64_t q = s->owner->quota_bytes;
    uint64_t cur = atomic_load(&s->cache_bytes);
    do {
        if (q && s->bytes + cur + bytes > q) /* s->bytes read unlocked: a charge is a bound */
            return false;
    } while (!atomic_compare_exchange_weak(&s->cache_bytes, &cur, cur + bytes));
    return true;
}

djn_status_t djn_session_charge_reply(djn_session_t *s, uint64_t bytes, char *err, size_t errlen) {
    uint64_t q = s->owner->quota_bytes, cur = atomic_load(&s->reply_bytes);
    do {
        if (q && (bytes > q || cur > q - bytes)) {
            snprintf(err, errlen,
                     "fetch of %" PRIu64 " bytes refused: the session has %" PRIu64
                     " fetched bytes not yet sent and may have as many as its quota, %" PRIu64
                     " bytes (--session-quota-bytes)",
                     bytes, cur, q);
            return DJN_ERR_QUOTA;
        }
    } while (!atomic_compare_exchange_weak(&s->reply_bytes, &cur, cur + bytes));
    return DJN_OK;
}

void djn_session_uncharge_reply(djn_session_t *s, uint64_t bytes) {
    atomic_fetch_sub(&s->reply_bytes, bytes);
}

void djn_session_uncharge_cache(djn_session_t *s, uint64_t bytes) {
    atomic_fetch_sub(&s->cache_bytes, bytes);
}

uint64_t djn_session_cache_bytes(const djn_session_t *s) {
    return atomic_load(&s->cache_bytes);
}

djn_status_t djn_session_recheck(djn_session_t *s, uint64_t handle, char *err, size_t errlen) {
    s_entry_t *e = s_entry(s, handle);
    if (!e || !e->stor || e->text)
        return DJN_OK;
    uint64_t now = djn_stor_nbytes(e->stor);
    if (now == e->nbytes)
        return DJN_OK;
    djn_status_t st = DJN_OK;
    if (!e->transient) {
        if (now > e->nbytes)
            st = s_quota(s, now - e->nbytes, err, errlen);
        atomic_fetch_add(&s->owner->bytes, now - e->nbytes); /* wraps back for a shrink */
        s->bytes += now - e->nbytes;
        if (s->bytes > s->peak)
            s->peak = s->bytes;
    }
    e->nbytes = now;
    return st;
}

bool djn_session_shared(djn_session_t *s, uint64_t handle) {
    s_entry_t *e = s_entry(s, handle);
    return e && e->stor && e->text;
}

djn_chunked_t *djn_session_chunked(djn_session_t *s, uint64_t handle) {
    for (uint32_t i = 0; i < s->nups; i++)
        if (s->ups[i].handle == handle)
            return &s->ups[i];
    return NULL;
}

djn_status_t djn_session_chunked_open(djn_session_t *s, const djn_chunked_t *c, char *err,
                                      size_t errlen) {
    if (s->nups == DJN_MAX_OPEN_UPLOADS) {
        snprintf(err, errlen,
                 "upload to handle 0x%" PRIx64 " refused: %u uploads are arriving in chunks "
                 "already, the most one session may have open",
                 c->handle, DJN_MAX_OPEN_UPLOADS);
        return DJN_ERR_ARGS;
    }
    if (s_quota(s, c->total, NULL, 0) != DJN_OK) {
        snprintf(err, errlen,
                 "session quota exceeded by an upload of %" PRIu64 " bytes (--session-quota-bytes)",
                 c->total);
        return DJN_ERR_QUOTA;
    }
    s->ups[s->nups++] = *c;
    s->bytes += c->total;
    if (s->bytes > s->peak)
        s->peak = s->bytes;
    atomic_fetch_add(&s->owner->bytes, c->total);
    return DJN_OK;
}

bool djn_session_chunked_take(djn_session_t *s, uint64_t handle, djn_chunked_t *out) {
    djn_chunked_t *c = djn_session_chunked(s, handle);
    if (!c)
        return false;
    *out = *c;
    *c = s->ups[--s->nups];
    s->bytes -= out->total;
    atomic_fetch_sub(&s->owner->bytes, out->total);
    return true;
}

bool djn_session_lazy_size(djn_session_t *s, uint64_t handle, uint64_t *nbytes) {
    s_entry_t *e = s_entry(s, handle);
    if (!e || e->stor || e->poisoned)
        return false;
    *nbytes = e->nbytes;
    return true;
}

bool djn_session_trylock(djn_session_t *s) {
    return pthread_mutex_trylock(&s->mu) == 0;
}
