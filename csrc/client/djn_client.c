/* djn_client.c: the client's C core (see djn_client.h for what it owns).
 *
 * Two layers. A link (s_link_t) is one server: its connection, session, recorder, fetch
 * cache, heartbeat and counters; everything from "request/reply" to "flush" below works
 * on one link and knows nothing of the others. The client (djn_client_t, the last
 * section, "many servers") holds one link per DJINN_SERVER entry, numbers their devices
 * one after another and routes each public call to its link; its one recursive mutex
 * guards every link.
 *
 * Flush (a materialisation point, or the recorder's node bound):
 *   1. offer the content hashes of large uploads (HAVE); drop those the server holds;
 *   2. seal the recorder's fragment (lifecycles, fingerprint) and encode it as GRAPH, or
 *      as GRAPH_CACHED without its nodes when the server ran this fingerprint before;
 *   3. send it with the upload bytes as zero-copy frames;
 *   4. wait for the reply when the caller needs it; a bound-triggered flush does not
 *      wait, and its reply (or error) is collected at the next sync point.
 * Errors of a fragment surface at the next sync point as the first error reply.
 *
 * Replies are matched by seq. Fragments are answered in order (one worker queue per
 * device, and the client waits at every device switch), except those the server answers
 * on arrival (a refusal: a queue bound, a plan-cache miss), whose answers can overtake
 * those of earlier fragments still queued; `acked` passes only over answered seqs, so it
 * says that everything up to it ran (s_answered). Heartbeats are numbered apart (seq with
 * the top bit set) since the server answers them at once, out of order. */
#define _GNU_SOURCE
#include "djn_client.h"

#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "djn_cert.h"
#include "djn_fcache.h"
#include "djn_heartbeat.h"
#include "djn_hostmem.h"
#include "djn_map.h"
#include "djn_mem.h"
#include "djn_spawn.h"
#include "djn_sym.h"
#include "djn_sync.h"
#include "djn_transport.h"

#define S_HANDLE_BASE (1ull << 44)
#define S_HANDLE_ALIGN 256ull
#define S_MAX_OUTSTANDING 16
#define S_CACHE_WHOLE_LIMIT (4ull << 20)      /* fetch whole storages up to this size */
#define S_CACHE_CAPACITY (64ull << 20)        /* bytes kept in the fetch cache */
#define S_UPLOADS_PER_MSG 1024u               /* bound one message: uploads ... */
#define S_UPLOAD_BYTES_PER_MSG (256ull << 20) /* ... and their bytes */
#define S_HB_SEQ (1ull << 63)                 /* heartbeats' own numbering */

#define S_MAX_SERVERS 32 /* entries of DJINN_SERVER */

/* One server: its connection, its session and what belongs to them. Everything here is
 * guarded by the owning client's mutex (`mu`). */
typedef struct s_link {
    djn_client_t *owner;
    pthread_mutex_t *mu;    /* the owner's */
    const char *server_bin; /* the owner's: the embedded server's binary */
    char want[256];         /* this server's DJINN_SERVER entry; "" = embedded */
    int dev0;               /* global index of its first device: remote:dev0 */
    int ndev_fixed;         /* its device count at the first HELLO (-1 before) */
    bool multi;             /* one of several servers: its device count may not change */
    /* configuration, read from the environment at connect */
    int timeout_ms, connect_timeout_ms;
    uint32_t max_nodes;
    uint64_t text_min; /* uploads this large are content-addressed (DJINN_TEXT_MIN_BYTES) */
    bool plan_cache;   /* send GRAPH_CACHED for fragments the server holds (DJINN_PLAN_CACHE) */
    uint64_t chunk; /* uploads this large go at once, in chunks this large (DJINN_UPLOAD_CHUNK) */

    /* connection and session */
    bool connected, forked, broken;
    char endpoint[256];
    pid_t child;
    djn_conn_t *conn;
    uint64_t sid, seq, acked;
    uint64_t early; /* bit i: seq acked + i was answered ahead of its turn (s_answered) */
    int ndev;
    char devnames[DJN_MAX_DEVICES][32];
    djn_status_t pending_st; /* first error of an async fragment not yet reported */
    char pending_msg[2048];
    uint64_t handle_floor; /* handles below it belong to a session that was lost */
    bool loss_marked, rec_stale;

    djn_rec_t *rec;
    djn_fcache_t *fcache;
    djn_map_t sizes; /* live handle -> nbytes */
    djn_map_t known; /* fingerprints the server has cached: key -> s_tpl_t * */
    uint64_t known_bytes;
    djn_vec_t sym_patch, sym_allocs_n, sym_runs[3], sym_h; /* scratch for GRAPH_CACHED */
    djn_vec_t sym_pal;                                     /* int64_t */
    djn_vec_t resend; /* s_resend_t, by seq: fragments kept until answered */
    djn_stats_client_t ctr;

    djn_heartbeat_t *hb;
    int hb_ms;
    int64_t hb_last_ms;
    uint64_t hb_seq;

    /* frames of a direct upload that ZeroMQ has let go of (s_upload_direct) */
    pthread_mutex_t rel_mu;
    pthread_cond_t rel_cv;
    uint64_t released;
} s_link_t;

/* The client: one link per server of DJINN_SERVER (made at first use), and the map of
 * global device indices onto them, fixed by the first connection. */
struct djn_client {
    pthread_mutex_t mu;
    char server_bin[PATH_MAX];
    s_link_t *links[S_MAX_SERVERS];
    int nlinks;
    int ndev;       /* devices of every server, once mapped */
    bool mapped;    /* every server answered once: dev0/ndev_fixed are set */
    s_link_t *cur;  /* the link recording a node (rec_begin .. rec_end / run_dynamic) */
    s_link_t *last; /* the link that recorded last (the SRG snapshot) */
    char endpoints[S_MAX_SERVERS * 258];
    /* the class asked for the fragments sent, on every server */
    int placed;  /* the device 'remote' without an index means (djn_client_place); -1: not yet */
    uint8_t qos; /* DJN_QOS_*: DJINN_QOS or djinn.qos */
    bool qos_by_api;  /* djn_client_set_qos was called: DJINN_QOS no longer applies */
    char qos_bad[64]; /* an unknown DJINN_QOS value, reported at connect */

    djn_client_t *next; /* the live clients, for the fork handler */
};

/* ------------------------------------------------------------------ process-wide */

static _Atomic uint64_t s_next_va = S_HANDLE_BASE; /* see "Handles" in djn_client.h */
static pthread_mutex_t s_live_mu = PTHREAD_MUTEX_INITIALIZER;
static djn_client_t *s_live;
static pthread_once_t s_default_once = PTHREAD_ONCE_INIT;
static djn_client_t *s_default;

static __thread djn_status_t t_st;
static __thread char t_msg[2048];

static djn_status_t s_fail(djn_status_t st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t_msg, sizeof t_msg, fmt, ap);
    va_end(ap);
    t_st = st;
    return st;
}

djn_status_t djn_client_errcode(void) {
    return t_st;
}
const char *djn_client_errmsg(void) {
    return t_msg;
}

