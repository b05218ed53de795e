/* djn_session.c: session table and per-session handle tables (see djn_session.h). */
#include "djn_session.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "djn_map.h"
#include "djn_mem.h"

#define S_MAX_DEVICES 64
#define S_DYN_BASE (1ull << 62) /* server-issued handles live above client ones */

typedef struct {
    djn_stor_t *stor; /* NULL: declared, not materialised */
    uint64_t nbytes;
    bool text; /* stor is shared content from the Text segment (read-only) */
    bool poisoned; /* an op that should have produced it failed: reading it is an error */
    bool transient; /* stor lives in the stack slab: not charged to the session */
    djn_text_key_t tkey;
} s_entry_t;

struct djn_session {
    uint64_t sid;
    _Atomic int refs;
    pthread_mutex_t mu;
    djn_map_t handles; /* handle -> s_entry_t* */
    uint64_t bytes;    /* bytes of materialised storages */
    uint64_t peak;     /* high-water mark of bytes */
    uint64_t next_dyn;
    int64_t last_seen_ms;
    void *gens[S_MAX_DEVICES];
    djn_sessions_t *owner;
    _Atomic uint32_t queued;
    char last_failure[256]; /* why poisoned handles were never computed */
};

struct djn_sessions {
    pthread_mutex_t mu;
    djn_map_t by_id; /* sid -> djn_session_t* */
    uint64_t next_sid;
    uint64_t lease_ms;
    uint64_t opened, closed, expired;
    uint64_t quota_bytes; /* per session, 0 = unlimited */
    uint32_t max_queued;  /* fragments waiting per session, 0 = unlimited */
    djn_text_t *text;
    _Atomic uint64_t handles, bytes; /* over all sessions */
};

djn_sessions_t *djn_sessions_new(uint64_t lease_ms, uint64_t quota_bytes, uint32_t max_queued,
                                 djn_text_t *text) {
    djn_sessions_t *t = djn_calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    pthread_mutex_init(&t->mu, NULL);
    t->lease_ms = lease_ms;
    t->quota_bytes = quota_bytes;
    t->max_queued = max_queued;
    t->text = text;
    /* session ids are not guessable counters: a restarted server must not hand out the
     * id a client of the previous process still holds */
    uint64_t seed = (uint64_t)(uintptr_t)t ^ ((uint64_t)time(NULL) << 20);
    t->next_sid = (seed & 0xffffffffull) << 16 | 1;
    return t;
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
    for (int i = 0; i < S_MAX_DEVICES; i++)
        if (s->gens[i])
            djn_exec_gen_release(s->gens[i]);
    pthread_mutex_destroy(&s->mu);
    djn_free(s, sizeof(*s));
}

void djn_session_release(djn_session_t **s_p) {
    if (!s_p || !*s_p)
        return;
    if (atomic_fetch_sub(&(*s_p)->refs, 1) == 1)
        s_session_free(*s_p);
    *s_p = NULL;
}

void djn_sessions_destroy(djn_sessions_t **self_p) {
    if (!self_p || !*self_p)
        return;
    djn_sessions_t *t = *self_p;
    uint64_t k, v;
    for (uint32_t it = 0; djn_map_next(&t->by_id, &it, &k, &v);) {
        djn_session_t *s = (djn_session_t *)(uintptr_t)v;
        djn_session_release(&s);
    }
    djn_map_release(&t->by_id);
    pthread_mutex_destroy(&t->mu);
    djn_free(t, sizeof(*t));
    *self_p = NULL;
}

djn_session_t *djn_sessions_open(djn_sessions_t *t, int64_t now_ms) {
    djn_session_t *s = djn_calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    pthread_mutex_init(&s->mu, NULL);
    s->refs = 2; /* the table's and the caller's */
    s->next_dyn = S_DYN_BASE;
    s->last_seen_ms = now_ms;
    s->owner = t;
    pthread_mutex_lock(&t->mu);
    s->sid = t->next_sid++;
    /* server-issued handles carry 20 bits of the session id: a client can tell a handle
     * of a session it lost from one of its current session */
    s->next_dyn = S_DYN_BASE | ((s->sid & 0xFFFFFull) << 40);
    if (!djn_map_put(&t->by_id, s->sid, (uint64_t)(uintptr_t)s)) {
        pthread_mutex_unlock(&t->mu);
        pthread_mutex_destroy(&s->mu);
        djn_free(s, sizeof(*s));
        return NULL;
    }
    t->opened++;
    pthread_mutex_unlock(&t->mu);
    return s;
}

