/* djn_client.c: the client's C core (see djn_client.h for what it owns).
 *
 * A fragment is recorded as msgpack straight into `nodes` while ops are captured:
 *   node = [op, overload, [args...], [outs...], flags]
 * Tensor references in nodes carry a fragment-local *slot* instead of the handle; the
 * message's "binds" array maps slots to handles. So the bytes of a fragment depend only
 * on ops, shapes, dtypes, scalars and wiring, and their XXH3-128, updated node by node,
 * is the fragment's fingerprint (the plan-cache key on the server).
 *
 * Flush (a materialisation point, or the node-count bound):
 *   1. mark each recorded node's lifecycle: persistent if one of its fresh outputs is
 *      still held by the client, else ephemeral (its storage was freed before flush);
 *   2. encode {dev, seed, binds, allocs, uploads, nodes, frees, fetch, fp} and send it
 *      with the upload bytes as zero-copy frames;
 *   3. wait for the reply when the caller needs it; a bound-triggered flush does not
 *      wait, and its reply (or error) is collected at the next sync point.
 * Errors of a fragment surface at the next sync point as the first error reply. */
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

#include "djn_map.h"
#include "djn_mem.h"
#include "djn_spawn.h"
#include "djn_transport.h"

#define S_HANDLE_BASE (1ull << 44)
#define S_HANDLE_ALIGN 256ull
#define S_MAX_DEVICES 64
#define S_MAX_OUTSTANDING 16
#define S_CACHE_WHOLE_LIMIT (4ull << 20)  /* fetch whole storages up to this size */
#define S_CACHE_CAPACITY (64ull << 20)    /* bytes kept in the fetch cache */

typedef struct {
    uint64_t handle;
    uint8_t *bytes;
    uint64_t n;
    bool text;      /* shared content: offered to the server by hash first (Shadow Sync) */
    uint64_t hi, lo; /* XXH3-128 of the bytes */
} s_upload_t;

typedef struct {
    const char *op, *ovl;
    uint8_t cls, phase, persistent;
    uint32_t out_begin, out_end; /* range in outs[] of fresh outputs */
} s_srg_t;

typedef struct {
    uint64_t off, n;
    uint8_t *bytes;
} s_cached_t;

typedef struct {
    void *data;
    size_t len, cap;
} s_vec_t;

static bool s_vec_push(s_vec_t *v, const void *item, size_t isz) {
    if (v->len == v->cap) {
        size_t ncap = v->cap ? v->cap * 2 : 64;
        void *nd = djn_realloc(v->data, v->cap * isz, ncap * isz);
        if (!nd)
            return false;
        v->data = nd;
        v->cap = ncap;
    }
    memcpy((uint8_t *)v->data + v->len * isz, item, isz);
    v->len++;
    return true;
}


static struct {
    pthread_mutex_t mu;
    bool connected, forked, broken, atexit_set;
    char server_bin[PATH_MAX];
    char endpoint[256];
    pid_t child;
    djn_conn_t *conn;
    uint64_t sid, seq, acked;
    int ndev;
    char devnames[S_MAX_DEVICES][32];
    int timeout_ms, connect_timeout_ms;
    uint32_t max_nodes;
    uint64_t text_min; /* uploads this large are content-addressed (DJINN_TEXT_MIN_BYTES) */
    bool plan_cache;   /* send GRAPH_CACHED for fragments the server holds (DJINN_PLAN_CACHE) */
    djn_status_t pending_st; /* first error of an async fragment not yet reported */
    char pending_msg[2048];

    /* the fragment being recorded */
    int dev;
    djn_buf_t nodes;
    uint32_t nnodes;
    size_t node_start;
    djn_map_t slots; /* handle -> slot + 1 */
    s_vec_t binds;   /* uint64_t handles by slot */
    djn_map_t allocs; /* pending allocations: handle -> nbytes */
    s_vec_t frees;   /* uint64_t */
    s_vec_t ups;     /* s_upload_t */
    uint64_t up_bytes; /* bytes in ups */
    int64_t seed;
    XXH3_state_t *fp;
    s_vec_t srg, srg_outs; /* s_srg_t, uint64_t */
    uint32_t cur_srg_out;

    /* the last flushed fragment, for djinn.srg */
    s_vec_t last_srg;
    uint64_t last_fp[2];

    djn_map_t sizes; /* live handle -> nbytes */
    djn_map_t known; /* fingerprints the server has cached: digest -> fp low half */
    djn_map_t cache; /* handle -> s_cached_t* */
    uint64_t cache_bytes;
    djn_client_counters_t ctr;
    uint64_t handle_floor; /* handles below it belong to a session that was lost */
    uint64_t lost_sid;
    bool rec_stale, loss_marked;

    /* heartbeat thread: renews the session's lease over its own socket */
    pthread_t hb_thread;
    bool hb_running, hb_stop;
    pthread_mutex_t hb_mu;
    pthread_cond_t hb_cv;
    int hb_ms;
    _Atomic uint64_t hb_sent, hb_failed;
} g = {.hb_mu = PTHREAD_MUTEX_INITIALIZER, .hb_cv = PTHREAD_COND_INITIALIZER, .mu = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP, .seed = -1};

static _Atomic uint64_t s_next_va = S_HANDLE_BASE;

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

djn_status_t djn_client_errcode(void) { return t_st; }
const char *djn_client_errmsg(void) { return t_msg; }

void djn_client_lock(void) { pthread_mutex_lock(&g.mu); }
void djn_client_unlock(void) { pthread_mutex_unlock(&g.mu); }

static int s_env_int(const char *name, int dflt) {
    const char *v = getenv(name);
    if (!v || !*v)
        return dflt;
    char *end;
    double d = strtod(v, &end);
    return end == v ? dflt : (int)d;
}

static void s_child_after_fork(void) {
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_settype(&a, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&g.mu, &a);
    g.forked = g.connected;
    g.conn = NULL; /* the parent's socket: never touch it here */
    g.hb_running = false; /* the parent's thread does not exist in the child */
    g.child = 0;
}

__attribute__((constructor)) static void s_init(void) { pthread_atfork(NULL, NULL, s_child_after_fork); }

void djn_client_set_server_binary(const char *path) {
    pthread_mutex_lock(&g.mu);
    snprintf(g.server_bin, sizeof g.server_bin, "%s", path ? path : "");
    pthread_mutex_unlock(&g.mu);
}

