/* djn_server.c: transport thread, workers, request handling (the only server file that
 * includes zmq.h).
 *
 * Transport thread: polls the ROUTER (clients) and a PULL socket (replies from workers).
 * A client message is [identity][header][frames...]. The header is decoded and checked
 * here (djn_msg_decode enforces every protocol limit before allocating); HELLO,
 * HEARTBEAT, STATS and CLOSE are answered on the spot; GRAPH and FETCH become jobs on
 * the queue of the worker that owns the requested device. Bad input of any kind gets an
 * ERROR reply naming the problem; nothing a client sends can stop the loop.
 *
 * Workers: one thread per device with its own executor and PUSH socket. A job runs
 * under its session's lock in message order: declare allocations, bind uploads, run the
 * nodes (stopping at the first failure), read fetches, then apply frees (always, so a
 * failed fragment leaks nothing; after the fetches, so a message may read a handle it
 * also lets go of), reply.
 *
 * Ordering: a client's fragments for one device go to one FIFO worker queue, so they
 * run in the order sent. */
#define _GNU_SOURCE
#include "djn_server.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "djn_codec.h"
#include "djn_exec.h"
#include "djn_mem.h"
#include "djn_proto.h"
#include "djn_session.h"

#define S_REPLY_EP "inproc://djn-replies"

typedef struct s_job {
    struct s_job *next;
    zmq_msg_t ident;
    zmq_msg_t *frames; /* frames after the header */
    uint32_t nframes;
    djn_msg_t *msg;
    djn_session_t *sess;
    bool queued; /* counted against the session's queue quota */
} s_job_t;

typedef struct {
    djn_server_t *srv;
    uint32_t index;
    djn_exec_t *exec;
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    s_job_t *head, *tail;
    bool stop;
    _Atomic uint64_t nodes, jobs, errors;
} s_worker_t;

struct djn_server {
    djn_server_cfg_t cfg;
    void *ctx, *router, *pull;
    char endpoint[256];
    djn_sessions_t *sessions;
    djn_text_t *text;
    s_worker_t workers[DJN_SERVER_MAX_DEVICES];
    int nworkers;
    int64_t started_ms;
    _Atomic uint64_t requests, errors, bytes_in, bytes_out;
};

static volatile sig_atomic_t s_stop_flag;

void djn_server_stop(void) { s_stop_flag = 1; }

static int64_t s_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------------ replies */

/* Send [ident][header][frames] on `sock` (ROUTER from the transport thread, PUSH from a
 * worker). Takes ownership of the frames. */
static void s_send_reply(void *sock, zmq_msg_t *ident, const djn_buf_t *hdr, zmq_msg_t *frames,
                         uint32_t nframes, _Atomic uint64_t *bytes_out) {
    zmq_msg_t id;
    zmq_msg_init(&id);
    zmq_msg_copy(&id, ident);
    if (zmq_msg_send(&id, sock, ZMQ_SNDMORE) < 0)
        zmq_msg_close(&id);
    zmq_send(sock, hdr->data, hdr->len, nframes ? ZMQ_SNDMORE : 0);
    uint64_t n = hdr->len;
    for (uint32_t i = 0; i < nframes; i++) {
        n += zmq_msg_size(&frames[i]);
        if (zmq_msg_send(&frames[i], sock, i + 1 < nframes ? ZMQ_SNDMORE : 0) < 0)
            zmq_msg_close(&frames[i]);
    }
    if (bytes_out)
        atomic_fetch_add(bytes_out, n);
}

static void s_send_error(djn_server_t *srv, void *sock, zmq_msg_t *ident, uint64_t sid,
                         uint64_t seq, djn_status_t st, const char *msg) {
    djn_buf_t b = {0};
    djn_enc_error(&b, sid, seq, st, msg);
    atomic_fetch_add(&srv->errors, 1);
    if (srv->cfg.verbose)
        fprintf(stderr, "djinn-server: error reply (seq %" PRIu64 "): %s\n", seq, msg);
    s_send_reply(sock, ident, &b, NULL, 0, &srv->bytes_out);
    djn_buf_release(&b);
}

/* ------------------------------------------------------------------ workers */

static void s_job_free(s_job_t *j) {
    if (j->queued && j->sess)
        djn_session_queue_leave(j->sess);
    zmq_msg_close(&j->ident);
    for (uint32_t i = 0; i < j->nframes; i++)
        zmq_msg_close(&j->frames[i]);
    djn_free(j->frames, j->nframes * sizeof(zmq_msg_t));
    djn_msg_free(&j->msg);
    djn_session_release(&j->sess);
    djn_free(j, sizeof(*j));
}