djn_session_t *djn_sessions_get(djn_sessions_t *t, uint64_t sid, int64_t now_ms) {
    uint64_t v;
    djn_session_t *s = NULL;
    pthread_mutex_lock(&t->mu);
    if (djn_map_get(&t->by_id, sid, &v)) {
        s = (djn_session_t *)(uintptr_t)v;
        atomic_fetch_add(&s->refs, 1);
        s->last_seen_ms = now_ms;
    }
    pthread_mutex_unlock(&t->mu);
    return s;
}

bool djn_sessions_close(djn_sessions_t *t, uint64_t sid) {
    uint64_t v;
    pthread_mutex_lock(&t->mu);
    bool found = djn_map_del(&t->by_id, sid, &v);
    if (found)
        t->closed++;
    pthread_mutex_unlock(&t->mu);
    if (found) {
        djn_session_t *s = (djn_session_t *)(uintptr_t)v;
        djn_session_release(&s);
    }
    return found;
}

uint32_t djn_sessions_expire(djn_sessions_t *t, int64_t now_ms) {
    if (!t->lease_ms)
        return 0;
    uint32_t n = 0;
    for (;;) { /* collect one at a time: the map must not change while iterating */
        uint64_t k, v, victim = 0;
        pthread_mutex_lock(&t->mu);
        for (uint32_t it = 0; djn_map_next(&t->by_id, &it, &k, &v);) {
            djn_session_t *s = (djn_session_t *)(uintptr_t)v;
            if (now_ms - s->last_seen_ms > (int64_t)t->lease_ms) {
                victim = k;
                break;
            }
        }
        if (victim) {
            djn_map_del(&t->by_id, victim, &v);
            t->expired++;
        }
        pthread_mutex_unlock(&t->mu);
        if (!victim)
            return n;
        djn_session_t *s = (djn_session_t *)(uintptr_t)v;
        djn_session_release(&s);
        n++;
    }
}

void djn_sessions_stats(djn_sessions_t *t, djn_sessions_stats_t *out) {
    pthread_mutex_lock(&t->mu);
    out->open = t->by_id.len;
    out->opened_total = t->opened;
    out->closed_total = t->closed;
    out->expired_total = t->expired;
    pthread_mutex_unlock(&t->mu);
    out->handles = atomic_load(&t->handles);
    out->bytes = atomic_load(&t->bytes);
}

uint64_t djn_sessions_lease_ms(const djn_sessions_t *t) { return t->lease_ms; }