static void s_cache_drop_all(void);
static void s_cache_drop(uint64_t h);
static void s_fragment_reset(void);
static bool s_stale(uint64_t h);

/* ------------------------------------------------------------------ request/reply */

typedef struct {
    djn_reply_t *r;
    djn_arena_t *a;
    const djn_value_t *body;
} s_resp_t;

static void s_resp_free(s_resp_t *x) {
    djn_reply_free(&x->r);
    djn_arena_destroy(&x->a);
    x->body = NULL;
}

static void s_free_bytes(void *data, void *hint) { djn_free(data, (size_t)(uintptr_t)hint); }

static djn_status_t s_send(djn_buf_t *hdr, djn_frame_t *frames, uint32_t nframes) {
    if (hdr->failed)
        return s_fail(DJN_ERR_NOMEM, "djinn: out of memory encoding a request");
    djn_status_t st = djn_conn_send(g.conn, hdr->data, hdr->len, frames, nframes);
    if (st != DJN_OK) {
        g.broken = true;
        return s_fail(st, "djinn: cannot send to the server at %s", g.endpoint);
    }
    g.ctr.messages++;
    g.ctr.bytes_sent += hdr->len;
    for (uint32_t i = 0; i < nframes; i++)
        g.ctr.bytes_sent += frames[i].len;
    return DJN_OK;
}

/* The server no longer knows our session: every handle that exists now belongs to it
 * and is gone; handles made from here on belong to the next session. */
static void s_session_lost(void) {
    g.broken = true;
    if (g.loss_marked) /* once per lost session: handles made since belong to the next one */
        return;
    g.loss_marked = true;
    g.handle_floor = atomic_load(&s_next_va);
    g.lost_sid = g.sid;
    s_cache_drop_all();
    s_fragment_reset();
}

static djn_status_t s_error_from_reply(const djn_value_t *body, char *msg, size_t len) {
    const djn_value_t *c = djn_value_get(body, "code"), *m = djn_value_get(body, "msg");
    djn_status_t st = c && c->kind == DJN_V_INT ? (djn_status_t)c->u.i : DJN_ERR_OP;
    if (st == DJN_OK)
        st = DJN_ERR_OP;
    if (st == DJN_ERR_SESSION)
        snprintf(msg, len,
                 "djinn: session lost: the server at %s no longer knows this session (it "
                 "restarted, or the lease expired); remote tensors from it are gone. Open a new "
                 "session by using 'remote' again and re-create them.",
                 g.endpoint);
    else
        snprintf(msg, len, "%.*s", m && m->kind == DJN_V_STR ? (int)m->len : 13,
                 m && m->kind == DJN_V_STR ? m->u.s : "server error");
    return st;
}

/* Receive replies until the one for `seq`; errors of earlier async fragments are kept in
 * pending_*. On success *out holds the reply (caller frees). */
static djn_status_t s_wait(uint64_t seq, int timeout_ms, s_resp_t *out) {
    memset(out, 0, sizeof(*out));
    for (;;) {
        s_resp_t x = {0};
        djn_status_t st = djn_conn_recv(g.conn, timeout_ms, &x.r);
        if (st != DJN_OK) {
            g.broken = true;
            if (st == DJN_ERR_TIMEOUT)
                return s_fail(st,
                              "djinn: the server at %s did not answer within %d ms "
                              "(DJINN_TIMEOUT); it may be down or overloaded",
                              g.endpoint, timeout_ms);
            return s_fail(st, "djinn: receiving from the server at %s failed", g.endpoint);
        }
        size_t hl;
        const void *h = djn_reply_frame(x.r, 0, &hl);
        g.ctr.bytes_recv += hl;
        for (uint32_t i = 1; i <= djn_reply_nframes(x.r); i++) {
            size_t fl;
            djn_reply_frame(x.r, i, &fl);
            g.ctr.bytes_recv += fl;
        }
        x.a = djn_arena_new();
        djn_value_t *root = NULL;
        char err[256];
        if (!x.a || djn_decode_value(h, hl, x.a, &root, err, sizeof err) != DJN_OK) {
            s_resp_free(&x);
            g.broken = true;
            return s_fail(DJN_ERR_PROTO, "djinn: unreadable reply from the server: %s", err);
        }
        const djn_value_t *tv = djn_value_get(root, "type"), *sv = djn_value_get(root, "seq");
        x.body = djn_value_get(root, "body");
        if (!tv || !sv || tv->kind != DJN_V_INT || sv->kind != DJN_V_INT || !x.body) {
            s_resp_free(&x);
            g.broken = true;
            return s_fail(DJN_ERR_PROTO, "djinn: reply without type/seq/body");
        }
        uint64_t rseq = (uint64_t)sv->u.i;
        if (rseq > g.acked)
            g.acked = rseq;
        if (tv->u.i == DJN_MSG_ERROR) {
            char msg[1024];
            djn_status_t est = s_error_from_reply(x.body, msg, sizeof msg);
            /* seq 0: the server could not read our header; it answers the request we
             * are waiting for (requests are never numbered 0) */
            if (rseq == seq || rseq == 0) {
                s_resp_free(&x);
                if (g.pending_st != DJN_OK) { /* the first error is the cause */
                    djn_status_t pst = g.pending_st;
                    g.pending_st = DJN_OK;
                    return s_fail(pst, "%s", g.pending_msg);
                }
                if (est == DJN_ERR_SESSION)
                    s_session_lost();
                return s_fail(est, "%s", msg);
            }
            if (g.pending_st == DJN_OK) {
                g.pending_st = est;
                snprintf(g.pending_msg, sizeof g.pending_msg, "%s", msg);
            }
            if (est == DJN_ERR_SESSION)
                s_session_lost();
            s_resp_free(&x);
            continue;
        }
        if (rseq != seq) {
            s_resp_free(&x);
            continue;
        }
        if (g.pending_st != DJN_OK) {
            djn_status_t pst = g.pending_st;
            g.pending_st = DJN_OK;
            s_resp_free(&x);
            return s_fail(pst, "%s", g.pending_msg);
        }
        *out = x;
        return DJN_OK;
    }
}