static void s_run_job(s_worker_t *w, void *push, s_job_t *j) {
    djn_server_t *srv = w->srv;
    const djn_graph_req_t *g = &j->msg->u.graph;
    char err[1024] = {0};
    djn_status_t st = DJN_OK;
    int64_t bad_node = -1;
    djn_buf_t dyn = {0};
    bool has_dyn = false;
    zmq_msg_t *out = g->nfetches ? djn_calloc(g->nfetches, sizeof(zmq_msg_t)) : NULL;
    uint32_t nout = 0;
    if (g->nfetches && !out) {
        st = DJN_ERR_NOMEM;
        snprintf(err, sizeof err, "out of host memory");
    }

    djn_session_t *s = j->sess;
    djn_session_lock(s);
    djn_exec_env_t env;
    djn_session_env(s, w->exec, w->index, &env);
    if (st == DJN_OK && g->seed >= 0) {
        env.seed = g->seed;
        djn_exec_reseed(w->exec, &env);
    }
    for (uint32_t i = 0; st == DJN_OK && i < g->nallocs; i++) {
        if (g->allocs[i].nbytes > srv->cfg.max_tensor_bytes) {
            st = DJN_ERR_LIMIT;
            snprintf(err, sizeof err, "allocation of %" PRIu64 " bytes exceeds the server's limit of %" PRIu64,
                     g->allocs[i].nbytes, srv->cfg.max_tensor_bytes);
        } else if (djn_session_declare(s, g->allocs[i].handle, g->allocs[i].nbytes) != DJN_OK) {
            st = DJN_ERR_HANDLE;
            snprintf(err, sizeof err, "handle 0x%" PRIx64 " declared twice", g->allocs[i].handle);
        }
    }
    for (uint32_t i = 0; st == DJN_OK && i < g->nuploads; i++) {
        const djn_upload_t *u = &g->uploads[i];
        zmq_msg_t *f = &j->frames[u->frame - 1];
        djn_stor_t *stor = NULL;
        djn_text_key_t key = {0, 0, w->index};
        if (u->text) { /* shared content: ours already, or filed now under the hash we compute */
            djn_text_hash(zmq_msg_data(f), zmq_msg_size(f), &key.hi, &key.lo);
            djn_stor_t *have = djn_text_acquire(srv->text, &key);
            if (have) {
                st = djn_session_bind_text(s, u->handle, &key, have);
                if (st != DJN_OK) {
                    djn_text_release(srv->text, &key);
                    snprintf(err, sizeof err, "upload to handle 0x%" PRIx64 " which is already bound", u->handle);
                }
                continue;
            }
        }
        st = djn_exec_upload(w->exec, zmq_msg_data(f), zmq_msg_size(f), &stor, err, sizeof err);
        if (st != DJN_OK)
            break;
        if (u->text) {
            djn_stor_t *filed = djn_text_insert(srv->text, &key, stor);
            st = filed ? djn_session_bind_text(s, u->handle, &key, filed) : DJN_ERR_NOMEM;
            if (filed && st != DJN_OK)
                djn_text_release(srv->text, &key);
        } else {
            st = djn_session_bind(s, u->handle, stor);
        }
        djn_stor_release(stor);
        if (st == DJN_ERR_QUOTA)
            snprintf(err, sizeof err, "session quota exceeded by an upload of %zu bytes (--session-quota-bytes)",
                     zmq_msg_size(f));
        else if (st != DJN_OK)
            snprintf(err, sizeof err, "cannot bind the upload to handle 0x%" PRIx64, u->handle);
    }
    for (uint32_t i = 0; st == DJN_OK && i < g->nnodes; i++) {
        const djn_node_t *n = &g->nodes[i];
        bool dynamic = (n->flags & DJN_NODE_DYNAMIC) && i + 1 == g->nnodes;
        if (dynamic)
            has_dyn = true; /* a DYNAMIC node elsewhere gets NULL and is refused */
        st = djn_exec_node(w->exec, n, &env, dynamic ? &dyn : NULL, err, sizeof err);
        if (st != DJN_OK)
            bad_node = i;
        else
            atomic_fetch_add(&w->nodes, 1);
    }
    if (st == DJN_OK && dyn.failed) {
        st = DJN_ERR_NOMEM;
        snprintf(err, sizeof err, "out of host memory encoding results");
    }
    for (uint32_t i = 0; st == DJN_OK && i < g->nfetches; i++) {
        const djn_fetch_t *f = &g->fetches[i];
        djn_stor_t *stor = djn_session_resolve(s, w->exec, f->handle, 0, err, sizeof err);
        if (!stor) {
            st = DJN_ERR_HANDLE;
            break;
        }
        if (f->nbytes > srv->cfg.max_tensor_bytes) {
            st = DJN_ERR_LIMIT;
            snprintf(err, sizeof err, "fetch of %" PRIu64 " bytes exceeds the limit", f->nbytes);
            break;
        }
        if (zmq_msg_init_size(&out[nout], f->nbytes) != 0) {
            st = DJN_ERR_NOMEM;
            snprintf(err, sizeof err, "out of host memory for a fetch of %" PRIu64 " bytes", f->nbytes);
            break;
        }
        nout++;
        st = djn_exec_read(w->exec, stor, f->offset, f->nbytes, zmq_msg_data(&out[nout - 1]), err,
                           sizeof err);
    }
    /* frees apply even after a failure: the client has let go of these either way */
    for (uint32_t i = 0; i < g->nfrees; i++)
        djn_session_free(s, g->frees[i]);
    djn_session_unlock(s);
    atomic_fetch_add(&w->jobs, 1);

    djn_buf_t b = {0};
    if (st == DJN_OK) {
        djn_enc_header(&b, DJN_MSG_REPLY, j->msg->sid, j->msg->seq);
        djn_enc_map(&b, has_dyn ? 2 : 1);
        djn_enc_cstr(&b, "fetched");
        djn_enc_uint(&b, nout);
        if (has_dyn) {
            djn_enc_cstr(&b, "dyn");
            djn_buf_raw(&b, dyn.data, dyn.len);
        }
        s_send_reply(push, &j->ident, &b, out, nout, &srv->bytes_out);
    } else {
        for (uint32_t i = 0; i < nout; i++)
            zmq_msg_close(&out[i]);
        atomic_fetch_add(&w->errors, 1);
        atomic_fetch_add(&srv->errors, 1);
        djn_enc_header(&b, DJN_MSG_ERROR, j->msg->sid, j->msg->seq);
        djn_enc_map(&b, bad_node >= 0 ? 4 : 2);
        djn_enc_cstr(&b, "code");
        djn_enc_uint(&b, st);
        djn_enc_cstr(&b, "msg");
        djn_enc_cstr(&b, err[0] ? err : djn_status_str(st));
        if (bad_node >= 0) {
            const djn_node_t *n = &g->nodes[bad_node];
            char op[2 * DJN_MAX_NAME + 2];
            snprintf(op, sizeof op, "%s%s%s", n->op, n->overload[0] ? "." : "", n->overload);
            djn_enc_cstr(&b, "node");
            djn_enc_uint(&b, (uint64_t)bad_node);
            djn_enc_cstr(&b, "op");
            djn_enc_cstr(&b, op);
        }
        if (srv->cfg.verbose)
            fprintf(stderr, "djinn-server: %s\n", err);
        s_send_reply(push, &j->ident, &b, NULL, 0, &srv->bytes_out);
    }
    djn_free(out, g->nfetches * sizeof(zmq_msg_t));
    djn_buf_release(&b);
    djn_buf_release(&dyn);
    s_job_free(j);
}