uint64_t djn_session_id(const djn_session_t *s) { return s->sid; }
void djn_session_lock(djn_session_t *s) { pthread_mutex_lock(&s->mu); }
void djn_session_unlock(djn_session_t *s) { pthread_mutex_unlock(&s->mu); }

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
    uint64_t q = s->owner->quota_bytes;
    if (q && s->bytes + more > q) {
        if (err)
            snprintf(err, errlen,
                     "session quota exceeded: the session holds %" PRIu64 " bytes, needs %" PRIu64
                     " more, its quota is %" PRIu64 " bytes (--session-quota-bytes)",
                     s->bytes, more, q);
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
    s_entry_t *e = s_entry(s, handle);
    uint64_t have = e && e->stor && !e->text && !e->transient ? e->nbytes : 0, need = djn_stor_nbytes(stor);
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

bool djn_session_queue_enter(djn_session_t *s) {
    uint32_t max = s->owner->max_queued;
    uint32_t n = atomic_fetch_add(&s->queued, 1) + 1;
    if (max && n > max) {
        atomic_fetch_sub(&s->queued, 1);
        return false;
    }
    return true;
}

void djn_session_queue_leave(djn_session_t *s) { atomic_fetch_sub(&s->queued, 1); }

uint64_t djn_session_bytes(const djn_session_t *s) { return s->bytes; }
uint64_t djn_session_peak(const djn_session_t *s) { return s->peak; }

void djn_session_free(djn_session_t *s, uint64_t handle) {
    uint64_t v;
    if (!djn_map_del(&s->handles, handle, &v))
        return; /* unknown frees are harmless: a handle freed before it was ever used */
    s_entry_t *e = (s_entry_t *)(uintptr_t)v;
    s_set_stor(s, e, NULL);
    atomic_fetch_sub(&s->owner->handles, 1);
    djn_free(e, sizeof(*e));
}

static __thread const djn_map_t *t_place; /* planned slab offsets (+1) of this fragment */

djn_stor_t *djn_session_resolve(djn_session_t *s, djn_exec_t *x, uint64_t handle, int write,
                                char *err, size_t errlen) {
    s_entry_t *e = s_entry(s, handle);
    if (!e) {
        snprintf(err, errlen, "unknown handle 0x%" PRIx64 " (not owned by this session)", handle);
        return NULL;
    }
    if (e->poisoned) {
        snprintf(err, errlen, "this tensor was never computed because an earlier op failed: %s",
                 s->last_failure[0] ? s->last_failure : "see the earlier error");
        return NULL;
    }
    if (!e->stor || (write && e->text)) {
        uint64_t off = 0;
        bool planned = !e->stor && t_place && djn_map_get(t_place, handle, &off);
        if (!planned && s_quota(s, e->nbytes, err, errlen) != DJN_OK)
            return NULL;
        djn_stor_t *st = NULL;
        if (djn_exec_alloc(x, e->nbytes, planned ? off - 1 : UINT64_MAX, &st, err, errlen) != DJN_OK)
            return NULL;
        /* copy-on-write: a write to shared Text content goes to a private copy; fresh
         * memory starts as zeros, never as what another session left there */
        if (e->stor && djn_exec_copy(x, st, e->stor, e->nbytes, err, errlen) != DJN_OK) {
            djn_stor_release(st);
            return NULL;
        }
        if (!e->stor)
            djn_exec_zero(x, st);
        s_set_stor(s, e, st);
    }
    return e->stor;
}

typedef struct {
    djn_session_t *s;
    djn_exec_t *x;
} s_envctx_t;

static __thread s_envctx_t t_envctx;

static djn_stor_t *s_resolve_fn(void *ctx, uint64_t handle, int write, char *err, size_t errlen) {
    s_envctx_t *c = ctx;
    return djn_session_resolve(c->s, c->x, handle, write, err, errlen);
}

static int s_is_lazy_fn(void *ctx, uint64_t handle) {
    s_envctx_t *c = ctx;
    s_entry_t *e = s_entry(c->s, handle);
    return e && !e->stor;
}

static djn_status_t s_bind_fn(void *ctx, uint64_t handle, djn_stor_t *stor) {
    s_envctx_t *c = ctx;
    return djn_session_bind(c->s, handle, stor);
}

static uint64_t s_new_handle_fn(void *ctx, uint64_t nbytes) {
    s_envctx_t *c = ctx;
    uint64_t h = c->s->next_dyn;
    c->s->next_dyn += (nbytes + 511) & ~255ull;
    return h;
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

void djn_session_set_placements(const djn_map_t *place) { t_place = place; }

bool djn_session_copy_out(djn_session_t *s, djn_exec_t *x, uint64_t handle, uint64_t *bytes) {
    s_entry_t *e = s_entry(s, handle);
    if (!e || !e->stor || e->text || !djn_exec_in_slab(x, e->stor))
        return true;
    djn_stor_t *d = NULL;
    char err[64];
    if (s_quota(s, e->nbytes, NULL, 0) != DJN_OK) { /* over quota: the result is lost, say why */
        s_set_stor(s, e, NULL);
        e->poisoned = true;
        snprintf(s->last_failure, sizeof s->last_failure,
                 "session quota exceeded keeping a result of %" PRIu64 " bytes (--session-quota-bytes)",
                 e->nbytes);
        return false;
    }
    if (djn_exec_alloc(x, e->nbytes, UINT64_MAX, &d, err, sizeof err) != DJN_OK)
        return false;
    if (djn_exec_copy(x, d, e->stor, e->nbytes, err, sizeof err) != DJN_OK) {
        djn_stor_release(d);
        return false;
    }
    *bytes += e->nbytes;
    s_set_stor(s, e, d);
    return true;
}

void djn_session_env(djn_session_t *s, djn_exec_t *x, uint32_t device, djn_exec_env_t *env) {
    t_envctx.s = s;
    t_envctx.x = x;
    env->ctx = &t_envctx;
    env->resolve_fn = s_resolve_fn;
    env->is_lazy_fn = s_is_lazy_fn;
    env->bind_fn = s_bind_fn;
    env->new_handle_fn = s_new_handle_fn;
    env->gen_slot = &s->gens[device < S_MAX_DEVICES ? device : 0];
    env->seed = -1;
}