static djn_status_t s_simple_request(uint8_t type, djn_buf_t *body_only, int timeout_ms,
                                     s_resp_t *out) {
    djn_buf_t b = {0};
    uint64_t seq = ++g.seq;
    djn_enc_header(&b, type, g.sid, seq);
    if (body_only)
        djn_buf_raw(&b, body_only->data, body_only->len);
    else
        djn_enc_map(&b, 0);
    djn_status_t st = s_send(&b, NULL, 0);
    djn_buf_release(&b);
    if (st != DJN_OK)
        return st;
    return s_wait(seq, timeout_ms, out);
}

/* ------------------------------------------------------------------ connection */

static void s_atexit(void) { djn_client_shutdown(); }

/* The heartbeat thread: one HEARTBEAT per hb_ms on a socket of its own (ZeroMQ sockets
 * are not shared across threads), so the lease is renewed while the user's thread sits
 * in a notebook cell or a long CPU computation. No Python, no GIL. */
static void *s_heartbeat_main(void *arg) {
    (void)arg;
    char ep[256];
    uint64_t sid;
    pthread_mutex_lock(&g.hb_mu);
    snprintf(ep, sizeof ep, "%s", g.endpoint);
    sid = g.sid;
    int ms = g.hb_ms;
    pthread_mutex_unlock(&g.hb_mu);
    djn_conn_t *c = djn_conn_new(ep);
    uint64_t seq = 0;
    for (;;) {
        pthread_mutex_lock(&g.hb_mu);
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += ms / 1000;
        until.tv_nsec += (long)(ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        while (!g.hb_stop && pthread_cond_timedwait(&g.hb_cv, &g.hb_mu, &until) == 0) {
        }
        bool stop = g.hb_stop;
        pthread_mutex_unlock(&g.hb_mu);
        if (stop || !c)
            break;
        djn_buf_t b = {0};
        djn_enc_header(&b, DJN_MSG_HEARTBEAT, sid, ++seq);
        djn_enc_map(&b, 0);
        if (!b.failed && djn_conn_send(c, b.data, b.len, NULL, 0) == DJN_OK)
            atomic_fetch_add(&g.hb_sent, 1);
        else
            atomic_fetch_add(&g.hb_failed, 1);
        djn_buf_release(&b);
        djn_reply_t *r = NULL; /* drain answers; an unknown session shows at the next real use */
        while (djn_conn_recv(c, 0, &r) == DJN_OK)
            djn_reply_free(&r);
    }
    djn_conn_destroy(&c);
    return NULL;
}

static void s_heartbeat_stop(void) {
    if (!g.hb_running)
        return;
    pthread_mutex_lock(&g.hb_mu);
    g.hb_stop = true;
    pthread_cond_broadcast(&g.hb_cv);
    pthread_mutex_unlock(&g.hb_mu);
    pthread_join(g.hb_thread, NULL);
    g.hb_running = false;
}

static void s_heartbeat_start(int ms) {
    s_heartbeat_stop();
    if (ms <= 0)
        return;
    pthread_mutex_lock(&g.hb_mu);
    g.hb_stop = false;
    g.hb_ms = ms;
    pthread_mutex_unlock(&g.hb_mu);
    if (pthread_create(&g.hb_thread, NULL, s_heartbeat_main, NULL) == 0)
        g.hb_running = true;
}

static djn_status_t s_connect_locked(void) {
    if (g.forked)
        return s_fail(DJN_ERR_SESSION,
                      "djinn: this process was forked after it used the 'remote' device; the "
                      "session and its remote tensors belong to the parent. Use the 'spawn' "
                      "start method (multiprocessing.set_start_method('spawn')) for workers "
                      "that use 'remote'.");
    if (g.connected && !g.broken)
        return DJN_OK;
    if (g.broken) { /* a new session: forget the old connection and what it held */
        s_session_lost();
        djn_conn_destroy(&g.conn);
        djn_map_clear(&g.known);
        g.pending_st = DJN_OK;
        g.connected = false;
        g.broken = false;
    }
    g.timeout_ms = s_env_int("DJINN_TIMEOUT", 600) * 1000;
    g.connect_timeout_ms = (int)(1000 * strtod(getenv("DJINN_CONNECT_TIMEOUT") ? getenv("DJINN_CONNECT_TIMEOUT") : "10", NULL));
    if (g.connect_timeout_ms <= 0)
        g.connect_timeout_ms = 10000;
    g.max_nodes = (uint32_t)s_env_int("DJINN_MAX_NODES", 4096);
    g.text_min = (uint64_t)s_env_int("DJINN_TEXT_MIN_BYTES", 65536);
    g.plan_cache = s_env_int("DJINN_PLAN_CACHE", 1) != 0;
    if (g.max_nodes < 1)
        g.max_nodes = 1;
    const char *ep = getenv("DJINN_SERVER");
    char err[512];
    if (ep && *ep) {
        snprintf(g.endpoint, sizeof g.endpoint, "%s", ep);
    } else if (g.child <= 0) {
        const char *bin = getenv("DJINN_SERVER_BIN");
        if (!bin || !*bin)
            bin = g.server_bin;
        if (!*bin)
            return s_fail(DJN_ERR_IO, "djinn: no server: set DJINN_SERVER=tcp://host:port, or "
                                      "install djinn with its djinn-server binary");
        djn_status_t st = djn_spawn_server(bin, g.connect_timeout_ms, &g.child, g.endpoint,
                                           sizeof g.endpoint, err, sizeof err);
        if (st != DJN_OK)
            return s_fail(st, "djinn: %s", err);
    }
    if (!g.atexit_set) {
        atexit(s_atexit);
        g.atexit_set = true;
    }
    g.conn = djn_conn_new(g.endpoint);
    if (!g.conn)
        return s_fail(DJN_ERR_IO, "djinn: cannot open a socket to '%s' (is it a valid ZeroMQ "
                                  "endpoint such as tcp://127.0.0.1:5555?)",
                      g.endpoint);
    djn_buf_t body = {0};
    char client[128];
    snprintf(client, sizeof client, "djinn-client pid %d", (int)getpid());
    djn_enc_map(&body, 2);
    djn_enc_cstr(&body, "version");
    djn_enc_uint(&body, DJN_PROTO_VERSION);
    djn_enc_cstr(&body, "client");
    djn_enc_cstr(&body, client);
    g.sid = 0;
    s_resp_t x;
    djn_status_t st = s_simple_request(DJN_MSG_HELLO, &body, g.connect_timeout_ms, &x);
    djn_buf_release(&body);
    if (st != DJN_OK) {
        djn_conn_destroy(&g.conn);
        g.broken = false;
        if (st == DJN_ERR_TIMEOUT)
            return s_fail(st,
                          "djinn: the server at %s is unreachable: no answer to HELLO within "
                          "%d ms (DJINN_CONNECT_TIMEOUT). Start one with 'djinn-server --listen "
                          "%s' or unset DJINN_SERVER to use an embedded server.",
                          g.endpoint, g.connect_timeout_ms, g.endpoint);
        return st;
    }
    const djn_value_t *sid = djn_value_get(x.body, "sid"), *devs = djn_value_get(x.body, "devices");
    if (!sid || sid->kind != DJN_V_INT || !devs || devs->kind != DJN_V_LIST) {
        s_resp_free(&x);
        djn_conn_destroy(&g.conn);
        return s_fail(DJN_ERR_PROTO, "djinn: malformed HELLO reply");
    }
    g.sid = (uint64_t)sid->u.i;
    const djn_value_t *hb = djn_value_get(x.body, "heartbeat_ms"), *lease = djn_value_get(x.body, "lease_ms");
    int hb_ms = s_env_int("DJINN_HEARTBEAT_MS", hb && hb->kind == DJN_V_INT ? (int)hb->u.i : 1000);
    if (lease && lease->kind == DJN_V_INT && lease->u.i == 0)
        hb_ms = 0; /* the server never expires sessions */
    g.ndev = 0;
    for (uint32_t i = 0; i < devs->len && i < S_MAX_DEVICES; i++) {
        const djn_value_t *d = &devs->u.items[i];
        snprintf(g.devnames[g.ndev++], 32, "%.*s", d->kind == DJN_V_STR ? (int)d->len : 1,
                 d->kind == DJN_V_STR ? d->u.s : "?");
    }
    s_resp_free(&x);
    g.connected = true;
    g.acked = g.seq;
    g.loss_marked = false;
    s_heartbeat_start(hb_ms);
    return DJN_OK;
}

djn_status_t djn_client_connect(void) {
    pthread_mutex_lock(&g.mu);
    djn_status_t st = s_connect_locked();
    pthread_mutex_unlock(&g.mu);
    return st;
}

int djn_client_device_count(void) {
    return djn_client_connect() == DJN_OK ? g.ndev : 0;
}

const char *djn_client_device_name(int i) {
    return i >= 0 && i < g.ndev ? g.devnames[i] : "";
}

const char *djn_client_endpoint(void) { return g.endpoint; }
uint64_t djn_client_session_id(void) { return g.sid; }


void djn_client_shutdown(void) {
    pthread_mutex_lock(&g.mu);
    if (!g.forked)
        s_heartbeat_stop();
    if (g.connected && !g.broken && !g.forked && g.conn) {
        s_resp_t x;
        if (s_simple_request(DJN_MSG_CLOSE, NULL, 2000, &x) == DJN_OK)
            s_resp_free(&x);
    }
    if (!g.forked)
        djn_conn_destroy(&g.conn);
    g.connected = false;
    if (g.child > 0 && !g.forked)
        djn_spawn_stop(g.child, 3000);
    g.child = 0;
    s_cache_drop_all();
    pthread_mutex_unlock(&g.mu);
}

/* ------------------------------------------------------------------ handles */

uint64_t djn_client_alloc(uint64_t nbytes) {
    uint64_t span = (nbytes + 2 * S_HANDLE_ALIGN - 1) & ~(S_HANDLE_ALIGN - 1);
    uint64_t h = atomic_fetch_add(&s_next_va, span);
    pthread_mutex_lock(&g.mu);
    djn_map_put(&g.allocs, h, nbytes ? nbytes : 0);
    djn_map_put(&g.sizes, h, nbytes);
    pthread_mutex_unlock(&g.mu);
    return h;
}

void djn_client_adopt(uint64_t handle, uint64_t nbytes) {
    pthread_mutex_lock(&g.mu);
    djn_map_put(&g.sizes, handle, nbytes);
    s_cache_drop(handle);
    pthread_mutex_unlock(&g.mu);
}

uint64_t djn_client_nbytes_hint(uint64_t handle) {
    uint64_t n = 0;
    pthread_mutex_lock(&g.mu);
    djn_map_get(&g.sizes, handle, &n);
    pthread_mutex_unlock(&g.mu);
    return n;
}

static void s_cache_drop(uint64_t h) {
    uint64_t p;
    if (djn_map_del(&g.cache, h, &p)) {
        s_cached_t *c = (s_cached_t *)(uintptr_t)p;
        g.cache_bytes -= c->n;
        djn_free(c->bytes, c->n);
        djn_free(c, sizeof(*c));
    }
}

static void s_cache_drop_all(void) {
    uint64_t k, v;
    for (uint32_t it = 0; djn_map_next(&g.cache, &it, &k, &v);) {
        s_cached_t *c = (s_cached_t *)(uintptr_t)v;
        djn_free(c->bytes, c->n);
        djn_free(c, sizeof(*c));
    }
    djn_map_clear(&g.cache);
    g.cache_bytes = 0;
}

void djn_client_free(uint64_t handle) {
    pthread_mutex_lock(&g.mu);
    djn_map_del(&g.sizes, handle, NULL);
    s_cache_drop(handle);
    uint64_t dummy;
    /* never sent and never named by a node: the server need not hear of it */
    if (djn_map_get(&g.allocs, handle, &dummy) && !djn_map_get(&g.slots, handle, NULL)) {
        bool uploaded = false;
        for (size_t i = 0; i < g.ups.len; i++)
            uploaded |= ((s_upload_t *)g.ups.data)[i].handle == handle;
        if (!uploaded) {
            djn_map_del(&g.allocs, handle, NULL);
            pthread_mutex_unlock(&g.mu);
            return;
        }
    }
    if (!g.forked && !s_stale(handle))
        s_vec_push(&g.frees, &handle, sizeof handle);
    pthread_mutex_unlock(&g.mu);
}

/* ------------------------------------------------------------------ recording */

static void s_fragment_reset(void) {
    djn_buf_reset(&g.nodes);
    g.nnodes = 0;
    djn_map_clear(&g.slots);
    g.binds.len = 0;
    djn_map_clear(&g.allocs);
    g.frees.len = 0;
    for (size_t i = 0; i < g.ups.len; i++) {
        s_upload_t *u = &((s_upload_t *)g.ups.data)[i];
        djn_free(u->bytes, u->n);
    }
    g.ups.len = 0;
    g.up_bytes = 0;
    g.srg.len = 0;
    g.srg_outs.len = 0;
    if (!g.fp)
        g.fp = XXH3_createState();
    if (g.fp)
        XXH3_128bits_reset(g.fp);
}

static djn_status_t s_flush_locked(bool wait, const djn_fetch_t *fetch, s_resp_t *out);

/* Work for another device: everything pending or in flight for the current one runs to
 * completion first. Devices have separate worker queues on the server, so this wait is
 * what orders a storage declared (or produced) for one device before its use on another. */
static djn_status_t s_switch_device(int device) {
    djn_status_t st = DJN_OK;
    bool pending = g.nnodes || g.allocs.len || g.frees.len || g.ups.len || g.seq > g.acked;
    if (pending)
        st = s_flush_locked(true, NULL, NULL);
    if (st == DJN_OK)
        g.dev = device;
    return st;
}

djn_status_t djn_rec_begin(int device, const char *op, const char *overload, uint32_t nargs) {
    djn_status_t st = s_connect_locked();
    if (st != DJN_OK)
        return st;
    if (device < 0 || device >= g.ndev)
        return s_fail(DJN_ERR_DEVICE, "djinn: remote:%d does not exist (the server has %d devices)",
                      device, g.ndev);
    if (device != g.dev && (st = s_switch_device(device)) != DJN_OK)
        return st;
    if (!g.fp && (g.fp = XXH3_createState()) != NULL)
        XXH3_128bits_reset(g.fp);
    g.dev = device;
    g.node_start = g.nodes.len;
    djn_enc_array(&g.nodes, 5);
    djn_enc_cstr(&g.nodes, op);
    djn_enc_cstr(&g.nodes, overload);
    djn_enc_array(&g.nodes, nargs);
    s_srg_t r = {op, overload, 0, 0, 0, (uint32_t)g.srg_outs.len, (uint32_t)g.srg_outs.len};
    s_vec_push(&g.srg, &r, sizeof r);
    return DJN_OK;
}

djn_buf_t *djn_rec_buf(void) { return &g.nodes; }

static uint64_t s_slot(uint64_t handle) {
    uint64_t s;
    if (djn_map_get(&g.slots, handle, &s))
        return s - 1;
    s = g.binds.len;
    s_vec_push(&g.binds, &handle, sizeof handle);
    djn_map_put(&g.slots, handle, s + 1);
    return s;
}

/* A handle of a session this client lost: client handles made before the loss, or
 * server-issued ones (>= 2^62) whose bits 40..59 name another session. */
static bool s_stale(uint64_t h) {
    if (h >= (1ull << 62))
        return ((h >> 40) & 0xFFFFFull) != (g.sid & 0xFFFFFull);
    return h < g.handle_floor;
}

static djn_status_t s_stale_error(void) {
    return s_fail(DJN_ERR_SESSION,
                  "djinn: session lost: this remote tensor belongs to a session the server no "
                  "longer holds (it restarted, or the lease expired); its data is gone. "
                  "Re-create it from CPU data.");
}

void djn_rec_tensor(const djn_tref_t *t, bool written) {
    if (s_stale(t->handle))
        g.rec_stale = true;
    djn_tref_t r = *t;
    r.handle = s_slot(t->handle);
    djn_enc_tref(&g.nodes, &r);
    if (written) { /* an output: invalidate cached bytes, and track it for the SRG */
        s_cache_drop(t->handle);
        djn_rec_note_fresh(t->handle);
    }
}

void djn_rec_outs(uint32_t nouts) { djn_enc_array(&g.nodes, nouts); }

void djn_rec_note_fresh(uint64_t handle) {
    s_vec_push(&g.srg_outs, &handle, sizeof handle);
    ((s_srg_t *)g.srg.data)[g.srg.len - 1].out_end = (uint32_t)g.srg_outs.len;
}

djn_status_t djn_rec_end(uint32_t flags, djn_op_class_t cls, djn_phase_t phase) {
    djn_enc_uint(&g.nodes, flags);
    if (g.rec_stale) {
        g.rec_stale = false;
        djn_rec_abort();
        return s_stale_error();
    }
    if (g.nodes.failed) {
        djn_rec_abort();
        return s_fail(DJN_ERR_NOMEM, "djinn: out of memory recording a node");
    }
    s_srg_t *r = &((s_srg_t *)g.srg.data)[g.srg.len - 1];
    r->cls = (uint8_t)cls;
    r->phase = (uint8_t)phase;
    if (g.fp)
        XXH3_128bits_update(g.fp, g.nodes.data + g.node_start, g.nodes.len - g.node_start);
    g.nnodes++;
    g.ctr.nodes++;
    if (!(flags & DJN_NODE_DYNAMIC) && g.nnodes >= g.max_nodes)
        return s_flush_locked(false, NULL, NULL);
    return DJN_OK;
}

void djn_rec_abort(void) {
    g.nodes.len = g.node_start;
    g.nodes.failed = false;
    if (g.srg.len)
        g.srg.len--;
}


/* ------------------------------------------------------------------ flush */

static void s_srg_finish(void) {
    djn_map_t freed = {0};
    for (size_t i = 0; i < g.frees.len; i++)
        djn_map_put(&freed, ((uint64_t *)g.frees.data)[i], 1);
    g.last_srg.len = 0;
    for (size_t i = 0; i < g.srg.len; i++) {
        s_srg_t r = ((s_srg_t *)g.srg.data)[i];
        bool persistent = false;
        for (uint32_t j = r.out_begin; j < r.out_end; j++) {
            uint64_t h = ((uint64_t *)g.srg_outs.data)[j];
            persistent |= !djn_map_get(&freed, h, NULL);
        }
        r.persistent = persistent;
        s_vec_push(&g.last_srg, &r, sizeof r);
    }
    djn_map_release(&freed);
    XXH128_hash_t h = g.fp ? XXH3_128bits_digest(g.fp) : (XXH128_hash_t){0, 0};
    g.last_fp[0] = h.high64;
    g.last_fp[1] = h.low64;
}

/* Shadow Sync: offer the hashes of large uploads first; the server binds the handles
 * of content it already holds (another session's weights, a previous run's) and we
 * drop those uploads. One round trip per flush that carries large uploads. */
static djn_status_t s_offer_text(void) {
    uint32_t n = 0;
    for (size_t i = 0; i < g.ups.len; i++)
        n += ((s_upload_t *)g.ups.data)[i].text;
    if (!n)
        return DJN_OK;
    if (g.seq > g.acked) { /* HAVE binds at once: earlier fragments must have run first */
        s_resp_t d;
        djn_status_t dst = s_wait(g.seq, g.timeout_ms, &d);
        if (dst != DJN_OK)
            return dst;
        s_resp_free(&d);
    }
    djn_buf_t body = {0};
    djn_enc_map(&body, 2);
    djn_enc_cstr(&body, "dev");
    djn_enc_uint(&body, (uint64_t)g.dev);
    djn_enc_cstr(&body, "items");
    djn_enc_array(&body, n);
    for (size_t i = 0; i < g.ups.len; i++) {
        s_upload_t *u = &((s_upload_t *)g.ups.data)[i];
        if (!u->text)
            continue;
        djn_enc_array(&body, 4);
        djn_enc_uint(&body, u->handle);
        djn_enc_uint(&body, u->hi);
        djn_enc_uint(&body, u->lo);
        djn_enc_uint(&body, u->n);
    }
    s_resp_t x;
    djn_status_t st = s_simple_request(DJN_MSG_HAVE, &body, g.timeout_ms, &x);
    djn_buf_release(&body);
    if (st != DJN_OK)
        return st;
    const djn_value_t *miss = djn_value_get(x.body, "missing");
    /* keep the uploads the server lacks; the others are bound already */
    size_t keep = 0;
    uint32_t k = 0, mi = 0;
    for (size_t i = 0; i < g.ups.len; i++) {
        s_upload_t u = ((s_upload_t *)g.ups.data)[i];
        bool missing = true;
        if (u.text) {
            missing = false;
            if (miss && miss->kind == DJN_V_LIST && mi < miss->len && miss->u.items[mi].u.i == (int64_t)k) {
                missing = true;
                mi++;
            }
            k++;
        }
        if (missing) {
            ((s_upload_t *)g.ups.data)[keep++] = u;
        } else {
            g.ctr.dedup_bytes += u.n;
            djn_map_del(&g.allocs, u.handle, NULL);
            djn_free(u.bytes, u.n);
        }
    }
    g.ups.len = keep;
    s_resp_free(&x);
    return DJN_OK;
}

/* Encode the pending fragment: GRAPH, or GRAPH_CACHED without the nodes. Upload bytes
 * become zero-copy frames (set up once: a resend has no uploads). */
static void s_encode_graph(djn_buf_t *b, bool cached, uint64_t seq, const djn_fetch_t *fetch,
                           const uint64_t fp[2], djn_frame_t *frames) {
    djn_enc_header(b, cached ? DJN_MSG_GRAPH_CACHED : DJN_MSG_GRAPH, g.sid, seq);
    djn_enc_map(b, cached ? 8 : 9);
    djn_enc_cstr(b, "dev");
    djn_enc_uint(b, (uint64_t)g.dev);
    djn_enc_cstr(b, "seed");
    if (g.seed >= 0)
        djn_enc_int(b, g.seed);
    else
        djn_enc_nil(b);
    djn_enc_cstr(b, "binds");
    djn_enc_array(b, (uint32_t)g.binds.len);
    for (size_t i = 0; i < g.binds.len; i++)
        djn_enc_uint(b, ((uint64_t *)g.binds.data)[i]);
    djn_enc_cstr(b, "allocs");
    djn_enc_array(b, g.allocs.len);
    uint64_t k, v;
    for (uint32_t it = 0; djn_map_next(&g.allocs, &it, &k, &v);) {
        djn_enc_array(b, 2);
        djn_enc_uint(b, k);
        djn_enc_uint(b, v);
    }
    djn_enc_cstr(b, "uploads");
    djn_enc_array(b, (uint32_t)g.ups.len);
    for (uint32_t i = 0; i < g.ups.len; i++) {
        s_upload_t *u = &((s_upload_t *)g.ups.data)[i];
        djn_enc_array(b, u->text ? 3 : 2);
        djn_enc_uint(b, u->handle);
        djn_enc_uint(b, i + 1);
        if (u->text)
            djn_enc_bool(b, true);
        if (u->bytes) {
            frames[i] = (djn_frame_t){u->bytes, u->n, s_free_bytes, (void *)(uintptr_t)u->n};
            g.ctr.uploads++;
            g.ctr.upload_bytes += u->n;
            u->bytes = NULL; /* owned by the frame now */
            u->n = 0;
        }
    }
    if (!cached) {
        djn_enc_cstr(b, "nodes");
        djn_enc_array(b, g.nnodes);
        djn_buf_raw(b, g.nodes.data, g.nodes.len);
    }
    djn_enc_cstr(b, "frees");
    djn_enc_array(b, (uint32_t)g.frees.len);
    for (size_t i = 0; i < g.frees.len; i++)
        djn_enc_uint(b, ((uint64_t *)g.frees.data)[i]);
    djn_enc_cstr(b, "fetch");
    djn_enc_array(b, fetch ? 1 : 0);
    if (fetch) {
        djn_enc_array(b, 3);
        djn_enc_uint(b, fetch->handle);
        djn_enc_uint(b, fetch->offset);
        djn_enc_uint(b, fetch->nbytes);
    }
    djn_enc_cstr(b, "fp");
    djn_enc_array(b, 2);
    djn_enc_uint(b, fp[0]);
    djn_enc_uint(b, fp[1]);
}

/* Key of a fingerprint in g.known (the map reserves 0); the value holds fp[1] to confirm. */
static uint64_t s_fp_key(const uint64_t fp[2]) { return fp[0] ^ fp[1] ? fp[0] ^ fp[1] : 1; }

/* The fragment has left (or failed to): start the next one. */
static void s_fragment_sent(djn_frame_t *frames, uint32_t nframes, djn_buf_t *b) {
    g.seed = -1;
    djn_free(frames, nframes * sizeof(djn_frame_t));
    djn_buf_release(b);
    g.ctr.flushes++;
    s_fragment_reset();
}

static djn_status_t s_flush_locked(bool wait, const djn_fetch_t *fetch, s_resp_t *out) {
    djn_status_t st = s_connect_locked();
    if (st != DJN_OK)
        return st;
    if (g.ups.len && (st = s_offer_text()) != DJN_OK)
        return st;
    bool empty = !g.nnodes && !g.allocs.len && !g.frees.len && !g.ups.len && g.seed < 0;
    if (empty && !fetch && !wait)
        return DJN_OK;
    if (empty && !fetch) { /* a bare sync: just drain what is outstanding */
        if (g.acked >= g.seq) {
            if (g.pending_st != DJN_OK) {
                djn_status_t pst = g.pending_st;
                g.pending_st = DJN_OK;
                return s_fail(pst, "%s", g.pending_msg);
            }
            return DJN_OK;
        }
        s_resp_t x;
        st = s_wait(g.seq, g.timeout_ms, &x);
        if (st == DJN_OK)
            s_resp_free(&x);
        return st;
    }
    uint64_t fp[2] = {0, 0};
    if (g.nnodes) {
        s_srg_finish();
        fp[0] = g.last_fp[0];
        fp[1] = g.last_fp[1];
    }
    /* Plan cache: a fragment the server already ran goes as GRAPH_CACHED, without its
     * nodes. Only for flushes we wait on and without uploads, so that an eviction can
     * be answered by sending the full GRAPH right away. */
    bool cached = false;
    uint64_t known;
    if (g.plan_cache && g.nnodes && wait && !g.ups.len && g.seq == g.acked && g.pending_st == DJN_OK &&
        djn_map_get(&g.known, s_fp_key(fp), &known) &&
        known == fp[1])
        cached = true;
    djn_buf_t b = {0};
    uint32_t nframes = (uint32_t)g.ups.len;
    djn_frame_t *frames = nframes ? djn_calloc(nframes, sizeof(djn_frame_t)) : NULL;
    if (nframes && !frames)
        return s_fail(DJN_ERR_NOMEM, "djinn: out of memory");
    uint64_t seq;
resend:
    seq = ++g.seq;
    djn_buf_reset(&b);
    s_encode_graph(&b, cached, seq, fetch, fp, frames);
    st = s_send(&b, frames, nframes);
    if (cached && st == DJN_OK) {
        s_resp_t x;
        st = s_wait(seq, g.timeout_ms, &x);
        if (st == DJN_ERR_EVICTED) { /* the server dropped it: send it whole, transparently */
            djn_map_del(&g.known, s_fp_key(fp), NULL);
            g.ctr.plan_evictions++;
            cached = false;
            goto resend;
        }
        g.ctr.cached_sends++;
        s_fragment_sent(frames, nframes, &b);
        if (st != DJN_OK)
            return st;
        if (out)
            *out = x;
        else
            s_resp_free(&x);
        return DJN_OK;
    }
    if (g.nnodes && st == DJN_OK) {
        if (g.known.len > 65536)
            djn_map_clear(&g.known);
        djn_map_put(&g.known, s_fp_key(fp), fp[1]);
    }
    s_fragment_sent(frames, nframes, &b);
    if (st != DJN_OK)
        return st;
    if (!wait && !out) {
        /* bound the number of fragments in flight */
        if (g.seq - g.acked > S_MAX_OUTSTANDING) {
            s_resp_t x;
            st = s_wait(g.acked + 1, g.timeout_ms, &x);
            if (st == DJN_OK)
                s_resp_free(&x);
            else if (g.pending_st == DJN_OK && st != DJN_ERR_TIMEOUT && st != DJN_ERR_IO) {
                g.pending_st = st; /* report at the next sync point, like any async error */
                snprintf(g.pending_msg, sizeof g.pending_msg, "%s", t_msg);
                st = DJN_OK;
            }
        }
        return st;
    }
    s_resp_t x;
    st = s_wait(seq, g.timeout_ms, &x);
    if (st != DJN_OK)
        return st;
    if (out)
        *out = x;
    else
        s_resp_free(&x);
    return DJN_OK;
}

djn_status_t djn_client_flush(bool wait) {
    pthread_mutex_lock(&g.mu);
    djn_status_t st = s_flush_locked(wait, NULL, NULL);
    pthread_mutex_unlock(&g.mu);
    return st;
}

djn_status_t djn_client_run_dynamic(djn_value_t **result, djn_arena_t **arena) {
    *result = NULL;
    *arena = NULL;
    pthread_mutex_lock(&g.mu);
    g.ctr.dynamic_syncs++;
    s_resp_t x;
    djn_status_t st = s_flush_locked(true, NULL, &x);
    if (st == DJN_OK) {
        const djn_value_t *d = djn_value_get(x.body, "dyn");
        if (!d) {
            st = s_fail(DJN_ERR_PROTO, "djinn: the server's reply lacks the results of a "
                                       "data-dependent op");
            s_resp_free(&x);
        } else {
            *result = (djn_value_t *)d;
            *arena = x.a;
            x.a = NULL;
            s_resp_free(&x);
        }
    }
    pthread_mutex_unlock(&g.mu);
    return st;
}

djn_status_t djn_client_read(int device, uint64_t handle, uint64_t off, uint64_t n, void *dst) {
    if (n == 0)
        return DJN_OK;
    pthread_mutex_lock(&g.mu);
    djn_status_t st = DJN_OK;
    if (g.connected && s_stale(handle)) {
        st = s_stale_error();
        pthread_mutex_unlock(&g.mu);
        return st;
    }
    uint64_t p;
    if (djn_map_get(&g.cache, handle, &p)) {
        s_cached_t *c = (s_cached_t *)(uintptr_t)p;
        if (off >= c->off && off + n <= c->off + c->n) {
            /* still flush pending work so errors surface at this sync point */
            if (g.nnodes || g.seq > g.acked)
                st = s_flush_locked(true, NULL, NULL);
            if (st == DJN_OK) {
                memcpy(dst, c->bytes + (off - c->off), n);
                g.ctr.cache_hits++;
            }
            pthread_mutex_unlock(&g.mu);
            return st;
        }
    }
    uint64_t total = 0;
    djn_map_get(&g.sizes, handle, &total);
    djn_fetch_t f = {handle, off, n};
    bool whole = total >= off + n && total <= S_CACHE_WHOLE_LIMIT;
    if (whole) {
        f.offset = 0;
        f.nbytes = total;
    }
    if (device != g.dev)
        st = s_switch_device(device);
    if (st == DJN_OK) {
        g.dev = device;
        s_resp_t x;
        st = s_flush_locked(true, &f, &x);
        if (st == DJN_OK) {
            size_t len = 0;
            const void *bytes = djn_reply_nframes(x.r) >= 1 ? djn_reply_frame(x.r, 1, &len) : NULL;
            if (!bytes || len != f.nbytes) {
                st = s_fail(DJN_ERR_PROTO, "djinn: fetch of %llu bytes returned %zu",
                            (unsigned long long)f.nbytes, len);
            } else {
                g.ctr.fetches++;
                g.ctr.fetch_bytes += len;
                memcpy(dst, (const uint8_t *)bytes + (off - f.offset), n);
                if (f.nbytes <= S_CACHE_WHOLE_LIMIT) {
                    if (g.cache_bytes + f.nbytes > S_CACHE_CAPACITY)
                        s_cache_drop_all();
                    s_cached_t *c = djn_malloc(sizeof(*c));
                    uint8_t *copy = djn_malloc(f.nbytes);
                    if (c && copy) {
                        memcpy(copy, bytes, f.nbytes);
                        *c = (s_cached_t){f.offset, f.nbytes, copy};
                        s_cache_drop(handle);
                        djn_map_put(&g.cache, handle, (uint64_t)(uintptr_t)c);
                        g.cache_bytes += f.nbytes;
                    } else {
                        djn_free(c, sizeof(*c));
                        djn_free(copy, f.nbytes);
                    }
                }
            }
            s_resp_free(&x);
        }
    }
    pthread_mutex_unlock(&g.mu);
    return st;
}

djn_status_t djn_client_upload(int device, uint64_t handle, const void *bytes, uint64_t n) {
    pthread_mutex_lock(&g.mu);
    djn_status_t st = s_connect_locked();
    /* an upload replaces the storage before the fragment's nodes run: if a pending node
     * names this storage, that node must run first */
    if (st == DJN_OK && device != g.dev)
        st = s_switch_device(device);
    if (st == DJN_OK && g.nnodes && djn_map_get(&g.slots, handle, NULL))
        st = s_flush_locked(false, NULL, NULL);
    if (st == DJN_OK) {
        g.dev = device;
        uint8_t *copy = djn_malloc(n);
        if (!copy) {
            st = s_fail(DJN_ERR_NOMEM, "djinn: out of host memory staging an upload of %llu bytes",
                        (unsigned long long)n);
        } else {
            memcpy(copy, bytes, n);
            if (g.ups.len >= 1024 || g.up_bytes + n > (256ull << 20)) /* bound one message */
                st = s_flush_locked(false, NULL, NULL);
            s_upload_t u = {handle, copy, n, false, 0, 0};
            if (n && n >= g.text_min) {
                XXH128_hash_t h = XXH3_128bits(copy, n);
                u.text = true;
                u.hi = h.high64;
                u.lo = h.low64;
            }
            if (st != DJN_OK) {
                djn_free(copy, n);
            } else if (!s_vec_push(&g.ups, &u, sizeof u)) {
                djn_free(copy, n);
                st = s_fail(DJN_ERR_NOMEM, "djinn: out of host memory");
            } else {
                g.up_bytes += n;
            }
            s_cache_drop(handle);
        }
    }
    pthread_mutex_unlock(&g.mu);
    return st;
}

void djn_client_seed(uint64_t seed) {
    pthread_mutex_lock(&g.mu);
    if (g.connected && !g.broken && !g.forked) {
        /* in program order with the ops around it: a node of its own */
        djn_status_t st = djn_rec_begin(g.dev, "djinn::seed", "", 1);
        if (st == DJN_OK) {
            djn_enc_int(&g.nodes, (int64_t)(seed & INT64_MAX));
            djn_rec_outs(0);
            st = djn_rec_end(0, DJN_CLASS_MEMORY, DJN_PHASE_NONE);
        }
        if (st == DJN_OK) {
            pthread_mutex_unlock(&g.mu);
            return;
        }
    }
    g.seed = (int64_t)(seed & INT64_MAX); /* before the first connection: sent with the first fragment */
    pthread_mutex_unlock(&g.mu);
}

djn_status_t djn_client_stats(djn_value_t **result, djn_arena_t **arena) {
    *result = NULL;
    *arena = NULL;
    pthread_mutex_lock(&g.mu);
    djn_status_t st = s_flush_locked(true, NULL, NULL);
    if (st == DJN_OK) {
        s_resp_t x;
        st = s_simple_request(DJN_MSG_STATS, NULL, g.timeout_ms, &x);
        if (st == DJN_OK) {
            *result = (djn_value_t *)x.body;
            *arena = x.a;
            x.a = NULL;
            s_resp_free(&x);
        }
    }
    pthread_mutex_unlock(&g.mu);
    return st;
}

void djn_client_counters(djn_client_counters_t *out) {
    pthread_mutex_lock(&g.mu);
    *out = g.ctr;
    pthread_mutex_unlock(&g.mu);
}

void djn_client_counters_reset(void) {
    pthread_mutex_lock(&g.mu);
    memset(&g.ctr, 0, sizeof g.ctr);
    pthread_mutex_unlock(&g.mu);
}

uint32_t djn_client_srg(djn_srg_node_t *out, uint32_t cap, uint64_t fp[2]) {
    pthread_mutex_lock(&g.mu);
    uint32_t n = (uint32_t)g.last_srg.len;
    for (uint32_t i = 0; i < n && i < cap; i++) {
        s_srg_t *r = &((s_srg_t *)g.last_srg.data)[i];
        out[i] = (djn_srg_node_t){r->op, r->ovl, (djn_op_class_t)r->cls, (djn_phase_t)r->phase,
                                  r->persistent};
    }
    if (fp) {
        fp[0] = g.last_fp[0];
        fp[1] = g.last_fp[1];
    }
    pthread_mutex_unlock(&g.mu);
    return n;
}