static void *s_worker_main(void *arg) {
    s_worker_t *w = arg;
    void *push = zmq_socket(w->srv->ctx, ZMQ_PUSH);
    int hwm = 0;
    zmq_setsockopt(push, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_connect(push, S_REPLY_EP);
    for (;;) {
        pthread_mutex_lock(&w->mu);
        while (!w->head && !w->stop)
            pthread_cond_wait(&w->cv, &w->mu);
        s_job_t *j = w->head;
        if (j) {
            w->head = j->next;
            if (!w->head)
                w->tail = NULL;
        }
        bool stop = w->stop && !j;
        pthread_mutex_unlock(&w->mu);
        if (stop)
            break;
        s_run_job(w, push, j);
    }
    int linger = 0;
    zmq_setsockopt(push, ZMQ_LINGER, &linger, sizeof linger);
    zmq_close(push);
    return NULL;
}

static void s_enqueue(s_worker_t *w, s_job_t *j) {
    pthread_mutex_lock(&w->mu);
    if (w->tail)
        w->tail->next = j;
    else
        w->head = j;
    w->tail = j;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* ------------------------------------------------------------------ transport */

static void s_reply_hello(djn_server_t *srv, zmq_msg_t *ident, const djn_msg_t *m) {
    if (m->u.hello.version != DJN_PROTO_VERSION) {
        char e[160];
        snprintf(e, sizeof e, "protocol version %u is not supported: this server speaks version %d",
                 m->u.hello.version, DJN_PROTO_VERSION);
        s_send_error(srv, srv->router, ident, 0, m->seq, DJN_ERR_VERSION, e);
        return;
    }
    djn_session_t *s = djn_sessions_open(srv->sessions, s_now_ms());
    if (!s) {
        s_send_error(srv, srv->router, ident, 0, m->seq, DJN_ERR_NOMEM, "cannot open a session");
        return;
    }
    uint64_t sid = djn_session_id(s);
    djn_session_release(&s);
    if (srv->cfg.verbose)
        fprintf(stderr, "djinn-server: session %" PRIx64 " opened by '%s'\n", sid, m->u.hello.client);
    djn_buf_t b = {0};
    djn_enc_header(&b, DJN_MSG_REPLY, sid, m->seq);
    djn_enc_map(&b, 6);
    djn_enc_cstr(&b, "sid");
    djn_enc_uint(&b, sid);
    djn_enc_cstr(&b, "version");
    djn_enc_uint(&b, DJN_PROTO_VERSION);
    djn_enc_cstr(&b, "server");
    djn_enc_cstr(&b, "djinn-server 0.1");
    djn_enc_cstr(&b, "lease_ms");
    djn_enc_uint(&b, srv->cfg.lease_ms);
    djn_enc_cstr(&b, "heartbeat_ms");
    djn_enc_uint(&b, srv->cfg.heartbeat_ms);
    djn_enc_cstr(&b, "devices");
    djn_enc_array(&b, (uint32_t)srv->nworkers);
    for (int i = 0; i < srv->nworkers; i++)
        djn_enc_cstr(&b, djn_exec_device(srv->workers[i].exec));
    s_send_reply(srv->router, ident, &b, NULL, 0, &srv->bytes_out);
    djn_buf_release(&b);
}

static void s_enc_kv(djn_buf_t *b, const char *k, uint64_t v) {
    djn_enc_cstr(b, k);
    djn_enc_uint(b, v);
}

static void s_reply_stats(djn_server_t *srv, zmq_msg_t *ident, const djn_msg_t *m) {
    djn_sessions_stats_t ss;
    djn_sessions_stats(srv->sessions, &ss);
    djn_text_stats_t ts;
    djn_text_stats(srv->text, &ts);
    djn_session_t *me = m->sid ? djn_sessions_get(srv->sessions, m->sid, s_now_ms()) : NULL;
    uint64_t my_bytes = 0, my_peak = 0;
    if (me) {
        djn_session_lock(me);
        my_bytes = djn_session_bytes(me);
        my_peak = djn_session_peak(me);
        djn_session_unlock(me);
        djn_session_release(&me);
    }
    djn_buf_t b = {0};
    djn_enc_header(&b, DJN_MSG_REPLY, m->sid, m->seq);
    djn_enc_map(&b, 21);
    s_enc_kv(&b, "session_bytes", my_bytes);
    s_enc_kv(&b, "session_peak_bytes", my_peak);
    s_enc_kv(&b, "text_entries", ts.entries);
    s_enc_kv(&b, "text_bytes", ts.bytes);
    s_enc_kv(&b, "text_refs", ts.refs);
    s_enc_kv(&b, "text_hits", ts.hits);
    s_enc_kv(&b, "session_quota_bytes", srv->cfg.session_quota_bytes);
    s_enc_kv(&b, "session_max_queued", srv->cfg.session_max_queued);
    s_enc_kv(&b, "uptime_ms", (uint64_t)(s_now_ms() - srv->started_ms));
    s_enc_kv(&b, "sessions_open", ss.open);
    s_enc_kv(&b, "sessions_opened", ss.opened_total);
    s_enc_kv(&b, "sessions_closed", ss.closed_total);
    s_enc_kv(&b, "sessions_expired", ss.expired_total);
    s_enc_kv(&b, "handles", ss.handles);
    s_enc_kv(&b, "bytes_in_use", ss.bytes);
    s_enc_kv(&b, "requests", atomic_load(&srv->requests));
    s_enc_kv(&b, "errors", atomic_load(&srv->errors));
    s_enc_kv(&b, "bytes_received", atomic_load(&srv->bytes_in));
    s_enc_kv(&b, "bytes_sent", atomic_load(&srv->bytes_out));
    s_enc_kv(&b, "lease_ms", srv->cfg.lease_ms);
    djn_enc_cstr(&b, "devices");
    djn_enc_array(&b, (uint32_t)srv->nworkers);
    for (int i = 0; i < srv->nworkers; i++) {
        s_worker_t *w = &srv->workers[i];
        djn_enc_map(&b, 4);
        djn_enc_cstr(&b, "name");
        djn_enc_cstr(&b, djn_exec_device(w->exec));
        s_enc_kv(&b, "nodes", atomic_load(&w->nodes));
        s_enc_kv(&b, "fragments", atomic_load(&w->jobs));
        s_enc_kv(&b, "errors", atomic_load(&w->errors));
    }
    s_send_reply(srv->router, ident, &b, NULL, 0, &srv->bytes_out);
    djn_buf_release(&b);
}

static void s_reply_empty(djn_server_t *srv, zmq_msg_t *ident, const djn_msg_t *m) {
    djn_buf_t b = {0};
    djn_enc_header(&b, DJN_MSG_REPLY, m->sid, m->seq);
    djn_enc_map(&b, 0);
    s_send_reply(srv->router, ident, &b, NULL, 0, &srv->bytes_out);
    djn_buf_release(&b);
}

/* HAVE: bind each handle to Text content the server already holds on that device.
 * Body {dev, items: [[handle, hash_hi, hash_lo, nbytes], ...]}; the reply lists the
 * indexes of the items it did not have, whose bytes the client then uploads. */
static void s_reply_have(djn_server_t *srv, zmq_msg_t *ident, const djn_msg_t *m, djn_session_t *s) {
    const djn_value_t *dev = djn_value_get(m->body, "dev"), *items = djn_value_get(m->body, "items");
    if (!dev || dev->kind != DJN_V_INT || dev->u.i < 0 || dev->u.i >= srv->nworkers || !items ||
        items->kind != DJN_V_LIST) {
        s_send_error(srv, srv->router, ident, m->sid, m->seq, DJN_ERR_PROTO,
                     "HAVE needs 'dev' (a device index) and 'items' (an array)");
        return;
    }
    djn_buf_t miss = {0};
    uint32_t nmiss = 0;
    djn_session_lock(s);
    for (uint32_t i = 0; i < items->len; i++) {
        const djn_value_t *e = &items->u.items[i];
        if (e->kind != DJN_V_LIST || e->len != 4 || e->u.items[0].kind != DJN_V_INT ||
            e->u.items[1].kind != DJN_V_INT || e->u.items[2].kind != DJN_V_INT) {
            djn_session_unlock(s);
            djn_buf_release(&miss);
            s_send_error(srv, srv->router, ident, m->sid, m->seq, DJN_ERR_PROTO,
                         "each HAVE item must be [handle, hash_hi, hash_lo, nbytes]");
            return;
        }
        uint64_t h = (uint64_t)e->u.items[0].u.i;
        djn_text_key_t key = {(uint64_t)e->u.items[1].u.i, (uint64_t)e->u.items[2].u.i, (uint32_t)dev->u.i};
        djn_stor_t *have = h && h < (1ull << 62) ? djn_text_acquire(srv->text, &key) : NULL;
        if (have && djn_session_bind_text(s, h, &key, have) != DJN_OK) {
            djn_text_release(srv->text, &key);
            have = NULL;
        }
        if (!have) {
            djn_enc_uint(&miss, i);
            nmiss++;
        }
    }
    djn_session_unlock(s);
    djn_buf_t b = {0};
    djn_enc_header(&b, DJN_MSG_REPLY, m->sid, m->seq);
    djn_enc_map(&b, 1);
    djn_enc_cstr(&b, "missing");
    djn_enc_array(&b, nmiss);
    djn_buf_raw(&b, miss.data, miss.len);
    s_send_reply(srv->router, ident, &b, NULL, 0, &srv->bytes_out);
    djn_buf_release(&b);
    djn_buf_release(&miss);
}

/* Receive the rest of a multipart message from the ROUTER. */
static void s_handle_client(djn_server_t *srv) {
    zmq_msg_t ident;
    zmq_msg_init(&ident);
    if (zmq_msg_recv(&ident, srv->router, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&ident);
        return;
    }
    atomic_fetch_add(&srv->requests, 1);
    zmq_msg_t hdr;
    zmq_msg_init(&hdr);
    bool have_hdr = false;
    zmq_msg_t *frames = NULL;
    uint32_t nframes = 0, cap = 0, total = 0;
    bool too_many = false, alloc_failed = false;
    uint64_t bytes = 0;
    int more = zmq_msg_more(&ident);
    while (more) {
        zmq_msg_t part;
        zmq_msg_init(&part);
        if (zmq_msg_recv(&part, srv->router, 0) < 0) {
            zmq_msg_close(&part);
            break;
        }
        more = zmq_msg_more(&part);
        bytes += zmq_msg_size(&part);
        if (!have_hdr) {
            zmq_msg_move(&hdr, &part);
            have_hdr = true;
            zmq_msg_close(&part);
            continue;
        }
        total++;
        if (total > DJN_MAX_FRAMES) { /* keep draining, answer once at the end */
            too_many = true;
            zmq_msg_close(&part);
            continue;
        }
        if (nframes == cap) {
            uint32_t ncap = cap ? cap * 2 : 8;
            zmq_msg_t *nf = djn_realloc(frames, cap * sizeof(zmq_msg_t), ncap * sizeof(zmq_msg_t));
            if (!nf) {
                alloc_failed = true;
                zmq_msg_close(&part);
                continue;
            }
            frames = nf;
            cap = ncap;
        }
        zmq_msg_init(&frames[nframes]);
        zmq_msg_move(&frames[nframes++], &part);
        zmq_msg_close(&part);
    }
    atomic_fetch_add(&srv->bytes_in, bytes);
    djn_msg_t *m = NULL;
    char err[512] = {0};
    uint64_t seq = 0;
    djn_session_t *sess = NULL;
    if (!have_hdr) {
        s_send_error(srv, srv->router, &ident, 0, 0, DJN_ERR_PROTO, "message without a header frame");
        goto done;
    }
    if (too_many) {
        snprintf(err, sizeof err, "message has %u frames, the limit is %u", total, DJN_MAX_FRAMES);
        s_send_error(srv, srv->router, &ident, 0, 0, DJN_ERR_LIMIT, err);
        goto done;
    }
    if (alloc_failed) {
        s_send_error(srv, srv->router, &ident, 0, 0, DJN_ERR_NOMEM, "out of host memory receiving frames");
        goto done;
    }
    for (uint32_t i = 0; i < nframes; i++)
        if (zmq_msg_size(&frames[i]) > srv->cfg.max_tensor_bytes) {
            snprintf(err, sizeof err, "frame %u of %zu bytes exceeds the limit of %" PRIu64, i + 1,
                     zmq_msg_size(&frames[i]), srv->cfg.max_tensor_bytes);
            s_send_error(srv, srv->router, &ident, 0, 0, DJN_ERR_LIMIT, err);
            goto done;
        }
    djn_status_t st = djn_msg_decode(zmq_msg_data(&hdr), zmq_msg_size(&hdr), nframes, &m, &seq, err,
                                     sizeof err);
    if (st != DJN_OK) {
        s_send_error(srv, srv->router, &ident, 0, seq, st, err[0] ? err : djn_status_str(st));
        goto done;
    }
    switch (m->type) {
    case DJN_MSG_HELLO:
        s_reply_hello(srv, &ident, m);
        goto done;
    case DJN_MSG_STATS:
        s_reply_stats(srv, &ident, m);
        goto done;
    default:
        break;
    }
    sess = djn_sessions_get(srv->sessions, m->sid, s_now_ms());
    if (!sess) {
        snprintf(err, sizeof err, "unknown session 0x%" PRIx64 ": the server restarted or the lease expired", m->sid);
        s_send_error(srv, srv->router, &ident, m->sid, m->seq, DJN_ERR_SESSION, err);
        goto done;
    }
    if (m->type == DJN_MSG_HEARTBEAT) {
        s_reply_empty(srv, &ident, m);
        goto done;
    }
    if (m->type == DJN_MSG_HAVE) {
        s_reply_have(srv, &ident, m, sess);
        goto done;
    }
    if (m->type == DJN_MSG_CLOSE) {
        djn_session_release(&sess);
        djn_sessions_close(srv->sessions, m->sid);
        if (srv->cfg.verbose)
            fprintf(stderr, "djinn-server: session %" PRIx64 " closed\n", m->sid);
        s_reply_empty(srv, &ident, m);
        goto done;
    }
    if (m->type != DJN_MSG_GRAPH && m->type != DJN_MSG_FETCH) {
        snprintf(err, sizeof err, "message type %u is reserved and not served by this version", m->type);
        s_send_error(srv, srv->router, &ident, m->sid, m->seq, DJN_ERR_PROTO, err);
        goto done;
    }
    if (m->u.graph.device >= (uint32_t)srv->nworkers) {
        snprintf(err, sizeof err, "device %u does not exist: this server has %d", m->u.graph.device,
                 srv->nworkers);
        s_send_error(srv, srv->router, &ident, m->sid, m->seq, DJN_ERR_DEVICE, err);
        goto done;
    }
    if (!djn_session_queue_enter(sess)) {
        snprintf(err, sizeof err, "session quota exceeded: more than %u fragments queued (--session-max-queued)",
                 srv->cfg.session_max_queued);
        s_send_error(srv, srv->router, &ident, m->sid, m->seq, DJN_ERR_QUOTA, err);
        goto done;
    }
    s_job_t *j = djn_calloc(1, sizeof(*j));
    if (!j) {
        djn_session_queue_leave(sess);
        s_send_error(srv, srv->router, &ident, m->sid, m->seq, DJN_ERR_NOMEM, "out of host memory");
        goto done;
    }
    zmq_msg_init(&j->ident);
    zmq_msg_move(&j->ident, &ident);
    j->frames = frames;
    j->nframes = nframes;
    j->msg = m;
    j->sess = sess;
    j->queued = true;
    frames = NULL;
    nframes = cap = 0;
    m = NULL;
    sess = NULL;
    s_enqueue(&srv->workers[j->msg->u.graph.device], j);
done:
    djn_session_release(&sess);
    djn_msg_free(&m);
    for (uint32_t i = 0; i < nframes; i++)
        zmq_msg_close(&frames[i]);
    djn_free(frames, cap * sizeof(zmq_msg_t));
    zmq_msg_close(&hdr);
    zmq_msg_close(&ident);
}

static void s_forward_reply(djn_server_t *srv) {
    for (;;) {
        zmq_msg_t part;
        zmq_msg_init(&part);
        if (zmq_msg_recv(&part, srv->pull, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&part);
            return;
        }
        int more = zmq_msg_more(&part);
        if (zmq_msg_send(&part, srv->router, more ? ZMQ_SNDMORE : 0) < 0)
            zmq_msg_close(&part);
        if (!more)
            return;
    }
}

djn_server_t *djn_server_new(const djn_server_cfg_t *cfg, char *err, size_t errlen) {
    djn_server_t *srv = djn_calloc(1, sizeof(*srv));
    if (!srv) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    srv->cfg = *cfg;
    srv->started_ms = s_now_ms();
    srv->text = djn_text_new();
    srv->sessions = srv->text ? djn_sessions_new(cfg->lease_ms, cfg->session_quota_bytes,
                                                 cfg->session_max_queued, srv->text)
                              : NULL;
    srv->ctx = zmq_ctx_new();
    if (!srv->sessions || !srv->ctx) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    srv->router = zmq_socket(srv->ctx, ZMQ_ROUTER);
    srv->pull = zmq_socket(srv->ctx, ZMQ_PULL);
    int hwm = 0, linger = 0, mandatory = 0;
    int64_t maxmsg = (int64_t)cfg->max_tensor_bytes + (int64_t)DJN_MAX_HEADER_BYTES;
    zmq_setsockopt(srv->router, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(srv->router, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(srv->router, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(srv->router, ZMQ_ROUTER_MANDATORY, &mandatory, sizeof mandatory);
    zmq_setsockopt(srv->router, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    zmq_setsockopt(srv->pull, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(srv->pull, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_bind(srv->pull, S_REPLY_EP) != 0) {
        snprintf(err, errlen, "cannot bind %s: %s", S_REPLY_EP, zmq_strerror(errno));
        goto fail;
    }
    if (zmq_bind(srv->router, cfg->listen) != 0) {
        snprintf(err, errlen, "cannot listen on '%s': %s", cfg->listen, zmq_strerror(errno));
        goto fail;
    }
    size_t eplen = sizeof srv->endpoint;
    zmq_getsockopt(srv->router, ZMQ_LAST_ENDPOINT, srv->endpoint, &eplen);
    for (int i = 0; i < cfg->ndevices; i++) {
        s_worker_t *w = &srv->workers[i];
        w->srv = srv;
        w->index = (uint32_t)i;
        w->exec = djn_exec_new(cfg->devices[i], err, errlen);
        if (!w->exec)
            goto fail;
        pthread_mutex_init(&w->mu, NULL);
        pthread_cond_init(&w->cv, NULL);
        if (pthread_create(&w->th, NULL, s_worker_main, w) != 0) {
            snprintf(err, errlen, "cannot start a worker thread");
            djn_exec_destroy(&w->exec);
            goto fail;
        }
        srv->nworkers++;
    }
    return srv;
fail:
    djn_server_destroy(&srv);
    return NULL;
}

djn_status_t djn_server_run(djn_server_t *srv) {
    if (srv->cfg.announce_fd >= 0) {
        dprintf(srv->cfg.announce_fd, "DJINN_ENDPOINT %s\n", srv->endpoint);
        close(srv->cfg.announce_fd);
    }
    fprintf(stderr, "djinn-server: listening on %s (", srv->endpoint);
    for (int i = 0; i < srv->nworkers; i++)
        fprintf(stderr, "%s%s", i ? ", " : "", djn_exec_device(srv->workers[i].exec));
    fprintf(stderr, ")\n");
    int64_t next_check = s_now_ms() + 250;
    while (!s_stop_flag) {
        zmq_pollitem_t items[2] = {{srv->router, 0, ZMQ_POLLIN, 0}, {srv->pull, 0, ZMQ_POLLIN, 0}};
        int rc = zmq_poll(items, 2, 100);
        if (rc < 0 && errno != EINTR)
            break;
        if (rc > 0) {
            if (items[1].revents & ZMQ_POLLIN)
                for (int k = 0; k < 64; k++) s_forward_reply(srv);
            if (items[0].revents & ZMQ_POLLIN)
                for (int k = 0; k < 64; k++) {
                    zmq_pollitem_t one = {srv->router, 0, ZMQ_POLLIN, 0};
                    if (zmq_poll(&one, 1, 0) <= 0)
                        break;
                    s_handle_client(srv);
                }
        }
        int64_t now = s_now_ms();
        if (now >= next_check) {
            next_check = now + 250;
            uint32_t n = djn_sessions_expire(srv->sessions, now);
            if (n && srv->cfg.verbose)
                fprintf(stderr, "djinn-server: reclaimed %u expired session(s)\n", n);
            if (srv->cfg.parent_pid > 0 && getppid() != srv->cfg.parent_pid) {
                fprintf(stderr, "djinn-server: parent process %d is gone, exiting\n", srv->cfg.parent_pid);
                break;
            }
        }
    }
    return DJN_OK;
}

void djn_server_destroy(djn_server_t **self_p) {
    if (!self_p || !*self_p)
        return;
    djn_server_t *srv = *self_p;
    for (int i = 0; i < srv->nworkers; i++) {
        s_worker_t *w = &srv->workers[i];
        pthread_mutex_lock(&w->mu);
        w->stop = true;
        pthread_cond_signal(&w->cv);
        pthread_mutex_unlock(&w->mu);
        pthread_join(w->th, NULL);
        while (w->head) {
            s_job_t *j = w->head;
            w->head = j->next;
            s_job_free(j);
        }
        djn_exec_destroy(&w->exec);
        pthread_mutex_destroy(&w->mu);
        pthread_cond_destroy(&w->cv);
    }
    djn_sessions_destroy(&srv->sessions);
    djn_text_destroy(&srv->text);
    if (srv->router)
        zmq_close(srv->router);
    if (srv->pull)
        zmq_close(srv->pull);
    if (srv->ctx)
        zmq_ctx_term(srv->ctx);
    djn_free(srv, sizeof(*srv));
    *self_p = NULL;
}

static void s_print_value(const djn_value_t *v, int indent);

int djn_server_print_stats(const char *endpoint, int timeout_ms) {
    void *ctx = zmq_ctx_new();
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    int rc = 1;
    if (zmq_connect(s, endpoint) != 0) {
        fprintf(stderr, "djinn-server: bad endpoint '%s'\n", endpoint);
        goto out;
    }
    djn_buf_t b = {0};
    djn_enc_header(&b, DJN_MSG_STATS, 0, 1);
    djn_enc_map(&b, 0);
    zmq_send(s, b.data, b.len, 0);
    djn_buf_release(&b);
    zmq_pollitem_t it = {s, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, timeout_ms) <= 0) {
        fprintf(stderr, "djinn-server: no answer from %s within %d ms\n", endpoint, timeout_ms);
        goto out;
    }
    zmq_msg_t m;
    zmq_msg_init(&m);
    zmq_msg_recv(&m, s, 0);
    djn_arena_t *a = djn_arena_new();
    djn_value_t *root;
    char err[256];
    if (a && djn_decode_value(zmq_msg_data(&m), zmq_msg_size(&m), a, &root, err, sizeof err) == DJN_OK) {
        printf("djinn-server %s\n", endpoint);
        s_print_value(djn_value_get(root, "body"), 1);
        rc = 0;
    }
    djn_arena_destroy(&a);
    zmq_msg_close(&m);
out:
    zmq_close(s);
    zmq_ctx_term(ctx);
    return rc;
}

static void s_print_value(const djn_value_t *v, int indent) {
    if (!v)
        return;
    if (v->kind == DJN_V_MAP) {
        for (uint32_t i = 0; i < v->len; i++) {
            const djn_value_t *k = &v->u.items[2 * i], *x = &v->u.items[2 * i + 1];
            printf("%*s%.*s:", indent * 2, "", (int)k->len, k->u.s);
            if (x->kind == DJN_V_MAP || x->kind == DJN_V_LIST) {
                printf("\n");
                s_print_value(x, indent + 1);
            } else {
                printf(" ");
                s_print_value(x, 0);
            }
        }
    } else if (v->kind == DJN_V_LIST) {
        for (uint32_t i = 0; i < v->len; i++) {
            printf("%*s-\n", indent * 2, "");
            s_print_value(&v->u.items[i], indent + 1);
        }
    } else if (v->kind == DJN_V_INT) {
        printf("%" PRId64 "\n", v->u.i);
    } else if (v->kind == DJN_V_STR) {
        printf("%.*s\n", (int)v->len, v->u.s);
    } else if (v->kind == DJN_V_FLOAT) {
        printf("%g\n", v->u.f);
    } else {
        printf("?\n");
    }
}