static int64_t s_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void s_init_mutex(pthread_mutex_t *mu) {
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_settype(&a, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(mu, &a);
    pthread_mutexattr_destroy(&a);
}

/* In a forked child: the parent's sockets, threads and servers are not ours. */
static void s_child_after_fork(void) {
    for (djn_client_t *c = s_live; c; c = c->next) {
        s_init_mutex(&c->mu);
        for (int i = 0; i < c->nlinks; i++) {
            s_link_t *l = c->links[i];
            l->forked = l->connected;
            l->conn = NULL;
            l->child = 0;
            djn_heartbeat_forget(&l->hb);
        }
    }
    pthread_mutex_init(&s_live_mu, NULL);
}

__attribute__((constructor)) static void s_init(void) {
    pthread_atfork(NULL, NULL, s_child_after_fork);
}

/* ------------------------------------------------------------------ life cycle */

/* A fragment kept for a resend (see "resends" below). */
typedef struct s_resend {
    uint64_t seq, fp[2];
    djn_buf_t plain; /* the fragment as a GRAPH marked resume */
    uint32_t skips;  /* refusals of its first sending still to come */
} s_resend_t;

static void s_resend_clear(s_link_t *c) {
    for (size_t i = 0; i < c->resend.len; i++)
        djn_buf_release(&DJN_VEC_AT(&c->resend, s_resend_t, i).plain);
    c->resend.len = 0;
}

/* ------------------------------------------------------------------ templates
 *
 * What the client sent in the GRAPH that filed each fingerprint (djn_sym.h): a later
 * fragment of the same structure goes as GRAPH_CACHED with only what differs. One
 * counted block per template; past S_KNOWN_MAX of them or S_KNOWN_BYTES, all are
 * forgotten (a forgotten one costs one full GRAPH, which files it again). */
#define S_KNOWN_MAX 65536u
#define S_KNOWN_BYTES (64ull << 20)
#define S_MAX_CLASSES 64u /* more distinct deltas than this: the 'patch' form instead */

typedef struct s_tpl {
    uint64_t fp[2], digest; /* digest 0: not patchable (the scan failed) */
    uint64_t filed;         /* seq of the GRAPH that filed it */
    uint64_t pat_hash;      /* the pattern the server's entry keeps (0: none sent yet) */
    uint32_t nints, nbinds, nallocs, nfrees;
    uint32_t life_kept, life_transient; /* the semantics it was filed with */
    uint8_t qos, phase;
    uint32_t odd_nb, odd_na, odd_nf, odd_runs; /* other list lengths, sent in a row (s_refile) */
    int64_t *ints;
    uint64_t *binds, *ahandle, *anbytes, *frees;
    size_t bytes;
} s_tpl_t;

/* Key of a fingerprint in c->known (the map reserves 0). */
static uint64_t s_fp_key(const uint64_t fp[2]) {
    return fp[0] ^ fp[1] ? fp[0] ^ fp[1] : 1;
}

static void s_known_clear(s_link_t *c) {
    uint64_t k, v;
    for (uint32_t it = 0; djn_map_next(&c->known, &it, &k, &v);) {
        s_tpl_t *t = (s_tpl_t *)(uintptr_t)v;
        djn_free(t, t->bytes);
    }
    djn_map_clear(&c->known);
    c->known_bytes = 0;
}

static s_tpl_t *s_known_get(s_link_t *c, const uint64_t fp[2]) {
    uint64_t v;
    if (!djn_map_get(&c->known, s_fp_key(fp), &v))
        return NULL;
    s_tpl_t *t = (s_tpl_t *)(uintptr_t)v;
    return t->fp[0] == fp[0] && t->fp[1] == fp[1] ? t : NULL;
}

static void s_known_forget(s_link_t *c, const uint64_t fp[2]) {
    uint64_t v;
    if (djn_map_get(&c->known, s_fp_key(fp), &v)) {
        s_tpl_t *t = (s_tpl_t *)(uintptr_t)v;
        c->known_bytes -= t->bytes;
        djn_free(t, t->bytes);
        djn_map_del(&c->known, s_fp_key(fp), NULL);
    }
}

/* Remember what a GRAPH carried (a hint: on OOM the next one is sent whole again). */
static void s_known_put(s_link_t *c, const djn_graph_req_t *g) {
    uint32_t nints = 0;
    const int64_t *ints = djn_rec_ints(c->rec, &nints);
    if (!ints)
        nints = 0;
    s_known_forget(c, g->fp);
    if (c->known.len >= S_KNOWN_MAX || c->known_bytes > S_KNOWN_BYTES)
        s_known_clear(c);
    size_t words = (size_t)nints + g->nbinds + 2ull * g->nallocs + g->nfrees;
    size_t bytes = sizeof(s_tpl_t) + words * 8;
    s_tpl_t *t = djn_malloc(bytes);
    if (!t)
        return;
    memset(t, 0, sizeof *t);
    t->fp[0] = g->fp[0];
    t->fp[1] = g->fp[1];
    t->nints = nints;
    t->nbinds = g->nbinds;
    t->nallocs = g->nallocs;
    t->nfrees = g->nfrees;
    t->qos = g->qos;
    t->phase = g->phase;
    t->life_kept = g->life_kept;
    t->life_transient = g->life_transient;
    t->bytes = bytes;
    t->ints = (int64_t *)(t + 1);
    t->binds = (uint64_t *)(t->ints + nints);
    t->ahandle = t->binds + g->nbinds;
    t->anbytes = t->ahandle + g->nallocs;
    t->frees = t->anbytes + g->nallocs;
    if (nints)
        memcpy(t->ints, ints, nints * 8ull);
    if (g->nbinds)
        memcpy(t->binds, g->binds, g->nbinds * 8ull);
    for (uint32_t i = 0; i < g->nallocs; i++) {
        t->ahandle[i] = g->allocs[i].handle;
        t->anbytes[i] = g->allocs[i].nbytes;
    }
    if (g->nfrees)
        memcpy(t->frees, g->frees, g->nfrees * 8ull);
    if (ints)
        t->digest = djn_sym_digest(ints, nints, g->binds, g->nbinds, g->allocs, g->nallocs,
                                   g->frees, g->nfrees);
    if (!djn_map_put(&c->known, s_fp_key(g->fp), (uint64_t)(uintptr_t)t)) {
        djn_free(t, bytes);
        return;
    }
    c->known_bytes += bytes;
}

/* Fill g's template fields with what differs from t (docs/PROTOCOL.md 7.4); false on
 * OOM (then g is sent as it was). Lists whose length differs from the template's go
 * plain. */
/* The class of a delta in the palette (appended if new); -1 past the class limit. */
static int64_t s_class(s_link_t *c, int64_t d) {
    const int64_t *pal = c->sym_pal.data;
    for (size_t k = 0; k < c->sym_pal.len; k++)
        if (pal[k] == d)
            return (int64_t)k;
    if (c->sym_pal.len >= S_MAX_CLASSES || !djn_vec_push(&c->sym_pal, &d))
        return -1;
    return (int64_t)c->sym_pal.len - 1;
}

/* One value of the pattern's sequence (integers, allocation sizes, binds, allocation
 * handles, frees). */
static bool s_pat_put(s_link_t *c, uint32_t pos, uint64_t cur, uint64_t tpl) {
    if (cur == tpl)
        return true;
    djn_sym_patch_t p = {pos, s_class(c, (int64_t)(cur - tpl))};
    return p.val >= 0 && djn_vec_push(&c->sym_patch, &p);
}

/* By pattern (7.4): every integer, allocation size, bind, allocation handle and free that
 * differs, as classes of equal deltas; the pattern itself travels only when it is not
 * the one the entry keeps (and then neither does `tpl`). In a decode step the same
 * values move by the same few deltas every token, so only the palette travels. False:
 * not possible here (then the fields are left alone). */
static bool s_by_pattern(s_link_t *c, s_tpl_t *t, djn_graph_req_t *g, const int64_t *ints) {
    if (g->nbinds != t->nbinds || g->nallocs != t->nallocs || g->nfrees != t->nfrees)
        return false;
    c->sym_patch.len = c->sym_pal.len = 0;
    bool ok = true;
    uint32_t pos = 0;
    for (uint32_t i = 0; ok && i < t->nints; i++, pos++)
        ok = s_pat_put(c, pos, (uint64_t)ints[i], (uint64_t)t->ints[i]);
    for (uint32_t i = 0; ok && i < g->nallocs; i++, pos++)
        ok = s_pat_put(c, pos, g->allocs[i].nbytes, t->anbytes[i]);
    for (uint32_t i = 0; ok && i < g->nbinds; i++, pos++)
        ok = s_pat_put(c, pos, g->binds[i], t->binds[i]);
    for (uint32_t i = 0; ok && i < g->nallocs; i++, pos++)
        ok = s_pat_put(c, pos, g->allocs[i].handle, t->ahandle[i]);
    for (uint32_t i = 0; ok && i < g->nfrees; i++, pos++)
        ok = s_pat_put(c, pos, g->frees[i], t->frees[i]);
    if (!ok)
        return false;
    uint64_t h = djn_sym_pattern_hash(c->sym_patch.data, (uint32_t)c->sym_patch.len);
    g->tpl = t->digest;
    g->pal = c->sym_pal.data ? c->sym_pal.data : (const int64_t *)&c->sym_pal; /* non-NULL */
    g->npal = (uint32_t)c->sym_pal.len;
    g->has_pat = h != t->pat_hash;
    g->pat = c->sym_patch.data;
    g->npat = (uint32_t)c->sym_patch.len;
    g->pid = h;
    t->pat_hash = h;                        /* what the entry keeps once this message is bound */
    g->nbinds = g->nallocs = g->nfrees = 0; /* all three: the template's, moved */
    return true;
}

#define S_REFILE_AFTER 3

/* Whether to send a fragment whole again, so that the server files its template anew. A
 * fragment whose binds, allocs or frees number otherwise than its template's goes with
 * plain lists, never by pattern: about 1 KB a step where a palette takes 100 B. That is
 * what a generate() loop does from its second step on: the first piece of each step frees
 * what the step before left, two handles more than the step that filed it. When the same
 * other lengths come S_REFILE_AFTER times in a row, they are the fragment's new normal. */
static bool s_refile(s_tpl_t *t, const djn_graph_req_t *g) {
    if (g->nbinds == t->nbinds && g->nallocs == t->nallocs && g->nfrees == t->nfrees) {
        t->odd_runs = 0;
        return false;
    }
    if (!t->odd_runs || g->nbinds != t->odd_nb || g->nallocs != t->odd_na ||
        g->nfrees != t->odd_nf) {
        t->odd_nb = g->nbinds;
        t->odd_na = g->nallocs;
        t->odd_nf = g->nfrees;
        t->odd_runs = 0;
    }
    return ++t->odd_runs >= S_REFILE_AFTER;
}

/* false: send g whole, as it was (on OOM, or to file its template anew: s_refile) */
static bool s_against(s_link_t *c, s_tpl_t *t, djn_graph_req_t *g) {
    uint32_t nints = 0;
    const int64_t *ints = djn_rec_ints(c->rec, &nints);
    if (!t->digest || !ints || nints != t->nints)
        return true; /* run the cached nodes as filed (a byte-exact fingerprint) */
    if (s_refile(t, g))
        return false;
    if (s_by_pattern(c, t, g, ints))
        return true;
    c->sym_patch.len = c->sym_allocs_n.len = c->sym_h.len = 0;
    for (int i = 0; i < 3; i++)
        c->sym_runs[i].len = 0;
    bool ok = true;
    for (uint32_t i = 0; ok && i < nints; i++)
        if (ints[i] != t->ints[i]) {
            djn_sym_patch_t p = {i, (int64_t)((uint64_t)ints[i] - (uint64_t)t->ints[i])};
            ok = djn_vec_push(&c->sym_patch, &p);
        }
    if (ok && g->nbinds == t->nbinds)
        ok =
            djn_sym_runs(t->binds, g->binds, g->nbinds, &c->sym_runs[0]) && (g->has_binds_d = true);
    if (ok && g->nallocs == t->nallocs && djn_vec_reserve(&c->sym_h, g->nallocs)) {
        for (uint32_t i = 0; ok && i < g->nallocs; i++) {
            ((uint64_t *)c->sym_h.data)[i] = g->allocs[i].handle;
            if (g->allocs[i].nbytes != t->anbytes[i]) {
                djn_sym_patch_t p = {i, (int64_t)(g->allocs[i].nbytes - t->anbytes[i])};
                ok = djn_vec_push(&c->sym_allocs_n, &p);
            }
        }
        ok = ok && djn_sym_runs(t->ahandle, c->sym_h.data, g->nallocs, &c->sym_runs[1]) &&
             (g->has_allocs_d = true);
    }
    if (ok && g->nfrees == t->nfrees)
        ok =
            djn_sym_runs(t->frees, g->frees, g->nfrees, &c->sym_runs[2]) && (g->has_frees_d = true);
    if (!ok) {
        g->has_binds_d = g->has_allocs_d = g->has_frees_d = false;
        return false;
    }
    g->tpl = t->digest;
    g->npatch = (uint32_t)c->sym_patch.len;
    g->patch = c->sym_patch.data;
    g->nallocs_n = (uint32_t)c->sym_allocs_n.len;
    g->allocs_n = c->sym_allocs_n.data;
    g->nbinds_d = (uint32_t)c->sym_runs[0].len;
    g->binds_d = c->sym_runs[0].data;
    g->nallocs_d = (uint32_t)c->sym_runs[1].len;
    g->allocs_d = c->sym_runs[1].data;
    g->nfrees_d = (uint32_t)c->sym_runs[2].len;
    g->frees_d = c->sym_runs[2].data;
    return true;
}

static void s_link_destroy(s_link_t **self_p) {
    s_link_t *l = *self_p;
    if (!l)
        return;
    djn_rec_destroy(&l->rec);
    djn_fcache_destroy(&l->fcache);
    djn_map_release(&l->sizes);
    s_known_clear(l);
    djn_map_release(&l->known);
    djn_vec_release(&l->sym_patch);
    djn_vec_release(&l->sym_allocs_n);
    for (int i = 0; i < 3; i++)
        djn_vec_release(&l->sym_runs[i]);
    djn_vec_release(&l->sym_h);
    djn_vec_release(&l->sym_pal);
    s_resend_clear(l);
    djn_vec_release(&l->resend);
    pthread_mutex_destroy(&l->rel_mu);
    pthread_cond_destroy(&l->rel_cv);
    djn_free(l, sizeof(*l));
    *self_p = NULL;
}

static s_link_t *s_link_new(djn_client_t *c, const char *want) {
    s_link_t *l = djn_calloc(1, sizeof(*l));
    if (!l)
        return NULL;
    l->owner = c;
    l->mu = &c->mu;
    l->server_bin = c->server_bin;
    l->ndev_fixed = -1;
    snprintf(l->want, sizeof l->want, "%s", want);
    l->rec = djn_rec_new(4096);
    l->fcache = djn_fcache_new(S_CACHE_CAPACITY);
    l->sym_patch = l->sym_allocs_n = DJN_VEC(djn_sym_patch_t);
    for (int i = 0; i < 3; i++)
        l->sym_runs[i] = DJN_VEC(djn_sym_run_t);
    l->sym_h = DJN_VEC(uint64_t);
    l->sym_pal = DJN_VEC(int64_t);
    l->resend = DJN_VEC(s_resend_t);
    pthread_mutex_init(&l->rel_mu, NULL);
    pthread_cond_init(&l->rel_cv, NULL);
    if (!l->rec || !l->fcache)
        s_link_destroy(&l);
    return l;
}

djn_client_t *djn_client_new(const char *server_bin) {
    djn_client_t *c = djn_calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    s_init_mutex(&c->mu);
    c->placed = -1;
    snprintf(c->server_bin, sizeof c->server_bin, "%s", server_bin ? server_bin : "");
    pthread_mutex_lock(&s_live_mu);
    c->next = s_live;
    s_live = c;
    pthread_mutex_unlock(&s_live_mu);
    return c;
}

void djn_client_destroy(djn_client_t **self_p) {
    if (!self_p || !*self_p)
        return;
    djn_client_t *c = *self_p;
    djn_client_shutdown(c);
    pthread_mutex_lock(&s_live_mu);
    for (djn_client_t **pp = &s_live; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    pthread_mutex_unlock(&s_live_mu);
    for (int i = 0; i < c->nlinks; i++)
        s_link_destroy(&c->links[i]);
    pthread_mutex_destroy(&c->mu);
    djn_free(c, sizeof(*c));
    *self_p = NULL;
}

static void s_atexit(void) {
    if (s_default)
        djn_client_shutdown(s_default);
}

static void s_default_make(void) {
    s_default = djn_client_new("");
    atexit(s_atexit);
}

djn_client_t *djn_client_default(void) {
    pthread_once(&s_default_once, s_default_make);
    return s_default;
}

void djn_client_lock(djn_client_t *c) {
    pthread_mutex_lock(&c->mu);
}
void djn_client_unlock(djn_client_t *c) {
    pthread_mutex_unlock(&c->mu);
}

void djn_client_set_server_binary(djn_client_t *c, const char *path) {
    pthread_mutex_lock(&c->mu);
    snprintf(c->server_bin, sizeof c->server_bin, "%s", path ? path : "");
    pthread_mutex_unlock(&c->mu);
}

/* ------------------------------------------------------------------ request/reply */

typedef struct {
    djn_rx_t *rx;     /* the frames */
    djn_reply_t *rep; /* frame 0, decoded */
} s_resp_t;

static void s_resp_free(s_resp_t *x) {
    djn_rx_free(&x->rx);
    djn_reply_free(&x->rep);
}

static void s_free_bytes(void *data, void *hint) {
    djn_free(data, (size_t)(uintptr_t)hint);
}

/* DJINN_RECORD_DIR: write every request to a file of its own, in the framing of the
 * server fuzzer's inputs ([u8 frames - 1][u16 length][bytes]..., data frames cut at
 * 64 KiB): real client messages seed fuzz/corpus (make fuzz-seeds). */
static const char *s_record_dir; /* DJINN_RECORD_DIR, read once */
static pthread_once_t s_record_once = PTHREAD_ONCE_INIT;

static void s_record_init(void) {
    const char *d = getenv("DJINN_RECORD_DIR");
    s_record_dir = d && *d ? d : NULL;
}

static void s_record(const djn_buf_t *hdr, const djn_frame_t *frames, uint32_t nframes) {
    static _Atomic uint32_t n;
    pthread_once(&s_record_once, s_record_init);
    const char *dir = s_record_dir;
    if (!dir || hdr->len > 0xFFFF)
        return;
    char path[4096];
    snprintf(path, sizeof path, "%s/%d-%06u", dir, (int)getpid(), atomic_fetch_add(&n, 1));
    FILE *f = fopen(path, "wb");
    if (!f)
        return;
    uint32_t nf = nframes < 7 ? nframes : 7;
    fputc((int)nf, f);
    fputc((int)(hdr->len & 0xFF), f);
    fputc((int)(hdr->len >> 8), f);
    fwrite(hdr->data, 1, hdr->len, f);
    for (uint32_t i = 0; i < nf; i++) {
        size_t l = frames[i].len < 0xFFFF ? frames[i].len : 0xFFFF;
        fputc((int)(l & 0xFF), f);
        fputc((int)(l >> 8), f);
        fwrite(frames[i].data, 1, l, f);
    }
    fclose(f);
}

static void s_answered(s_link_t *c, uint64_t s);
static s_resend_t *s_resend_find(s_link_t *c, uint64_t seq);
static void s_resend_drop(s_link_t *c, s_resend_t *r);

/* Send a request just numbered c->seq (or a kept fragment again: s_resend_answer). */
static djn_status_t s_send(s_link_t *c, djn_buf_t *hdr, djn_frame_t *frames, uint32_t nframes) {
    if (hdr->failed) { /* never sent: nobody waits for its answer */
        s_resend_t *kept = s_resend_find(c, c->seq);
        if (kept)
            s_resend_drop(c, kept);
        s_answered(c, c->seq);
        return s_fail(DJN_ERR_NOMEM, "djinn: out of memory encoding a request");
    }
    s_record(hdr, frames, nframes);
    djn_status_t st = djn_conn_send(c->conn, hdr->data, hdr->len, frames, nframes);
    if (st != DJN_OK) {
        c->broken = true;
        return s_fail(st, "djinn: cannot send to the server at %s", c->endpoint);
    }
    c->ctr.messages++;
    c->ctr.bytes_sent += hdr->len;
    for (uint32_t i = 0; i < nframes; i++)
        c->ctr.bytes_sent += frames[i].len;
    return DJN_OK;
}

/* The server no longer knows our session: every handle that exists now belongs to it
 * and is gone; handles made from here on belong to the next session. */
static void s_session_lost(s_link_t *c) {
    c->broken = true;
    if (c->loss_marked) /* once per lost session: handles made since belong to the next one */
        return;
    c->loss_marked = true;
    c->handle_floor = atomic_load(&s_next_va);
    djn_fcache_clear(c->fcache);
    djn_rec_reset(c->rec);
    s_resend_clear(c); /* what they named is gone with the session */
}

/* A handle of a session this client lost: client handles made before the loss, or
 * server-issued ones whose session bits name another session. */
static bool s_stale(const s_link_t *c, uint64_t h) {
    if (!djn_handle_is_client(h))
        return !djn_handle_of_session(h, c->sid);
    return h < c->handle_floor;
}

static djn_status_t s_stale_error(void) {
    return s_fail(DJN_ERR_SESSION,
                  "djinn: session lost: this remote tensor belongs to a session the server no "
                  "longer holds (it restarted, or the lease expired); its data is gone. "
                  "Re-create it from CPU data.");
}

static void s_error_text(s_link_t *c, const djn_reply_t *r, char *msg, size_t len) {
    if (r->error.code == DJN_ERR_SESSION)
        snprintf(msg, len,
                 "djinn: session lost: the server at %s no longer knows this session (it "
                 "restarted, or the lease expired); remote tensors from it are gone. Open a new "
                 "session by using 'remote' again and re-create them.",
                 c->endpoint);
    else
        snprintf(msg, len, "%s", r->error.msg);
}

static djn_status_t s_take_pending(s_link_t *c) {
    djn_status_t pst = c->pending_st;
    c->pending_st = DJN_OK;
    return s_fail(pst, "%s", c->pending_msg);
}

static void s_heartbeat_send(s_link_t *c, bool force);

/* The embedded server died: say how, at once (not after DJINN_TIMEOUT). */
static djn_status_t s_child_check(s_link_t *c) {
    char why[128];
    if (c->child <= 0 || !djn_spawn_exited(c->child, why, sizeof why))
        return DJN_ERR_TIMEOUT;
    c->child = 0;
    c->broken = true;
    djn_spawn_cleanup(c->endpoint);
    return s_fail(DJN_ERR_IO,
                  "djinn: the embedded djinn-server %s; the remote tensors of this session are "
                  "gone (using 'remote' again starts a new server)",
                  why);
}

/* ------------------------------------------------------------------ resends
 *
 * A GRAPH_CACHED may be answered E_EVICTED (the server dropped the entry), and the server
 * then refuses the session's later fragments until the resend (marked `resume`) arrives,
 * since they may use its results (docs/PROTOCOL.md 7.4). So a GRAPH_CACHED, and every
 * fragment sent while one is unanswered, is kept here as a full GRAPH until its answer;
 * an E_EVICTED answer sends the evicted fragment and every later one again, under their
 * own seqs, and whoever waits on them keeps waiting. Fragments with uploads are never
 * kept: they wait until nothing is (s_settle). */
/* Keep the fragment about to go out as `seq`; false on OOM (nothing kept). */
static bool s_resend_keep(s_link_t *c, uint64_t seq, const djn_graph_req_t *plain) {
    s_resend_t r = {seq, {plain->fp[0], plain->fp[1]}, {0}, 0};
    djn_graph_req_t g = *plain;
    g.resume = true;
    djn_msg_hdr_t hdr = {DJN_MSG_GRAPH, c->sid, seq};
    djn_graph_req_encode(&r.plain, &hdr, &g);
    if (!r.plain.failed && djn_vec_push(&c->resend, &r))
        return true;
    djn_buf_release(&r.plain);
    return false;
}

static s_resend_t *s_resend_find(s_link_t *c, uint64_t seq) {
    for (size_t i = 0; i < c->resend.len; i++)
        if (DJN_VEC_AT(&c->resend, s_resend_t, i).seq == seq)
            return &DJN_VEC_AT(&c->resend, s_resend_t, i);
    return NULL;
}

static void s_resend_drop(s_link_t *c, s_resend_t *r) {
    djn_buf_release(&r->plain);
    size_t i = (size_t)(r - (s_resend_t *)c->resend.data);
    memmove(r, r + 1, (c->resend.len - i - 1) * sizeof(*r));
    c->resend.len--;
}

/* The answer to a kept fragment `r`. True when it is consumed here: a refusal of a first
 * sending already resent, or an E_EVICTED, which resends `r` and every later kept
 * fragment (the server refuses those later ones once each: `skips`) and forgets their
 * templates, so that their next sendings file them again. */
static bool s_resend_answer(s_link_t *c, s_resend_t *r, const djn_reply_t *rep, djn_status_t *st) {
    *st = DJN_OK;
    if (rep->type != DJN_MSG_ERROR || rep->error.code != DJN_ERR_EVICTED) {
        s_resend_drop(c, r);
        return false;
    }
    if (r->skips) {
        r->skips--;
        return true;
    }
    s_resend_t *end = (s_resend_t *)c->resend.data + c->resend.len;
    for (s_resend_t *e = r; e < end && *st == DJN_OK; e++) {
        s_known_forget(c, e->fp);
        e->skips += e != r;
        c->ctr.plan_cache_resends++;
        *st = s_send(c, &e->plain, NULL, 0);
    }
    return true;
}

/* The connection failed: the server refused our handshake, or receiving failed. */
static djn_status_t s_conn_failed(s_link_t *c, djn_status_t st) {
    c->broken = true;
    if (s_child_check(c) != DJN_ERR_TIMEOUT)
        return t_st;
    const char *why = "";
    djn_conn_problem(c->conn, &why);
    if (st == DJN_ERR_DENIED)
        return s_fail(st, "djinn: cannot talk to the server at %s: %s", c->endpoint, why);
    return s_fail(DJN_ERR_IO, "djinn: receiving from the server at %s failed", c->endpoint);
}

#define S_DROP_GRACE_MS 3000 /* a dropped link that does not come back: the server is gone */

/* Between two slices of a wait: is the server still there? The embedded server's exit
 * is seen at once; a link that dropped and stays down for S_DROP_GRACE_MS means a dead
 * server (ZMTP heartbeats drop a silent peer's link after a few seconds, and a crashed
 * process's at once); a link that came back may lead to a new server process, so a
 * HEARTBEAT goes out at once and a "session lost" answer ends the wait. */
static djn_status_t s_liveness(s_link_t *c, uint32_t *handshakes_seen) {
    djn_status_t st = s_child_check(c);
    if (st != DJN_ERR_TIMEOUT)
        return st;
    uint32_t hs;
    int64_t down;
    djn_conn_link(c->conn, &hs, &down);
    if (down > S_DROP_GRACE_MS) {
        c->broken = true;
        return s_fail(DJN_ERR_IO,
                      "djinn: the server at %s stopped answering: its connection dropped %lld ms "
                      "ago and did not come back (the server died or the network failed); the "
                      "remote tensors of this session are unreachable",
                      c->endpoint, (long long)down);
    }
    if (hs > *handshakes_seen) {
        if (*handshakes_seen) /* reconnected while we waited: same server, or a new one? */
            s_heartbeat_send(c, true);
        *handshakes_seen = hs;
    }
    if (c->loss_marked && c->broken)
        return s_fail(DJN_ERR_SESSION,
                      "djinn: session lost: the server at %s no longer knows this session (it "
                      "restarted, or the lease expired); remote tensors from it are gone. Open a "
                      "new session by using 'remote' again and re-create them.",
                      c->endpoint);
    return DJN_ERR_TIMEOUT;
}

/* File seq `s` as answered: `acked` moves over the run of answered seqs that follows it,
 * and an answer that overtook earlier ones waits in `early` until they come. At most
 * S_MAX_OUTSTANDING + 1 fragments are in flight, so the 63 seqs `early` holds suffice; one
 * beyond them (never seen) moves `acked` to it, as if everything before had been answered. */
static void s_answered(s_link_t *c, uint64_t s) {
    if (s <= c->acked || s > c->seq) /* a reply already filed, or to nothing we sent */
        return;
    uint64_t d = s - c->acked;
    if (d >= 64) {
        c->acked = s;
        c->early = 0;
        return;
    }
    c->early |= 1ull << d;
    while (c->early & 2) {
        c->acked++;
        c->early = (c->early >> 1) & ~1ull;
    }
}

/* Read one reply (waiting up to timeout_ms) and file it: acked, errors of fragments
 * nobody waits for (kept in pending_* and reported at the next sync point), a lost
 * session. *got says whether it answered `want` (0: nothing wanted); then *out holds it,
 * or the status is its error, the earliest pending error first. DJN_ERR_TIMEOUT when
 * nothing arrived, with no side effect. */
static djn_status_t s_recv_one(s_link_t *c, uint64_t want, int timeout_ms, s_resp_t *out,
                               bool *got) {
    *got = false;
    s_resp_t x = {0};
    djn_status_t st = djn_conn_recv(c->conn, timeout_ms, &x.rx);
    if (st == DJN_ERR_TIMEOUT)
        return st;
    if (st != DJN_OK)
        return s_conn_failed(c, st);
    size_t hl;
    const void *h = djn_rx_frame(x.rx, 0, &hl);
    c->ctr.bytes_received += hl;
    for (uint32_t i = 1; i <= djn_rx_nframes(x.rx); i++) {
        size_t fl;
        djn_rx_frame(x.rx, i, &fl);
        c->ctr.bytes_received += fl;
    }
    char err[256];
    if (djn_reply_decode(h, hl, &x.rep, err, sizeof err) != DJN_OK) {
        s_resp_free(&x);
        c->broken = true;
        return s_fail(DJN_ERR_PROTO, "djinn: unreadable reply from the server: %s", err);
    }
    uint64_t rseq = x.rep->seq;
    if (rseq & S_HB_SEQ) { /* a heartbeat's answer: only a lost session matters */
        if (x.rep->type == DJN_MSG_ERROR && x.rep->error.code == DJN_ERR_SESSION)
            s_session_lost(c);
        s_resp_free(&x);
        return DJN_OK;
    }
    s_resend_t *kept = rseq ? s_resend_find(c, rseq) : NULL;
    if (kept && s_resend_answer(c, kept, x.rep, &st)) {
        s_resp_free(&x);
        return st; /* its answer is still to come */
    }
    /* seq 0: the server could not read a header; it answers the request we wait for
     * (requests are never numbered 0), and since which request it was cannot be known,
     * everything sent so far counts as answered: a wait for the unread one would never end */
    if (rseq) {
        s_answered(c, rseq);
    } else {
        c->acked = c->seq;
        c->early = 0;
    }

    bool mine = want && (rseq == want || (rseq == 0 && x.rep->type == DJN_MSG_ERROR));
    if (x.rep->type == DJN_MSG_ERROR) {
        char msg[1024];
        djn_status_t est = x.rep->error.code;
        s_error_text(c, x.rep, msg, sizeof msg);
        s_resp_free(&x);
        if (est == DJN_ERR_SESSION)
            s_session_lost(c);
        if (mine) {
            *got = true;
            if (c->pending_st != DJN_OK) /* the first error is the cause */
                return s_take_pending(c);
            return s_fail(est, "%s", msg);
        }
        if (c->pending_st == DJN_OK) {
            c->pending_st = est;
            snprintf(c->pending_msg, sizeof c->pending_msg, "%s", msg);
        }
        return DJN_OK;
    }
    if (!mine) {
        s_resp_free(&x);
        return DJN_OK;
    }
    *got = true;
    if (c->pending_st != DJN_OK) {
        s_resp_free(&x);
        return s_take_pending(c);
    }
    *out = x;
    return DJN_OK;
}

/* Receive replies until the one for `want` (see s_recv_one). While it waits it renews
 * the lease itself: the heartbeat thread cannot take the lock. */
static djn_status_t s_wait(s_link_t *c, uint64_t want, int timeout_ms, s_resp_t *out) {
    memset(out, 0, sizeof(*out));
    int64_t deadline = s_now_ms() + timeout_ms;
    uint32_t handshakes;
    int64_t down;
    djn_conn_link(c->conn, &handshakes, &down);
    for (;;) {
        int64_t left = deadline - s_now_ms();
        if (left < 0)
            left = 0;
        int period = c->hb_ms > 0 && c->hb_ms < 500 ? c->hb_ms : 500;
        int slice = left > period ? period : (int)left;
        bool got;
        djn_status_t st = s_recv_one(c, want, slice, out, &got);
        if (st == DJN_ERR_TIMEOUT) {
            if ((st = s_liveness(c, &handshakes)) != DJN_ERR_TIMEOUT)
                return st;
            if (left <= slice) {
                c->broken = true;
                return s_fail(st,
                              "djinn: the server at %s did not answer within %d ms "
                              "(DJINN_TIMEOUT); it may be down or overloaded",
                              c->endpoint, timeout_ms);
            }
        } else if (st != DJN_OK || got) {
            return st;
        }
        /* renew the leases that are due while we wait, whether or not replies arrive
         * (pipelined fragments answer every so often): this link's and the other
         * servers', whose heartbeat threads cannot take the lock we hold */
        djn_client_t *o = c->owner;
        for (int i = 0; o && i < o->nlinks; i++)
            s_heartbeat_send(o->links[i], false);
        if (!o)
            s_heartbeat_send(c, false);
    }
}

/* Send a request with an empty body (or one `enc` encodes) and wait for its reply. */
typedef void (*s_enc_fn)(djn_buf_t *b, const djn_msg_hdr_t *hdr, const void *arg);

static djn_status_t s_settle(s_link_t *c);
static djn_status_t s_drain(s_link_t *c);

static djn_status_t s_request(s_link_t *c, uint8_t type, s_enc_fn enc, const void *arg,
                              int timeout_ms, s_resp_t *out) {
    djn_status_t st;
    if (type != DJN_MSG_HELLO && type != DJN_MSG_CLOSE && (st = s_settle(c)) != DJN_OK)
        return st; /* it may name what a kept fragment makes */
    djn_buf_t b = {0};
    djn_msg_hdr_t hdr = {type, c->sid, ++c->seq};
    if (enc)
        enc(&b, &hdr, arg);
    else
        djn_empty_encode(&b, &hdr);
    st = s_send(c, &b, NULL, 0);
    djn_buf_release(&b);
    if (st != DJN_OK)
        return st;
    return s_wait(c, hdr.seq, timeout_ms, out);
}

/* ------------------------------------------------------------------ heartbeat */

/* One HEARTBEAT on the session's connection, if one is due; its answer is read by
 * whoever reads next (s_wait, or the next tick). */
static void s_heartbeat_send(s_link_t *c, bool force) {
    int64_t now = s_now_ms();
    if (!c->connected || c->broken || c->forked || !c->conn ||
        (!force && (c->hb_ms <= 0 || now - c->hb_last_ms < c->hb_ms)))
        return;
    c->hb_last_ms = now;
    djn_buf_t b = {0};
    djn_msg_hdr_t hdr = {DJN_MSG_HEARTBEAT, c->sid, S_HB_SEQ | ++c->hb_seq};
    djn_empty_encode(&b, &hdr);
    if (!b.failed)
        djn_conn_send(c->conn, b.data, b.len, NULL, 0);
    djn_buf_release(&b);
}

static void s_heartbeat_tick(void *arg) {
    s_link_t *c = arg;
    if (pthread_mutex_trylock(c->mu) != 0)
        return; /* the user's thread is in the client: it renews the lease itself */
    s_heartbeat_send(c, false);
    /* file what arrived: heartbeat answers, replies to fragments sent without waiting */
    bool got;
    s_resp_t x = {0};
    while (c->connected && !c->broken && c->conn && s_recv_one(c, 0, 0, &x, &got) == DJN_OK) {
    }
    pthread_mutex_unlock(c->mu);
}

/* ------------------------------------------------------------------ connection */

static int s_env_int(const char *name, int dflt) {
    const char *v = getenv(name);
    if (!v || !*v)
        return dflt;
    char *end;
    double d = strtod(v, &end);
    return end == v ? dflt : (int)d;
}

static void s_read_config(s_link_t *c) {
    c->timeout_ms = s_env_int("DJINN_TIMEOUT", 600) * 1000;
    const char *ct = getenv("DJINN_CONNECT_TIMEOUT");
    c->connect_timeout_ms = (int)(1000 * strtod(ct && *ct ? ct : "10", NULL));
    if (c->connect_timeout_ms <= 0)
        c->connect_timeout_ms = 10000;
    c->max_nodes = (uint32_t)s_env_int("DJINN_MAX_NODES", 4096);
    /* a fragment also goes out, unwaited, every DJINN_PIPELINE_NODES nodes, so that the
     * server runs it while the client captures the next (0: off) */
    int pipe = s_env_int("DJINN_PIPELINE_NODES", 64);
    if (pipe > 0 && (uint32_t)pipe < c->max_nodes)
        c->max_nodes = (uint32_t)pipe;
    c->text_min = (uint64_t)s_env_int("DJINN_TEXT_MIN_BYTES", 65536);
    c->plan_cache = s_env_int("DJINN_PLAN_CACHE", 1) != 0;
    int chunk = s_env_int("DJINN_UPLOAD_CHUNK", 1 << 20);
    c->chunk = chunk > 0 ? (uint64_t)chunk : 1u << 20;
    djn_client_t *o = c->owner;
    const char *q = getenv("DJINN_QOS");
    o->qos_bad[0] = 0;
    if (!o->qos_by_api && q && *q) {
        int v = djn_client_qos_parse(q);
        if (v < 0)
            snprintf(o->qos_bad, sizeof o->qos_bad, "%.40s", q);
        else
            o->qos = (uint8_t)v;
    }
}

int djn_client_qos_parse(const char *name) {
    static const char *names[] = {"auto", "realtime", "interactive", "batch"};
    for (int i = 0; i <= DJN_QOS_MAX; i++)
        if (!strcmp(name, names[i]))
            return i;
    return -1;
}

static djn_status_t s_flush_locked(s_link_t *c, bool wait, const djn_fetch_t *fetch, s_resp_t *out);

djn_status_t djn_client_set_qos(djn_client_t *c, int qos) {
    if (qos < 0 || qos > DJN_QOS_MAX)
        return s_fail(DJN_ERR_ARGS, "djinn: qos must be 'auto', 'realtime', 'interactive' or "
                                    "'batch'");
    pthread_mutex_lock(&c->mu);
    djn_status_t st = DJN_OK;
    /* the nodes recorded so far were asked for in the old class: they go in it */
    for (int i = 0; i < c->nlinks && st == DJN_OK; i++) {
        s_link_t *l = c->links[i];
        if (l->connected && qos != c->qos && !djn_rec_empty(l->rec))
            st = s_flush_locked(l, false, NULL, NULL);
    }
    c->qos = (uint8_t)qos;
    c->qos_by_api = true;
    pthread_mutex_unlock(&c->mu);
    return st;
}

int djn_client_qos(djn_client_t *c) {
    pthread_mutex_lock(&c->mu);
    const char *env = getenv("DJINN_QOS");
    int q = !c->qos_by_api && env && *env && djn_client_qos_parse(env) >= 0
                ? djn_client_qos_parse(env)
                : c->qos;
    pthread_mutex_unlock(&c->mu);
    return q;
}

/* CURVE keys for a remote server: DJINN_CLIENT_CERT (this client's keypair, a
 * .key_secret file) and DJINN_SERVER_CERT (the server's public .key), else
 * client.key_secret and server.key in $DJINN_CONFIG_DIR, $XDG_CONFIG_HOME/djinn or
 * ~/.config/djinn. *use is false when there are none (a server without keys). */
static djn_status_t s_find_keys(djn_curve_t *k, bool *use, char *err, size_t errlen) {
    *use = false;
    const char *cc = getenv("DJINN_CLIENT_CERT"), *sc = getenv("DJINN_SERVER_CERT");
    char cpath[4096], spath[4096];
    if ((cc && *cc) || (sc && *sc)) {
        if (!cc || !*cc || !sc || !*sc) {
            snprintf(err, errlen,
                     "set both DJINN_CLIENT_CERT (this client's .key_secret) and "
                     "DJINN_SERVER_CERT (the server's public .key)");
            return DJN_ERR_ARGS;
        }
        snprintf(cpath, sizeof cpath, "%s", cc);
        snprintf(spath, sizeof spath, "%s", sc);
    } else {
        const char *d = getenv("DJINN_CONFIG_DIR"), *x = getenv("XDG_CONFIG_HOME"),
                   *h = getenv("HOME");
        char dir[4000];
        if (d && *d)
            snprintf(dir, sizeof dir, "%s", d);
        else if (x && *x)
            snprintf(dir, sizeof dir, "%s/djinn", x);
        else if (h && *h)
            snprintf(dir, sizeof dir, "%s/.config/djinn", h);
        else
            return DJN_OK;
        snprintf(cpath, sizeof cpath, "%s/client.key_secret", dir);
        snprintf(spath, sizeof spath, "%s/server.key", dir);
        if (access(cpath, R_OK) != 0 || access(spath, R_OK) != 0)
            return DJN_OK;
    }
    djn_cert_t cert, server;
    djn_status_t st = djn_cert_read(cpath, &cert, err, errlen);
    if (st == DJN_OK && !cert.has_secret) {
        snprintf(err, errlen, "'%.300s' holds no secret-key: give this client's .key_secret file",
                 cpath);
        st = DJN_ERR_ARGS;
    }
    if (st == DJN_OK)
        st = djn_cert_read(spath, &server, err, errlen);
    if (st != DJN_OK)
        return st;
    memcpy(k->client_pub, cert.pub, 32);
    memcpy(k->client_sec, cert.sec, 32);
    memcpy(k->server_pub, server.pub, 32);
    memset(&cert, 0, sizeof cert);
    *use = true;
    return DJN_OK;
}

static void s_hello_enc(djn_buf_t *b, const djn_msg_hdr_t *hdr, const void *arg) {
    djn_hello_req_encode(b, hdr, arg);
}

static djn_status_t s_connect_locked(s_link_t *c) {
    if (c->forked)
        return s_fail(DJN_ERR_SESSION,
                      "djinn: this process was forked after it used the 'remote' device; the "
                      "session and its remote tensors belong to the parent. Use the 'spawn' "
                      "start method (multiprocessing.set_start_method('spawn')) for workers "
                      "that use 'remote'.");
    if (c->connected && !c->broken)
        return DJN_OK;
    if (c->broken) { /* a new session: forget the old connection and what it held */
        s_session_lost(c);
        djn_heartbeat_stop(&c->hb);
        djn_conn_destroy(&c->conn);
        s_known_clear(c);
        c->pending_st = DJN_OK;
        c->connected = false;
        c->broken = false;
    }
    s_read_config(c);
    if (c->owner->qos_bad[0])
        return s_fail(DJN_ERR_ARGS,
                      "djinn: DJINN_QOS must be 'auto', 'realtime', 'interactive' or 'batch', "
                      "got '%s'",
                      c->owner->qos_bad);
    djn_rec_set_max_nodes(c->rec, c->max_nodes);
    char err[512];
    djn_status_t st;
    if (c->want[0]) {
        snprintf(c->endpoint, sizeof c->endpoint, "%s", c->want);
    } else if (c->child <= 0) {
        const char *bin = getenv("DJINN_SERVER_BIN");
        if (!bin || !*bin)
            bin = c->server_bin;
        if (!*bin)
            return s_fail(DJN_ERR_IO, "djinn: no server: set DJINN_SERVER=tcp://host:port, or "
                                      "install djinn with its djinn-server binary");
        st = djn_spawn_server(bin, c->connect_timeout_ms, &c->child, c->endpoint,
                              sizeof c->endpoint, err, sizeof err);
        if (st != DJN_OK)
            return s_fail(st, "djinn: %s", err);
    }
    djn_curve_t keys;
    bool use_keys = false;
    if (c->child <= 0 && (st = s_find_keys(&keys, &use_keys, err, sizeof err)) != DJN_OK)
        return s_fail(st, "djinn: %.500s", err);
    c->conn = djn_conn_new(c->endpoint, use_keys ? &keys : NULL);
    memset(&keys, 0, sizeof keys);
    if (!c->conn)
        return s_fail(DJN_ERR_IO,
                      "djinn: cannot open a socket to '%s' (is it a valid ZeroMQ "
                      "endpoint such as tcp://127.0.0.1:5555?)",
                      c->endpoint);
    char client[128];
    snprintf(client, sizeof client, "djinn-client pid %d", (int)getpid());
    djn_hello_req_t hello = {DJN_PROTO_VERSION, client};
    c->sid = 0;
    s_resp_t x = {0};
    st = s_request(c, DJN_MSG_HELLO, s_hello_enc, &hello, c->connect_timeout_ms, &x);
    if (st != DJN_OK) {
        djn_conn_destroy(&c->conn);
        c->broken = false;
        if (st == DJN_ERR_TIMEOUT)
            return s_fail(st,
                          "djinn: the server at %s is unreachable: no answer to HELLO within "
                          "%d ms (DJINN_CONNECT_TIMEOUT). Start one with 'djinn-server --listen "
                          "%s' or unset DJINN_SERVER to use an embedded server.",
                          c->endpoint, c->connect_timeout_ms, c->endpoint);
        return st;
    }
    djn_hello_rep_t h;
    if (djn_hello_rep_parse(x.rep, &h, err, sizeof err) != DJN_OK) {
        s_resp_free(&x);
        djn_conn_destroy(&c->conn);
        return s_fail(DJN_ERR_PROTO, "djinn: %s", err);
    }
    if (c->multi && c->ndev_fixed >= 0 && (int)h.ndevices != c->ndev_fixed) {
        s_resp_free(&x);
        djn_conn_destroy(&c->conn);
        return s_fail(DJN_ERR_DEVICE,
                      "djinn: the server at %s now has %u devices where it had %d: the "
                      "numbering of remote devices across DJINN_SERVER would change; restart "
                      "this process",
                      c->endpoint, h.ndevices, c->ndev_fixed);
    }
    c->sid = h.sid;
    int hb_ms = s_env_int("DJINN_HEARTBEAT_MS", h.heartbeat_ms ? (int)h.heartbeat_ms : 1000);
    if (h.lease_ms == 0)
        hb_ms = 0; /* the server never expires sessions */
    c->ndev = 0;
    for (uint32_t i = 0; i < h.ndevices && i < DJN_MAX_DEVICES; i++)
        snprintf(c->devnames[c->ndev++], sizeof c->devnames[0], "%s", h.devices[i]);
    if (c->ndev_fixed < 0)
        c->ndev_fixed = c->ndev;
    s_resp_free(&x);
    c->connected = true;
    c->acked = c->seq;
    c->early = 0;
    c->loss_marked = false;
    c->hb_ms = hb_ms;
    c->hb_last_ms = s_now_ms();
    c->hb = djn_heartbeat_start(hb_ms, s_heartbeat_tick, c);
    return DJN_OK;
}

static void s_link_shutdown(s_link_t *c) {
    /* stop the heartbeat before taking the lock: its tick may be waiting for it */
    if (!c->forked)
        djn_heartbeat_stop(&c->hb);
    pthread_mutex_lock(c->mu);
    if (c->connected && !c->broken && !c->forked && c->conn) {
        s_resp_t x = {0};
        if (s_request(c, DJN_MSG_CLOSE, NULL, NULL, 2000, &x) == DJN_OK)
            s_resp_free(&x);
    }
    if (!c->forked)
        djn_conn_destroy(&c->conn);
    c->connected = false;
    if (c->child > 0 && !c->forked) {
        djn_spawn_stop(c->child, 3000);
        djn_spawn_cleanup(c->endpoint);
    }
    c->child = 0;
    djn_fcache_clear(c->fcache);
    s_resend_clear(c);
    pthread_mutex_unlock(c->mu);
}

/* ------------------------------------------------------------------ handles */

/* A declaration rides the fragment being recorded, whatever its device (the server's
 * handle table is the session's, not a device's). When nothing is recorded or in flight,
 * the recorder moves to the storage's device first, so the node that follows (usually on
 * that device) does not flush a fragment of declarations and wait for it; with work in
 * flight it stays, since a later free recorded for another device could otherwise
 * overtake that work. */
static bool s_link_alloc(s_link_t *c, int device, uint64_t h, uint64_t nbytes) {
    if (c->connected && c->seq == c->acked && device >= 0 && device < c->ndev)
        djn_rec_use_device(c->rec, device); /* no effect unless the recorder is empty */
    return djn_rec_alloc(c->rec, h, nbytes) == DJN_OK && djn_map_put(&c->sizes, h, nbytes);
}

static void s_link_adopt(s_link_t *c, uint64_t handle, uint64_t nbytes) {
    pthread_mutex_lock(c->mu);
    djn_map_put(&c->sizes, handle, nbytes); /* a hint only: a failure costs a smaller fetch */
    djn_fcache_drop(c->fcache, handle);
    pthread_mutex_unlock(c->mu);
}

static djn_status_t s_flush_locked(s_link_t *c, bool wait, const djn_fetch_t *fetch, s_resp_t *out);

static void s_link_free(s_link_t *c, uint64_t handle) {
    pthread_mutex_lock(c->mu);
    djn_map_del(&c->sizes, handle, NULL);
    djn_fcache_drop(c->fcache, handle);
    if (!c->forked && !s_stale(c, handle)) {
        bool oom;
        djn_rec_free(c->rec, handle, &oom);
        if (oom && s_flush_locked(c, false, NULL, NULL) == DJN_OK)
            djn_rec_free(c->rec, handle, &oom); /* an empty recorder has room */
    }
    pthread_mutex_unlock(c->mu);
}

/* ------------------------------------------------------------------ recording */

/* Work for another device: everything pending or in flight for the current one runs to
 * completion first. Devices have separate worker queues on the server, so this wait is
 * what orders a storage declared (or produced) for one device before its use on another. */
static djn_status_t s_use_device(s_link_t *c, int device) {
    if (djn_rec_use_device(c->rec, device) == DJN_REC_OK && c->seq == c->acked)
        return DJN_OK;
    djn_status_t st = s_flush_locked(c, true, NULL, NULL);
    if (st == DJN_OK && djn_rec_use_device(c->rec, device) != DJN_REC_OK)
        st = s_fail(DJN_ERR_INTERNAL, "djinn: the recorder did not switch devices");
    return st;
}

static djn_status_t s_link_rec_begin(s_link_t *c, int device, const char *op, const char *overload,
                                     uint32_t nargs) {
    djn_status_t st = s_connect_locked(c);
    if (st != DJN_OK)
        return st;
    if (device < 0 || device >= c->ndev)
        return s_fail(DJN_ERR_DEVICE, "djinn: remote:%d does not exist (the server has %d devices)",
                      device, c->ndev);
    if (device != djn_rec_device(c->rec) && (st = s_use_device(c, device)) != DJN_OK)
        return st;
    c->rec_stale = false;
    if (djn_rec_begin(c->rec, op, overload, nargs) != DJN_OK)
        return s_fail(DJN_ERR_NOMEM, "djinn: out of memory recording a node");
    return DJN_OK;
}

static void s_link_rec_tensor(s_link_t *c, const djn_tref_t *t, bool written) {
    if (s_stale(c, t->handle))
        c->rec_stale = true;
    djn_sync_need(c->owner, t->handle); /* a weight still syncing: its upload goes first */
    djn_rec_tensor(c->rec, t, written);
}

static djn_status_t s_link_rec_end(s_link_t *c, uint32_t flags, djn_op_class_t cls,
                                   djn_phase_t phase) {
    if (c->rec_stale) {
        c->rec_stale = false;
        djn_rec_abort(c->rec);
        return s_stale_error();
    }
    uint32_t nw;
    const uint64_t *w = djn_rec_written(c->rec, &nw);
    for (uint32_t i = 0; i < nw; i++) /* a node writes them: cached bytes are stale */
        djn_fcache_drop(c->fcache, w[i]);
    djn_rec_state_t state;
    if (djn_rec_end(c->rec, flags, cls, phase, &state) != DJN_OK)
        return s_fail(DJN_ERR_NOMEM, "djinn: out of memory recording a node");
    c->ctr.nodes++;
    if (state == DJN_REC_FULL)
        return s_flush_locked(c, false, NULL, NULL);
    return DJN_OK;
}

/* ------------------------------------------------------------------ flush */

static void s_have_enc(djn_buf_t *b, const djn_msg_hdr_t *hdr, const void *arg) {
    djn_have_req_encode(b, hdr, arg);
}

/* Shadow Sync: offer the hashes of large uploads first; the server binds the handles
 * of content this tenant uploaded before and we drop those uploads. One round trip per
 * flush that carries large uploads. */
static djn_status_t s_offer_text(s_link_t *c) {
    uint32_t n = djn_rec_text_items(c->rec, NULL, 0);
    if (!n)
        return DJN_OK;
    if (c->seq > c->acked) { /* HAVE binds at once: earlier fragments must have run first */
        djn_status_t dst = s_drain(c);
        if (dst != DJN_OK)
            return dst;
    }
    djn_have_item_t *items = djn_calloc(n, sizeof(*items));
    if (!items)
        return s_fail(DJN_ERR_NOMEM, "djinn: out of host memory");
    djn_rec_text_items(c->rec, items, n);
    djn_have_req_t req = {(uint32_t)djn_rec_device(c->rec), n, items};
    s_resp_t x = {0};
    djn_status_t st = s_request(c, DJN_MSG_HAVE, s_have_enc, &req, c->timeout_ms, &x);
    djn_have_rep_t rep;
    char err[256];
    if (st == DJN_OK && djn_have_rep_parse(x.rep, &rep, err, sizeof err) != DJN_OK)
        st = s_fail(DJN_ERR_PROTO, "djinn: %s", err);
    if (st == DJN_OK) {
        uint32_t mi = 0;
        for (uint32_t i = 0; i < n; i++) { /* missing is ascending */
            if (mi < rep.nmissing && rep.missing[mi] == i) {
                mi++;
                continue;
            }
            c->ctr.dedup_bytes += items[i].nbytes;
            djn_rec_drop_upload(c->rec, items[i].handle);
        }
    }
    s_resp_free(&x);
    djn_free(items, n * sizeof(*items));
    return st;
}

/* Wait until no fragment is kept for a resend: each was answered, or resent and then
 * answered. */
static djn_status_t s_settle(s_link_t *c) {
    while (c->resend.len) {
        s_resp_t x = {0};
        djn_status_t st =
            s_wait(c, DJN_VEC_AT(&c->resend, s_resend_t, c->resend.len - 1).seq, c->timeout_ms, &x);
        if (st != DJN_OK)
            return st;
        s_resp_free(&x);
    }
    return DJN_OK;
}

/* An earlier fragment's error met while waiting for something else (t_msg says it): the
 * next sync point reports it, unless an earlier one is already kept. */
static void s_keep_pending(s_link_t *c, djn_status_t st) {
    if (c->pending_st != DJN_OK)
        return;
    c->pending_st = st;
    snprintf(c->pending_msg, sizeof c->pending_msg, "%s", t_msg);
}

/* At most S_MAX_OUTSTANDING requests in flight: past that, wait for the oldest; its error
 * is the next sync point's, like any asynchronous one. */
static djn_status_t s_bound_in_flight(s_link_t *c) {
    if (c->seq - c->acked <= S_MAX_OUTSTANDING)
        return DJN_OK;
    s_resp_t x = {0};
    djn_status_t st = s_wait(c, c->acked + 1, c->timeout_ms, &x);
    if (st == DJN_OK) {
        s_resp_free(&x);
    } else if (c->pending_st == DJN_OK && st != DJN_ERR_TIMEOUT && st != DJN_ERR_IO) {
        s_keep_pending(c, st);
        st = DJN_OK;
    }
    return st;
}

/* Wait until every fragment sent was answered; the first error among them (or one
 * pending from before) is the result. The answer of the last one may have come already,
 * ahead of its turn, so this waits for each unanswered seq in turn. */
static djn_status_t s_drain(s_link_t *c) {
    while (c->acked < c->seq) {
        s_resp_t x = {0};
        djn_status_t st = s_wait(c, c->acked + 1, c->timeout_ms, &x);
        if (st == DJN_OK) {
            s_resp_free(&x);
            continue;
        }
        if (c->broken || st == DJN_ERR_TIMEOUT || st == DJN_ERR_IO || st == DJN_ERR_SESSION)
            return st;
        s_keep_pending(c, st); /* a fragment's error: reported once the rest ran */
    }
    return c->pending_st != DJN_OK ? s_take_pending(c) : DJN_OK;
}

static djn_status_t s_flush_locked(s_link_t *c, bool wait, const djn_fetch_t *fetch,
                                   s_resp_t *out) {
    djn_status_t st = s_connect_locked(c);
    if (st != DJN_OK)
        return st;
    if ((st = s_offer_text(c)) != DJN_OK)
        return st;
    bool empty = djn_rec_empty(c->rec);
    if (empty && !fetch)
        return wait ? s_drain(c) : DJN_OK;
    if (djn_rec_nuploads(c->rec) && (st = s_settle(c)) != DJN_OK)
        return st;
    djn_graph_req_t g;
    if (djn_rec_seal(c->rec, fetch, &g) != DJN_OK)
        return s_fail(DJN_ERR_NOMEM, "djinn: out of memory sealing a fragment");
    g.qos = c->owner->qos;
    /* Plan cache: a fragment the server ran before goes as GRAPH_CACHED, without its
     * nodes, once the GRAPH that filed it was answered (the server files it when it runs
     * it); never with uploads. It is kept for a resend, and so is every fragment sent
     * while one is kept (s_resend_answer). */
    s_tpl_t *tpl = g.nnodes ? s_known_get(c, g.fp) : NULL;
    bool cached =
        c->plan_cache && tpl && tpl->filed <= c->acked && !g.nuploads && c->pending_st == DJN_OK;
    djn_graph_req_t plain = g;
    if (cached && !s_against(c, tpl, &g))
        cached = false;
    if (cached)
        g.sem_tpl = g.qos == tpl->qos && g.phase == tpl->phase && g.life_kept == tpl->life_kept &&
                    g.life_transient == tpl->life_transient;
    if ((cached || c->resend.len) && !s_resend_keep(c, c->seq + 1, &plain)) {
        if (c->resend.len)
            return s_fail(DJN_ERR_NOMEM, "djinn: out of memory keeping a fragment");
        cached = false;
        g = plain;
    }
    uint32_t nframes = g.nuploads;
    djn_frame_t *frames = nframes ? djn_calloc(nframes, sizeof(djn_frame_t)) : NULL;
    if (nframes && !frames)
        return s_fail(DJN_ERR_NOMEM, "djinn: out of memory");
    for (uint32_t i = 0; i < nframes; i++) {
        uint64_t n;
        uint8_t *bytes = djn_rec_take_upload(c->rec, i, &n);
        frames[i] = (djn_frame_t){bytes, n, s_free_bytes, (void *)(uintptr_t)n};
        c->ctr.uploads++;
        c->ctr.upload_bytes += n;
    }
    djn_buf_t b = {0};
    djn_msg_hdr_t hdr = {cached ? DJN_MSG_GRAPH_CACHED : DJN_MSG_GRAPH, c->sid, ++c->seq};
    djn_graph_req_encode(&b, &hdr, &g);
    st = s_send(c, &b, frames, nframes);
    if (st == DJN_OK && cached) {
        c->ctr.plan_cache_sends++;
    } else if (st == DJN_OK && g.nnodes) {
        s_known_put(c, &g);
        if ((tpl = s_known_get(c, g.fp)) != NULL)
            tpl->filed = hdr.seq;
    }
    djn_free(frames, g.nuploads * sizeof(djn_frame_t));
    djn_buf_release(&b);
    c->ctr.flushes++;
    djn_rec_reset(c->rec);
    if (st != DJN_OK)
        return st;
    if (!wait && !out)
        return s_bound_in_flight(c);
    s_resp_t x = {0};
    st = s_wait(c, hdr.seq, c->timeout_ms, &x);
    if (st != DJN_OK)
        return st;
    if (out)
        *out = x;
    else
        s_resp_free(&x);
    return DJN_OK;
}

static djn_status_t s_link_flush(s_link_t *c, bool wait) {
    pthread_mutex_lock(c->mu);
    djn_status_t st = s_flush_locked(c, wait, NULL, NULL);
    pthread_mutex_unlock(c->mu);
    return st;
}

static djn_status_t s_link_run_dynamic(s_link_t *c, djn_reply_t **reply, const djn_value_t **dyn) {
    *reply = NULL;
    *dyn = NULL;
    pthread_mutex_lock(c->mu);
    c->ctr.dynamic_syncs++;
    s_resp_t x = {0};
    djn_status_t st = s_flush_locked(c, true, NULL, &x);
    if (st == DJN_OK) {
        djn_graph_rep_t rep;
        char err[256];
        if (djn_graph_rep_parse(x.rep, &rep, err, sizeof err) != DJN_OK || !rep.dyn) {
            st = s_fail(DJN_ERR_PROTO,
                        "djinn: the server's reply lacks the results of a data-dependent op");
            s_resp_free(&x);
        } else {
            *dyn = rep.dyn;
            *reply = x.rep;
            x.rep = NULL;
            s_resp_free(&x);
        }
    }
    pthread_mutex_unlock(c->mu);
    return st;
}

djn_status_t djn_client_check_host(uint64_t nbytes) {
    if (nbytes < DJN_CLIENT_HOST_CHECK_MIN)
        return DJN_OK;
    const char *what = NULL;
    uint64_t usable = djn_hostmem_usable(&what);
    uint64_t need = nbytes > UINT64_MAX / 2 ? UINT64_MAX : 2 * nbytes; /* frame + tensor */
    if (need <= usable)
        return DJN_OK;
    return s_fail(DJN_ERR_OOM,
                  "djinn: materialising %llu bytes of a remote tensor on this host needs about "
                  "%llu bytes (the received frame and the CPU tensor) but this process can use "
                  "%llu more (%s); keep the tensor on 'remote', or bring a slice or a reduction "
                  "of it to the CPU",
                  (unsigned long long)nbytes, (unsigned long long)need, (unsigned long long)usable,
                  what);
}

/* Bytes [off, off+n) of a storage into dst; or, with keep, the reply's own frame: *keep
 * takes the received message and dst is set to point at the bytes in it (no copy, no
 * fetch cache). */
static djn_status_t s_link_read(s_link_t *c, int device, uint64_t handle, uint64_t off, uint64_t n,
                                void *dst, djn_rx_t **keep) {
    if (n == 0)
        return DJN_OK;
    pthread_mutex_lock(c->mu);
    djn_status_t st = DJN_OK;
    if (c->connected && s_stale(c, handle)) {
        st = s_stale_error();
        pthread_mutex_unlock(c->mu);
        return st;
    }
    if (!keep && djn_fcache_read(c->fcache, handle, off, n, dst)) {
        /* still flush pending work so errors surface at this sync point */
        if (!djn_rec_empty(c->rec) || c->seq > c->acked)
            st = s_flush_locked(c, true, NULL, NULL);
        if (st == DJN_OK)
            c->ctr.fetch_cache_hits++;
        pthread_mutex_unlock(c->mu);
        return st;
    }
    uint64_t total = 0;
    djn_map_get(&c->sizes, handle, &total);
    djn_fetch_t f = {handle, off, n};
    if (!keep && total >= off + n && total <= S_CACHE_WHOLE_LIMIT) { /* the whole storage */
        f.offset = 0;
        f.nbytes = total;
    }
    if (device != djn_rec_device(c->rec))
        st = s_use_device(c, device);
    if (st == DJN_OK) {
        c->owner->cur = c;               /* the hook stages into this link's fragment */
        djn_sync_need(c->owner, handle); /* a weight still syncing: its upload goes first */
    }
    if (st == DJN_OK) {
        s_resp_t x = {0};
        st = s_flush_locked(c, true, &f, &x);
        if (st == DJN_OK) {
            size_t len = 0;
            const void *bytes = djn_rx_nframes(x.rx) >= 1 ? djn_rx_frame(x.rx, 1, &len) : NULL;
            if (!bytes || len != f.nbytes) {
                st = s_fail(DJN_ERR_PROTO, "djinn: fetch of %llu bytes returned %zu",
                            (unsigned long long)f.nbytes, len);
            } else if (keep) {
                c->ctr.fetches++;
                c->ctr.fetch_bytes += len;
                *(const void **)dst = bytes;
                *keep = x.rx;
                x.rx = NULL;
            } else {
                c->ctr.fetches++;
                c->ctr.fetch_bytes += len;
                memcpy(dst, (const uint8_t *)bytes + (off - f.offset), n);
                if (f.nbytes <= S_CACHE_WHOLE_LIMIT)
                    djn_fcache_put(c->fcache, handle, f.offset, bytes, f.nbytes);
            }
            s_resp_free(&x);
        }
    }
    pthread_mutex_unlock(c->mu);
    return st;
}

/* ZeroMQ let go of a frame of a direct upload (its I/O thread, or a failed send). */
static void s_released_fn(void *data, void *hint) {
    (void)data;
    s_link_t *c = hint;
    pthread_mutex_lock(&c->rel_mu);
    c->released++;
    pthread_cond_signal(&c->rel_cv);
    pthread_mutex_unlock(&c->rel_mu);
}

/* Wait until ZeroMQ has let go of `sent` frames of the caller's memory. If it does not
 * within the request timeout (the server stopped reading), the connection is torn down:
 * closing it makes ZeroMQ drop what it still holds, so the caller's memory is never read
 * after this returns. */
static djn_status_t s_wait_released(s_link_t *c, uint64_t sent) {
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += c->timeout_ms / 1000;
    bool late = false;
    pthread_mutex_lock(&c->rel_mu);
    while (c->released < sent && !late)
        late = pthread_cond_timedwait(&c->rel_cv, &c->rel_mu, &dl) != 0 && c->released < sent;
    pthread_mutex_unlock(&c->rel_mu);
    if (!late)
        return DJN_OK;
    c->broken = true;
    djn_heartbeat_stop(&c->hb);
    djn_conn_destroy(&c->conn); /* ZeroMQ's context ends: every frame is let go of */
    pthread_mutex_lock(&c->rel_mu);
    while (c->released < sent)
        pthread_cond_wait(&c->rel_cv, &c->rel_mu);
    pthread_mutex_unlock(&c->rel_mu);
    return s_fail(DJN_ERR_TIMEOUT,
                  "djinn: the server at %s did not take an upload within %d ms (DJINN_TIMEOUT); "
                  "the connection was closed",
                  c->endpoint, c->timeout_ms);
}

/* HAVE for one upload: *held when the server bound the handle to content this tenant
 * uploaded before (nothing to send). */
static djn_status_t s_have_one(s_link_t *c, uint64_t handle, XXH128_hash_t h, uint64_t n,
                               bool *held) {
    *held = false;
    djn_status_t st = c->pending_st == DJN_OK ? s_drain(c) : DJN_OK; /* HAVE binds at once */
    if (st != DJN_OK && !c->broken && st != DJN_ERR_TIMEOUT && st != DJN_ERR_IO &&
        st != DJN_ERR_SESSION) {
        s_keep_pending(c, st); /* an earlier fragment's error: still the next sync point's */
        st = DJN_OK;
    }
    if (st != DJN_OK || c->pending_st != DJN_OK) /* the upload goes, and fails, in order */
        return st;
    djn_have_item_t item = {handle, h.high64, h.low64, n};
    djn_have_req_t req = {(uint32_t)djn_rec_device(c->rec), 1, &item};
    s_resp_t x = {0};
    st = s_request(c, DJN_MSG_HAVE, s_have_enc, &req, c->timeout_ms, &x);
    djn_have_rep_t rep;
    char err[256];
    if (st == DJN_OK && djn_have_rep_parse(x.rep, &rep, err, sizeof err) != DJN_OK)
        st = s_fail(DJN_ERR_PROTO, "djinn: %s", err);
    if (st == DJN_OK)
        *held = rep.nmissing == 0;
    s_resp_free(&x);
    return st;
}

/* A large upload, sent now from the caller's memory without a copy (PROTOCOL.md 7.7):
 *   1. pending work goes first (it declares the handle, and may name it);
 *   2. Text content (DJINN_TEXT_MIN_BYTES) is offered by its hash: held, nothing is sent;
 *   3. the bytes go as chunks of c->chunk bytes, each its own GRAPH whose only frame
 *      points into the caller's memory: the server writes chunk k into the destination
 *      while chunk k+1 is on the wire, and its receive buffers stay small and warm;
 *      replies are collected like those of any asynchronous fragment (at most
 *      S_MAX_OUTSTANDING in flight, errors at the next sync point);
 *   4. return once ZeroMQ has let go of every frame: the caller may then change or free
 *      its tensor (a snapshot, like a copy, without the copy).
 * Rejected: a staging copy (one more pass over memory whose pages are fresh: on the
 * 2-core VM a 64 MiB copy into fresh pages costs ~140 ms, the transfer itself ~100 ms),
 * and the caller's storage made copy-on-write instead of waiting (a numpy array or raw
 * pointer made before could still write to the bytes while they wait to be sent). */
static djn_status_t s_upload_direct(s_link_t *c, uint64_t handle, const uint8_t *bytes,
                                    uint64_t n) {
    djn_status_t st = s_flush_locked(c, false, NULL, NULL); /* 1 */
    if (st == DJN_OK)
        st = s_settle(c); /* uploads are never kept for a resend */
    if (st != DJN_OK)
        return st;
    djn_fcache_drop(c->fcache, handle);
    c->ctr.uploads++;
    bool text = n >= c->text_min;
    if (text) { /* 2 */
        bool held;
        if ((st = s_have_one(c, handle, XXH3_128bits(bytes, n), n, &held)) != DJN_OK)
            return st;
        if (held) {
            c->ctr.dedup_bytes += n;
            return DJN_OK;
        }
    }
    pthread_mutex_lock(&c->rel_mu);
    c->released = 0;
    pthread_mutex_unlock(&c->rel_mu);
    uint64_t sent = 0;
    djn_buf_t b = {0};
    for (uint64_t off = 0; st == DJN_OK && off < n; off += c->chunk) { /* 3 */
        uint64_t len = n - off < c->chunk ? n - off : c->chunk;
        djn_upload_t up = {handle, 1, text, true, off, n};
        djn_graph_req_t g = {
            .device = (uint32_t)djn_rec_device(c->rec), .seed = -1, .nuploads = 1, .uploads = &up};
        djn_msg_hdr_t hdr = {DJN_MSG_GRAPH, c->sid, ++c->seq};
        djn_buf_reset(&b);
        djn_graph_req_encode(&b, &hdr, &g);
        if (b.failed) {
            c->seq--; /* never sent: no reply to wait for */
            st = s_fail(DJN_ERR_NOMEM, "djinn: out of memory encoding a request");
            break;
        }
        djn_frame_t f = {bytes + off, len, s_released_fn, c};
        sent++; /* ZeroMQ owns the frame now, or the failed send let go of it */
        st = s_send(c, &b, &f, 1);
        c->ctr.upload_bytes += st == DJN_OK ? len : 0;
        if (st == DJN_OK)
            st = s_bound_in_flight(c);
    }
    djn_buf_release(&b);
    djn_status_t rst = s_wait_released(c, sent); /* 4 */
    return st != DJN_OK ? st : rst;
}

static djn_status_t s_link_upload(s_link_t *c, int device, uint64_t handle, const void *bytes,
                                  uint64_t n) {
    pthread_mutex_lock(c->mu);
    djn_status_t st = s_connect_locked(c);
    if (st == DJN_OK && device != djn_rec_device(c->rec))
        st = s_use_device(c, device);
    if (st == DJN_OK && n && n >= c->chunk) {
        st = s_upload_direct(c, handle, bytes, n);
        pthread_mutex_unlock(c->mu);
        return st;
    }
    /* an upload replaces the storage before the fragment's nodes run: if a pending node
     * names this storage, that node must run first */
    if (st == DJN_OK && djn_rec_nnodes(c->rec) && djn_rec_names(c->rec, handle))
        st = s_flush_locked(c, false, NULL, NULL);
    if (st == DJN_OK && (djn_rec_nuploads(c->rec) >= S_UPLOADS_PER_MSG ||
                         djn_rec_upload_bytes(c->rec) + n > S_UPLOAD_BYTES_PER_MSG))
        st = s_flush_locked(c, false, NULL, NULL);
    uint8_t *copy = NULL;
    if (st == DJN_OK && !(copy = djn_malloc(n)))
        st = s_fail(DJN_ERR_NOMEM, "djinn: out of host memory staging an upload of %llu bytes",
                    (unsigned long long)n);
    if (st == DJN_OK) {
        memcpy(copy, bytes, n);
        bool text = n && n >= c->text_min;
        XXH128_hash_t h = text ? XXH3_128bits(copy, n) : (XXH128_hash_t){0, 0};
        if (djn_rec_upload(c->rec, handle, copy, n, text, h.high64, h.low64) != DJN_OK)
            st = s_fail(DJN_ERR_NOMEM, "djinn: out of host memory");
        djn_fcache_drop(c->fcache, handle);
    }
    pthread_mutex_unlock(c->mu);
    return st;
}

static void s_link_seed(s_link_t *c, uint64_t seed) {
    pthread_mutex_lock(c->mu);
    int64_t s = (int64_t)(seed & INT64_MAX);
    if (c->connected && !c->broken && !c->forked) {
        /* in program order with the ops around it: a node of its own */
        djn_status_t st = s_link_rec_begin(c, djn_rec_device(c->rec), "djinn::seed", "", 1);
        if (st == DJN_OK) {
            djn_enc_int(djn_rec_buf(c->rec), s);
            djn_rec_outs(c->rec, 0);
            st = s_link_rec_end(c, 0, DJN_CLASS_MEMORY, DJN_PHASE_NONE);
        }
        if (st == DJN_OK) {
            pthread_mutex_unlock(c->mu);
            return;
        }
    }
    djn_rec_set_seed(c->rec, s); /* before the first connection: sent with the first fragment */
    pthread_mutex_unlock(c->mu);
}

static djn_status_t s_link_stats(s_link_t *c, djn_stats_rep_t *out) {
    pthread_mutex_lock(c->mu);
    djn_status_t st = s_flush_locked(c, true, NULL, NULL);
    if (st == DJN_OK) {
        s_resp_t x = {0};
        st = s_request(c, DJN_MSG_STATS, NULL, NULL, c->timeout_ms, &x);
        char err[256];
        if (st == DJN_OK && djn_stats_rep_parse(x.rep, out, err, sizeof err) != DJN_OK)
            st = s_fail(DJN_ERR_PROTO, "djinn: %s", err);
        s_resp_free(&x);
    }
    pthread_mutex_unlock(c->mu);
    return st;
}

/* ------------------------------------------------------------------ many servers
 *
 * DJINN_SERVER may list several servers (tcp://a:5555,tcp://b:5555). Each gets a link
 * of its own: its connection, session, lease and heartbeat, its recorder and fetch
 * cache. Global device numbers run over the servers in the order listed: remote:0..n-1
 * are the first server's n devices, and so on. The map is fixed by the first connection
 * (every server must answer it) and a server that comes back with another device count
 * is refused, so that a device number never changes meaning in a process.
 *
 * Nothing crosses between servers: a copy between devices of different servers is a
 * download into the client and an upload (RemoteKernels.cpp), and each server runs only
 * its own fragments. A server that dies fails the calls on its devices, with its
 * endpoint in the message; the other servers keep working. With one entry (or none: the
 * embedded server) there is one link and global device numbers are the server's. */

/* The links, from DJINN_SERVER, at first use; no I/O. */
static djn_status_t s_links_make(djn_client_t *c) {
    if (c->nlinks)
        return DJN_OK;
    const char *env = getenv("DJINN_SERVER");
    char list[S_MAX_SERVERS * 258], *save = NULL;
    if (env && strlen(env) >= sizeof list)
        return s_fail(DJN_ERR_ARGS, "djinn: DJINN_SERVER is longer than %zu characters",
                      sizeof list - 1);
    snprintf(list, sizeof list, "%s", env ? env : "");
    const char *wants[S_MAX_SERVERS];
    int n = 0;
    for (char *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ' || *tok == '\t')
            tok++;
        char *end = tok + strlen(tok);
        while (end > tok && (end[-1] == ' ' || end[-1] == '\t'))
            *--end = 0;
        if (!*tok)
            continue;
        if (n == S_MAX_SERVERS)
            return s_fail(DJN_ERR_ARGS, "djinn: DJINN_SERVER lists more than %d servers",
                          S_MAX_SERVERS);
        if (strlen(tok) >= sizeof c->links[0]->want)
            return s_fail(DJN_ERR_ARGS, "djinn: DJINN_SERVER entry '%.64s...' is too long", tok);
        wants[n++] = tok;
    }
    if (n == 0)
        wants[n++] = ""; /* the embedded server */
    for (int i = 0; i < n; i++) {
        s_link_t *l = s_link_new(c, wants[i]);
        if (!l) {
            for (int k = 0; k < c->nlinks; k++)
                s_link_destroy(&c->links[k]);
            c->nlinks = 0;
            return s_fail(DJN_ERR_NOMEM, "djinn: out of host memory");
        }
        l->multi = n > 1;
        c->links[c->nlinks++] = l;
    }
    size_t off = 0;
    for (int i = 0; i < n; i++)
        off += (size_t)snprintf(c->endpoints + off, sizeof c->endpoints - off, "%s%s", i ? "," : "",
                                c->links[i]->want);
    return DJN_OK;
}

/* Connect every server (each link reconnects on its own after a loss); the first
 * connection of all of them fixes the device map. Stops at the first failure. */
static djn_status_t s_connect_all(djn_client_t *c) {
    djn_status_t st = s_links_make(c);
    for (int i = 0; st == DJN_OK && i < c->nlinks; i++)
        st = s_connect_locked(c->links[i]);
    if (st == DJN_OK && !c->mapped) {
        c->ndev = 0;
        for (int i = 0; i < c->nlinks; i++) {
            c->links[i]->dev0 = c->ndev;
            c->ndev += c->links[i]->ndev_fixed;
        }
        c->mapped = true;
    }
    if (c->nlinks == 1) /* one server: its device count is the count, as it answers now */
        c->ndev = c->links[0]->ndev;
    return st;
}

/* The link serving global device `device`, and its number there. One server: no map is
 * needed (the link checks the number itself once connected). */
static s_link_t *s_route(djn_client_t *c, int device, int *local) {
    if (s_links_make(c) != DJN_OK)
        return NULL;
    if (c->nlinks == 1) {
        *local = device;
        return c->links[0];
    }
    if (!c->mapped && s_connect_all(c) != DJN_OK)
        return NULL;
    for (int i = 0; i < c->nlinks; i++) {
        s_link_t *l = c->links[i];
        if (device >= l->dev0 && device < l->dev0 + l->ndev_fixed) {
            *local = device - l->dev0;
            return l;
        }
    }
    s_fail(DJN_ERR_DEVICE,
           "djinn: remote:%d does not exist (the %d servers of DJINN_SERVER have %d devices)",
           device, c->nlinks, c->ndev);
    return NULL;
}

/* The link holding a live handle (several servers: the one whose handle table has it). */
static s_link_t *s_owner(djn_client_t *c, uint64_t handle) {
    if (c->nlinks == 1)
        return c->links[0];
    for (int i = 0; i < c->nlinks; i++)
        if (djn_map_get(&c->links[i]->sizes, handle, NULL))
            return c->links[i];
    return NULL;
}

/* Keep the first failure's words while later calls overwrite the thread's last error. */
typedef struct {
    djn_status_t st;
    char msg[sizeof t_msg];
} s_first_t;

static void s_first_note(s_first_t *f, djn_status_t st) {
    if (st != DJN_OK && f->st == DJN_OK) {
        f->st = st;
        snprintf(f->msg, sizeof f->msg, "%s", t_msg);
    }
}

static djn_status_t s_first_take(const s_first_t *f) {
    return f->st == DJN_OK ? DJN_OK : s_fail(f->st, "%s", f->msg);
}

djn_status_t djn_client_connect(djn_client_t *c) {
    pthread_mutex_lock(&c->mu);
    djn_status_t st = s_connect_all(c);
    pthread_mutex_unlock(&c->mu);
    return st;
}

int djn_client_device_count(djn_client_t *c) {
    pthread_mutex_lock(&c->mu);
    djn_status_t st = s_connect_all(c);
    /* several servers: the map stays whole while one of them is down (its devices fail
     * when used, naming it); one server: as before, 0 when it cannot be reached */
    int n = st == DJN_OK || (c->mapped && c->nlinks > 1) ? c->ndev : 0;
    pthread_mutex_unlock(&c->mu);
    return n;
}

const char *djn_client_device_name(djn_client_t *c, int i) {
    pthread_mutex_lock(&c->mu);
    const char *name = "";
    if (c->mapped || c->nlinks == 1) {
        int local;
        s_link_t *l = s_route(c, i, &local);
        if (l && local >= 0 && local < l->ndev)
            name = l->devnames[local];
    }
    pthread_mutex_unlock(&c->mu);
    return name;
}

int djn_client_server_count(djn_client_t *c) {
    pthread_mutex_lock(&c->mu);
    int n = s_links_make(c) == DJN_OK ? c->nlinks : 0;
    pthread_mutex_unlock(&c->mu);
    return n;
}

bool djn_client_server_info(djn_client_t *c, int server, djn_client_server_t *out) {
    pthread_mutex_lock(&c->mu);
    bool ok = s_links_make(c) == DJN_OK && server >= 0 && server < c->nlinks;
    if (ok) {
        s_link_t *l = c->links[server];
        memset(out, 0, sizeof(*out));
        snprintf(out->endpoint, sizeof out->endpoint, "%s", l->endpoint[0] ? l->endpoint : l->want);
        out->first_device = c->mapped ? l->dev0 : -1;
        out->ndevices = l->ndev_fixed;
        out->session_id = l->connected && !l->broken ? l->sid : 0;
    }
    pthread_mutex_unlock(&c->mu);
    return ok;
}

int djn_client_device_server(djn_client_t *c, int device, int *local) {
    pthread_mutex_lock(&c->mu);
    int idx = -1;
    s_link_t *l = s_route(c, device, local);
    for (int i = 0; l && i < c->nlinks; i++)
        if (c->links[i] == l)
            idx = i;
    pthread_mutex_unlock(&c->mu);
    return idx;
}

const char *djn_client_endpoint(djn_client_t *c) {
    return c->nlinks == 1 ? c->links[0]->endpoint : c->endpoints;
}

uint64_t djn_client_session_id(djn_client_t *c) {
    return c->nlinks ? c->links[0]->sid : 0;
}

/* ------------------------------------------------------------------ placement
 *
 * 'remote' without an index means the device the servers choose for this process
 * (PROTOCOL.md 5.6), asked once, at the first use of the default device, with whatever
 * hints the caller has (a model of the server's store, content hashes of weights about
 * to be uploaded). One server: one PLACE. Several: a probe of each (nothing recorded),
 * then a PLACE to the chosen one, which counts the session there: the most hinted bytes
 * held, then the lightest load (when the server tells it: operators), then the first
 * listed. One device in all, or DJINN_PLACE=0: device 0, nothing asked. The answer is
 * kept for the life of the client (a lost session does not move the default device:
 * Python code may hold torch.device objects naming it). */
static void s_place_enc(djn_buf_t *b, const djn_msg_hdr_t *hdr, const void *arg) {
    djn_place_req_encode(b, hdr, arg);
}

static djn_status_t s_link_place(s_link_t *l, const djn_place_req_t *req, djn_place_rep_t *rep) {
    s_resp_t x = {0};
    djn_status_t st = s_request(l, DJN_MSG_PLACE, s_place_enc, req, l->timeout_ms, &x);
    char err[256];
    if (st == DJN_OK && djn_place_rep_parse(x.rep, rep, err, sizeof err) != DJN_OK)
        st = s_fail(DJN_ERR_PROTO, "djinn: %s", err);
    if (st == DJN_OK && (int)rep->device >= l->ndev)
        st = s_fail(DJN_ERR_PROTO, "djinn: PLACE chose device %u of a server with %d", rep->device,
                    l->ndev);
    s_resp_free(&x);
    return st;
}

/* Is a better than b (a later-listed server)? */
static bool s_place_better(const djn_place_rep_t *a, const djn_place_rep_t *b) {
    if (a->held != b->held)
        return a->held > b->held;
    if (a->has_load && b->has_load && a->sessions + a->backlog != b->sessions + b->backlog)
        return a->sessions + a->backlog < b->sessions + b->backlog;
    return a->has_load && b->has_load && a->used < b->used;
}

djn_status_t djn_client_place(djn_client_t *c, const char *model, const djn_place_hash_t *hashes,
                              uint32_t nhashes, int *device) {
    pthread_mutex_lock(&c->mu);
    djn_status_t st = DJN_OK;
    if (c->placed < 0) {
        const char *env = getenv("DJINN_PLACE");
        bool off = env && *env && !strcmp(env, "0");
        st = s_connect_all(c);
        if (st == DJN_OK && (off || c->ndev <= 1)) {
            c->placed = 0;
        } else if (st == DJN_OK) {
            djn_place_req_t req = {model, nhashes, hashes, c->nlinks > 1};
            djn_place_rep_t best = {0}, r;
            int at = -1;
            for (int i = 0; st == DJN_OK && c->nlinks > 1 && i < c->nlinks; i++)
                if ((st = s_link_place(c->links[i], &req, &r)) == DJN_OK &&
                    (at < 0 || s_place_better(&r, &best))) {
                    best = r;
                    at = i;
                }
            req.probe = false;
            if (st == DJN_OK && (st = s_link_place(c->links[at < 0 ? 0 : at], &req, &r)) == DJN_OK)
                c->placed = c->links[at < 0 ? 0 : at]->dev0 + (int)r.device;
        }
    }
    *device = c->placed;
    pthread_mutex_unlock(&c->mu);
    return st;
}

void djn_client_content_hash(const void *bytes, uint64_t n, uint64_t out[2]) {
    XXH128_hash_t h = XXH3_128bits(bytes, (size_t)n);
    out[0] = h.high64;
    out[1] = h.low64;
}

void djn_client_shutdown(djn_client_t *c) {
    /* stop the heartbeats before taking the lock: a tick may be waiting for it */
    for (int i = 0; i < c->nlinks; i++)
        if (!c->links[i]->forked)
            djn_heartbeat_stop(&c->links[i]->hb);
    pthread_mutex_lock(&c->mu);
    for (int i = 0; i < c->nlinks; i++)
        s_link_shutdown(c->links[i]);
    pthread_mutex_unlock(&c->mu);
}

/* A fresh handle's address range. A power of two: a storage that grows a little (the KV
 * cache, step by step) keeps its span, so the handles of a step stay at one shift from the
 * last step's (compact GRAPH_CACHED binds, djn_sym.h); addresses are free, the bytes are
 * nbytes. */
static uint64_t s_take_va(uint64_t nbytes) {
    uint64_t span = 2 * S_HANDLE_ALIGN;
    while (span < nbytes + S_HANDLE_ALIGN && span < (1ull << 62))
        span <<= 1;
    return atomic_fetch_add(&s_next_va, span);
}

uint64_t djn_client_alloc(djn_client_t *c, int device, uint64_t nbytes) {
    uint64_t h = s_take_va(nbytes);
    pthread_mutex_lock(&c->mu);
    int local;
    s_link_t *l = s_route(c, device, &local);
    bool ok = l && s_link_alloc(l, local, h, nbytes);
    pthread_mutex_unlock(&c->mu);
    return ok ? h : 0;
}

void djn_client_adopt(djn_client_t *c, int device, uint64_t handle, uint64_t nbytes) {
    pthread_mutex_lock(&c->mu);
    int local;
    s_link_t *l = s_route(c, device, &local);
    if (l)
        s_link_adopt(l, handle, nbytes);
    pthread_mutex_unlock(&c->mu);
}

uint64_t djn_client_nbytes_hint(djn_client_t *c, uint64_t handle) {
    uint64_t n = 0;
    pthread_mutex_lock(&c->mu);
    s_link_t *l = s_owner(c, handle);
    if (l)
        djn_map_get(&l->sizes, handle, &n);
    pthread_mutex_unlock(&c->mu);
    return n;
}

void djn_client_free(djn_client_t *c, uint64_t handle) {
    pthread_mutex_lock(&c->mu);
    s_link_t *l = s_owner(c, handle); /* none: never made (no server answered) */
    if (l)
        s_link_free(l, handle);
    pthread_mutex_unlock(&c->mu);
}

djn_status_t djn_client_rec_begin(djn_client_t *c, int device, const char *op, const char *overload,
                                  uint32_t nargs) {
    int local;
    s_link_t *l = s_route(c, device, &local);
    if (!l)
        return t_st;
    c->cur = c->last = l;
    return s_link_rec_begin(l, local, op, overload, nargs);
}

djn_buf_t *djn_client_rec_buf(djn_client_t *c) {
    return djn_rec_buf(c->cur->rec);
}

void djn_client_rec_tensor(djn_client_t *c, const djn_tref_t *t, bool written) {
    s_link_rec_tensor(c->cur, t, written);
}

void djn_client_rec_outs(djn_client_t *c, uint32_t nouts) {
    djn_rec_outs(c->cur->rec, nouts);
}

void djn_client_rec_abort(djn_client_t *c) {
    djn_rec_abort(c->cur->rec);
}

djn_status_t djn_client_rec_end(djn_client_t *c, uint32_t flags, djn_op_class_t cls,
                                djn_phase_t phase) {
    return s_link_rec_end(c->cur, flags, cls, phase);
}

djn_status_t djn_client_flush(djn_client_t *c, bool wait) {
    pthread_mutex_lock(&c->mu);
    s_first_t first = {s_links_make(c), ""};
    if (first.st != DJN_OK)
        snprintf(first.msg, sizeof first.msg, "%s", t_msg);
    for (int i = 0; i < c->nlinks; i++) /* a server never used has nothing to send */
        if (c->nlinks == 1 || c->links[i]->connected || !djn_rec_empty(c->links[i]->rec))
            s_first_note(&first, s_link_flush(c->links[i], wait));
    djn_status_t st = s_first_take(&first);
    pthread_mutex_unlock(&c->mu);
    return st;
}

djn_status_t djn_client_run_dynamic(djn_client_t *c, djn_reply_t **reply, const djn_value_t **dyn) {
    pthread_mutex_lock(&c->mu);
    djn_status_t st =
        c->cur ? s_link_run_dynamic(c->cur, reply, dyn)
               : s_fail(DJN_ERR_INTERNAL, "djinn: a data-dependent op ran before any was recorded");
    pthread_mutex_unlock(&c->mu);
    return st;
}

djn_status_t djn_client_read(djn_client_t *c, int device, uint64_t handle, uint64_t off, uint64_t n,
                             void *dst) {
    pthread_mutex_lock(&c->mu);
    int local;
    s_link_t *l = s_route(c, device, &local);
    djn_status_t st = l ? s_link_read(l, local, handle, off, n, dst, NULL) : t_st;
    pthread_mutex_unlock(&c->mu);
    return st;
}

djn_status_t djn_client_read_frame(djn_client_t *c, int device, uint64_t handle, uint64_t off,
                                   uint64_t n, const void **data, void **keep) {
    *data = NULL;
    *keep = NULL;
    if (!n)
        return s_fail(DJN_ERR_ARGS, "djinn: a read of 0 bytes has no frame");
    pthread_mutex_lock(&c->mu);
    int local;
    s_link_t *l = s_route(c, device, &local);
    djn_rx_t *rx = NULL;
    djn_status_t st = l ? s_link_read(l, local, handle, off, n, (void *)data, &rx) : t_st;
    pthread_mutex_unlock(&c->mu);
    *keep = rx;
    return st;
}

void djn_client_frame_free(void *keep) {
    djn_rx_t *rx = keep;
    djn_rx_free(&rx);
}

djn_status_t djn_client_upload(djn_client_t *c, int device, uint64_t handle, const void *bytes,
                               uint64_t n) {
    pthread_mutex_lock(&c->mu);
    int local;
    s_link_t *l = s_route(c, device, &local);
    djn_status_t st = l ? s_link_upload(l, local, handle, bytes, n) : t_st;
    pthread_mutex_unlock(&c->mu);
    return st;
}

void djn_client_seed(djn_client_t *c, uint64_t seed) {
    pthread_mutex_lock(&c->mu);
    if (s_links_make(c) == DJN_OK)
        for (int i = 0; i < c->nlinks; i++) /* every server's generators, like manual_seed_all */
            s_link_seed(c->links[i], seed);
    pthread_mutex_unlock(&c->mu);
}

djn_status_t djn_client_stats(djn_client_t *c, int device, djn_stats_rep_t *out) {
    pthread_mutex_lock(&c->mu);
    int local;
    s_link_t *l = s_route(c, device < 0 ? 0 : device, &local);
    djn_status_t st = l ? s_link_stats(l, out) : t_st;
    pthread_mutex_unlock(&c->mu);
    return st;
}

void djn_client_counters(djn_client_t *c, djn_stats_client_t *out) {
    pthread_mutex_lock(&c->mu);
    memset(out, 0, sizeof(*out));
#define S_ADD_(name, type, py, doc) out->name += l->ctr.name;
    for (int i = 0; i < c->nlinks; i++) {
        const s_link_t *l = c->links[i];
        DJN_STATS_CLIENT(S_ADD_)
    }
#undef S_ADD_
    pthread_mutex_unlock(&c->mu);
}

void djn_client_counters_reset(djn_client_t *c) {
    pthread_mutex_lock(&c->mu);
    for (int i = 0; i < c->nlinks; i++)
        memset(&c->links[i]->ctr, 0, sizeof c->links[i]->ctr);
    pthread_mutex_unlock(&c->mu);
}

uint32_t djn_client_srg(djn_client_t *c, djn_srg_node_t *out, uint32_t cap, uint64_t fp[2]) {
    pthread_mutex_lock(&c->mu);
    uint32_t n = 0;
    if (c->last)
        n = djn_rec_srg(c->last->rec, out, cap, fp);
    else
        fp[0] = fp[1] = 0;
    pthread_mutex_unlock(&c->mu);
    return n;
}

/* ------------------------------------------------------------------ ghost loading */

static void s_load_enc(djn_buf_t *b, const djn_msg_hdr_t *hdr, const void *arg) {
    djn_load_req_encode(b, hdr, arg);
}

djn_status_t djn_client_load_model(djn_client_t *c, const djn_load_req_t *req, djn_reply_t **reply,
                                   djn_load_rep_t *rep) {
    *reply = NULL;
    pthread_mutex_lock(&c->mu);
    int local;
    s_link_t *l = s_route(c, (int)req->device, &local);
    djn_status_t st = l ? s_connect_locked(l) : t_st;
    if (st == DJN_OK && local >= l->ndev)
        st = s_fail(DJN_ERR_DEVICE, "djinn: remote:%u does not exist (the server has %d devices)",
                    req->device, l->ndev);
    djn_load_req_t on = *req; /* the device as that server numbers it */
    on.device = (uint32_t)local;
    s_resp_t x = {0};
    if (st == DJN_OK)
        st = s_request(l, DJN_MSG_LOAD_MODEL, s_load_enc, &on, l->timeout_ms, &x);
    char err[256];
    if (st == DJN_OK && djn_load_rep_parse(x.rep, rep, err, sizeof err) != DJN_OK)
        st = s_fail(DJN_ERR_PROTO, "djinn: %s", err);
    if (st == DJN_OK) {
        *reply = x.rep;
        x.rep = NULL;
    }
    s_resp_free(&x);
    pthread_mutex_unlock(&c->mu);
    return st;
}

uint64_t djn_client_reserve(djn_client_t *c, int device, uint64_t nbytes) {
    uint64_t h = s_take_va(nbytes);
    pthread_mutex_lock(&c->mu);
    int local;
    s_link_t *l = s_route(c, device, &local);
    if (l)
        djn_map_put(&l->sizes, h, nbytes); /* a hint only (and which server holds it) */
    pthread_mutex_unlock(&c->mu);
    return h;
}

djn_status_t djn_client_stage_upload(djn_client_t *c, int device, uint64_t handle, uint8_t *bytes,
                                     uint64_t n) {
    int local;
    s_link_t *l = s_route(c, device, &local);
    djn_status_t st = l ? s_connect_locked(l) : t_st;
    if (st == DJN_OK && local != djn_rec_device(l->rec))
        st = s_use_device(l, local); /* never mid-node: a node's tensors share its device */
    if (st != DJN_OK) {
        djn_free(bytes, n);
        return st;
    }
    bool text = n && n >= l->text_min;
    XXH128_hash_t h = text ? XXH3_128bits(bytes, n) : (XXH128_hash_t){0, 0};
    djn_fcache_drop(l->fcache, handle);
    if (djn_rec_upload(l->rec, handle, bytes, n, text, h.high64, h.low64) != DJN_OK)
        return s_fail(DJN_ERR_NOMEM, "djinn: out of host memory");
    return DJN_OK;
}

int djn_client_rec_device(djn_client_t *c) {
    return c->cur ? c->cur->dev0 + djn_rec_device(c->cur->rec) : -1;
}
