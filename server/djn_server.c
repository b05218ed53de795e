/* djn_server.c: the transport thread, its dispatch, and the device workers (the only
 * server file that includes zmq.h).
 *
 * Transport thread: polls the ROUTER (clients) and a PULL socket (replies from workers).
 * A client message is [identity][header][frames...]. The header is decoded and checked
 * (djn_msg_decode enforces every protocol limit before allocating); HELLO, HEARTBEAT,
 * STATS and CLOSE are answered on the spot; GRAPH, GRAPH_CACHED, FETCH and HAVE become
 * jobs on the queue of the device they name (djn_sched), so that they run in the order a
 * session sent them and the transport never waits for a fragment or a session lock. Bad
 * input of any kind gets an ERROR reply naming the problem; nothing a client sends can
 * stop the loop.
 *
 * Workers: one thread per device. A worker pops a job, runs it through the fragment
 * runtime (djn_frag.c) with its device's executor and VMU, encodes the reply and pushes
 * it to the transport over inproc: one PUSH socket per device, which the worker and the
 * device's lanes share under a mutex, so that a device's replies reach the transport in
 * the order they were sent (two sockets' pipes would be fair-queued).
 * Lanes (--lanes, CPU devices): more threads per device, each with its own executor on
 * the device's VMU, that run only realtime and interactive fragments (djn_sched_pop_lane)
 * beside the worker, as a nested run would (no slab: Data allocations), so that such a
 * fragment does not wait for the batch node the worker is running. */
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

#include "djn_auth.h"
#include "djn_codec.h"
#include "djn_crash.h"
#include "djn_exec.h"
#include "djn_frag.h"
#include "djn_log.h"
#include "djn_mem.h"
#include "djn_models.h"
#include "djn_place.h"
#include "djn_proto.h"
#include "djn_sched.h"
#include "djn_session.h"
#include "djn_tcache.h"
#include "djn_tlb.h"
#include "djn_vmu.h"

#define S_REPLY_EP "inproc://djn-replies"
#define S_ZAP_EP "inproc://zeromq.zap.01" /* where libzmq asks who may connect (RFC 27) */
#define S_MON_EP "inproc://djn-monitor"   /* the ROUTER's disconnect events */

/* Where replies leave: the ROUTER (only the transport thread sends there) or a device's
 * PUSH socket, shared by the device's worker and lanes under `mu`. A thread holds the
 * session's lock until its reply has left (djn_frag.h), and a device's replies go down
 * one pipe, so a session's replies reach the client in the order its fragments ran. */
typedef struct {
    void *sock;
    pthread_mutex_t *mu; /* NULL: one thread only */
} s_out_t;

typedef struct s_job {
    djn_sched_item_t item; /* first: the queue links it */
    zmq_msg_t ident;
    zmq_msg_t *frames; /* frames after the header */
    uint32_t nframes, frames_cap;
    uint64_t sched_ns; /* time spent scheduling on the transport side */
    djn_msg_t *msg;
    djn_session_t *sess;
    djn_tlb_entry_t *plan;   /* GRAPH_CACHED: the cached fragment whose nodes run */
    const djn_node_t *nodes; /* GRAPH_CACHED: those nodes patched (in msg's arena) */
    uint64_t frame_bytes;    /* its data frames, charged to the session while queued */
    uint64_t start_ns;       /* when its run began (0: not sampled for STATS) */
    uint64_t nested_ns;      /* time its run spent in nested fragments (preemption) */
    uint64_t cpu0_ns;        /* the worker thread's CPU clock when its run began */
    uint64_t nested_cpu_ns;  /* ... and the CPU time its nested fragments took */
} s_job_t;

typedef struct s_worker {
    djn_server_t *srv;
    uint32_t index;
    djn_exec_t *exec;
    djn_vmu_t *vmu; /* CPU devices: the Data segment and the stack slab */
    bool cpu;       /* a CPU device: its time is the worker thread's CPU time */
    bool lane;      /* a lane (its vmu is the worker's); else the device's worker */
    pthread_t th;
    bool started;
    _Atomic uint64_t nodes, jobs, errors;
    struct s_worker *counts; /* whose nodes/jobs/errors it adds to: the device's worker */
    s_out_t push;            /* the device's worker: the device's PUSH socket ... */
    pthread_mutex_t push_mu; /* ... and the lock its worker and lanes send under */
    bool push_mu_init;
} s_worker_t;

struct djn_server {
    djn_server_cfg_t cfg;
    void *ctx, *router, *pull, *zap;
    s_out_t rout;     /* the ROUTER, as a reply destination */
    void *mon;        /* PAIR: the ROUTER's socket monitor (connections that closed) */
    djn_auth_t *auth; /* NULL: no keys, one tenant (the owner), every client an operator */
    char endpoint[256];
    djn_sessions_t *sessions;
    djn_text_t *text;
    djn_models_t *models; /* --models: ghost loading (djn_models.h) */
    djn_tcache_t *tcache; /* --text-cache DIR: Text uploads on disk (djn_tcache.h) */
    djn_tlb_t *tlb;
    djn_sched_t *sched;
    s_worker_t workers[DJN_SERVER_MAX_DEVICES];
    int nworkers;
    s_worker_t lanes[DJN_SERVER_MAX_DEVICES * DJN_SCHED_MAX_LANES];
    int nlanes;
    int64_t started_ms;
    _Atomic uint64_t requests, errors, bytes_in, bytes_out, inline_runs;
    _Atomic uint64_t pushed; /* replies the devices' threads sent to the transport ... */
    uint64_t forwarded;      /* ... and those the transport forwarded (its thread only) */
    _Atomic uint64_t errors_by[DJN_ERR_DENIED + 1]; /* ERROR replies by status */
    /* scheduling latency: header decode + plan-cache lookup (transport) and planning
     * (worker), per fragment, split by plan-cache hit (GRAPH_CACHED) and miss (GRAPH) */
    _Atomic uint64_t sched_ns_hit, sched_n_hit, sched_ns_miss, sched_n_miss;
    bool draining; /* SIGTERM: no new sessions; exit once no fragment is queued or running */
};

static uint64_t s_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The calling thread's CPU time: what a fragment costs a CPU device, without the time
 * the OS gave the core to other processes meanwhile. */
static uint64_t s_cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int64_t s_now_ms(void) {
    return (int64_t)(s_now_ns() / 1000000);
}

static volatile sig_atomic_t s_stop_flag, s_drain_flag;

void djn_server_stop(void) {
    s_stop_flag = 1;
}

void djn_server_drain(void) {
    if (s_drain_flag) /* a second request: stop now */
        s_stop_flag = 1;
    s_drain_flag = 1;
}

/* ------------------------------------------------------------------ replies */

/* A fetched buffer sent zero-copy: freed once ZeroMQ has sent it, and only then given
 * back to its session's quota (djn_session_charge_reply). */
typedef struct {
    djn_session_t *sess;
    uint64_t len;
    void *hold; /* a lent storage snapshot (djn_exec_lend), or NULL: data is ours */
} s_sent_t;

static void s_free_sent(void *data, void *hint) {
    s_sent_t *h = hint;
    djn_frag_fetched_free(data, h->len, h->hold);
    djn_session_uncharge_reply(h->sess, h->len);
    djn_session_release(&h->sess);
    djn_free(h, sizeof(*h));
}

/* Send [ident][header][frames] to `out` (the ROUTER from the transport thread, a device's
 * PUSH from its worker or lanes), as one message under its lock. Takes ownership of the
 * frames. */
static void s_send_reply(djn_server_t *srv, s_out_t *out, zmq_msg_t *ident, const djn_buf_t *hdr,
                         zmq_msg_t *frames, uint32_t nframes) {
    void *sock = out->sock;
    zmq_msg_t id;
    zmq_msg_init(&id);
    zmq_msg_copy(&id, ident);
    if (out->mu)
        pthread_mutex_lock(out->mu);
    if (zmq_msg_send(&id, sock, ZMQ_SNDMORE) < 0)
        zmq_msg_close(&id);
    zmq_send(sock, hdr->data, hdr->len, nframes ? ZMQ_SNDMORE : 0);
    uint64_t n = hdr->len;
    for (uint32_t i = 0; i < nframes; i++) {
        n += zmq_msg_size(&frames[i]);
        if (zmq_msg_send(&frames[i], sock, i + 1 < nframes ? ZMQ_SNDMORE : 0) < 0)
            zmq_msg_close(&frames[i]);
    }
    if (out->mu) {
        atomic_fetch_add(&srv->pushed, 1);
        pthread_mutex_unlock(out->mu);
    }
    atomic_fetch_add(&srv->bytes_out, n);
}

static void s_send_error(djn_server_t *srv, s_out_t *sock, zmq_msg_t *ident, uint64_t sid,
                         uint64_t seq, djn_status_t st, const char *msg, int64_t node,
                         const char *op) {
    djn_buf_t b = {0};
    djn_msg_hdr_t h = {DJN_MSG_ERROR, sid, seq};
    djn_error_rep_t e = {st, msg, node, op};
    djn_error_rep_encode(&b, &h, &e);
    atomic_fetch_add(&srv->errors, 1);
    atomic_fetch_add(&srv->errors_by[st > 0 && st <= DJN_ERR_DENIED ? st : DJN_ERR_INTERNAL], 1);
    djn_log(DJN_LOG_DEBUG, "error reply", DJN_KV_HEX("session", sid), DJN_KV_U64("seq", seq),
            DJN_KV_STR("status", djn_status_name(st)), DJN_KV_STR("op", op),
            DJN_KV_STR("error", msg));
    s_send_reply(srv, sock, ident, &b, NULL, 0);
    djn_buf_release(&b);
}

static void s_send_simple(djn_server_t *srv, zmq_msg_t *ident, const djn_msg_t *m, djn_status_t st,
                          const char *msg) {
    s_send_error(srv, &srv->rout, ident, m->sid, m->seq, st, msg, -1, NULL);
}

/* ------------------------------------------------------------------ workers */

static void s_job_free(djn_server_t *srv, s_job_t *j) {
    djn_tlb_release(srv->tlb, &j->plan);
    if (j->sess)
        djn_session_queue_leave(j->sess, j->frame_bytes, s_now_ms());
    zmq_msg_close(&j->ident);
    for (uint32_t i = 0; i < j->nframes; i++)
        zmq_msg_close(&j->frames[i]);
    djn_free(j->frames, j->frames_cap * sizeof(zmq_msg_t));
    djn_msg_free(&j->msg);
    djn_session_release(&j->sess);
    djn_free(j, sizeof(*j));
}

static void s_note(s_worker_t *w, s_job_t *j, uint64_t start, uint64_t end, uint64_t nested) {
    uint64_t run = end - start;
    run = run > nested ? run - nested : 0;
    djn_sched_note(w->srv->sched, w->index, j->item.cls,
                   start > j->item.enq_ns ? start - j->item.enq_ns : 0, run);
    /* the batch share: a CPU device's time is CPU time (on a loaded host a token
     * descheduled for 100 ms did not cost the device 100 ms); a GPU's is wall time */
    uint64_t cost = run;
    if (w->cpu) {
        uint64_t cpu = s_cpu_ns() - j->cpu0_ns;
        cost = cpu > j->nested_cpu_ns ? cpu - j->nested_cpu_ns : 0;
    }
    djn_sched_ran(w->srv->sched, w->index, &j->item, cost);
}

/* A job of a session whose lease ran out (its client is gone): answered, never run. */
static void s_refuse_expired(djn_server_t *srv, s_out_t *sock, s_job_t *j) {
    char e[200];
    snprintf(e, sizeof e,
             "unknown session 0x%" PRIx64 ": the lease expired while this message waited "
             "(the client was silent for a lease and its connection closed)",
             j->msg->sid);
    s_send_error(srv, sock, &j->ident, j->msg->sid, j->msg->seq, DJN_ERR_SESSION, e, -1, NULL);
}

static djn_frag_env_t s_env(s_worker_t *w) {
    djn_server_t *srv = w->srv;
    return (djn_frag_env_t){.exec = w->exec,
                            .vmu = w->vmu,
                            .device = w->index,
                            .text = srv->text,
                            .tlb = srv->tlb,
                            .max_tensor_bytes = srv->cfg.max_tensor_bytes};
}

static void s_run_have(s_worker_t *w, s_out_t *push, s_job_t *j) {
    djn_server_t *srv = w->srv;
    djn_frag_env_t env = s_env(w);
    uint32_t *missing = NULL, nmissing = 0;
    djn_status_t st = djn_frag_have(&env, j->sess, &j->msg->u.have, &missing, &nmissing);
    if (j->start_ns)
        s_note(w, j, j->start_ns, s_now_ns(), 0);
    if (st != DJN_OK) {
        s_send_error(srv, push, &j->ident, j->msg->sid, j->msg->seq, st, djn_status_str(st), -1,
                     NULL);
        return;
    }
    djn_buf_t b = {0};
    djn_msg_hdr_t h = {DJN_MSG_REPLY, j->msg->sid, j->msg->seq};
    djn_have_rep_t rep = {nmissing, missing};
    djn_have_rep_encode(&b, &h, &rep);
    s_send_reply(srv, push, &j->ident, &b, NULL, 0);
    djn_buf_release(&b);
    djn_free(missing, j->msg->u.have.nitems * sizeof(uint32_t));
}

#define S_SMALL_FRAME 4096u /* fetched frames this small are copied into the message */

static void s_run_and_reply(s_worker_t *w, const djn_frag_env_t *envp, s_out_t *push, s_job_t *j) {
    djn_server_t *srv = w->srv;
    djn_frag_env_t env = *envp;
    djn_blob_t *blobs = j->nframes ? djn_calloc(j->nframes, sizeof(djn_blob_t)) : NULL;
    djn_frag_out_t out;
    if (j->nframes && !blobs) {
        s_send_error(srv, push, &j->ident, j->msg->sid, j->msg->seq, DJN_ERR_NOMEM,
                     "out of host memory", -1, NULL);
        return;
    }
    for (uint32_t i = 0; i < j->nframes; i++)
        blobs[i] = (djn_blob_t){zmq_msg_data(&j->frames[i]), zmq_msg_size(&j->frames[i])};
    djn_frag_in_t in = {j->msg->type, j->sess, &j->msg->u.graph, j->plan,
                        j->nodes,     blobs,   j->nframes};
    djn_frag_run(&env, &in, &out);
    if (j->start_ns) /* sampled before the reply leaves: a STATS after it sees this run */
        s_note(w, j, j->start_ns, s_now_ns(), j->nested_ns);
    if (j->plan && out.st == DJN_OK) /* what may run inline next time (s_inline_ok) */
        djn_tlb_note_run(j->plan,
                         out.rng || out.dyn.len ? UINT64_MAX
                         : out.run_ns           ? out.run_ns
                                                : 1,
                         j->nodes);
    djn_free(blobs, j->nframes * sizeof(djn_blob_t));
    atomic_fetch_add(&w->counts->nodes, out.nodes_run);
    atomic_fetch_add(&w->counts->jobs, 1);
    if (in.g->nnodes || j->plan) {
        uint64_t ns = j->sched_ns + out.plan_ns;
        atomic_fetch_add(j->plan ? &srv->sched_ns_hit : &srv->sched_ns_miss, ns);
        atomic_fetch_add(j->plan ? &srv->sched_n_hit : &srv->sched_n_miss, 1);
    }
    if (out.st != DJN_OK) {
        atomic_fetch_add(&w->counts->errors, 1);
        s_send_error(srv, push, &j->ident, j->msg->sid, j->msg->seq, out.st, out.err, out.bad_node,
                     out.op);
        djn_frag_out_release(&out);
        return;
    }
    zmq_msg_t *frames = out.nfetched ? djn_calloc(out.nfetched, sizeof(zmq_msg_t)) : NULL;
    uint32_t nframes = 0;
    djn_status_t st = out.nfetched && !frames ? DJN_ERR_NOMEM : DJN_OK;
    for (uint32_t i = 0; st == DJN_OK && i < out.nfetched; i++) {
        if (out.fetched_len[i] <= S_SMALL_FRAME && !out.fetched_hold[i]) {
            /* a scalar for .item() and the like: copied into ZeroMQ's own message (inline
             * up to 33 bytes) and given back now, rather than tracked until sent */
            if (zmq_msg_init_size(&frames[i], out.fetched_len[i]) != 0) {
                st = DJN_ERR_NOMEM;
                break;
            }
            memcpy(zmq_msg_data(&frames[i]), out.fetched[i], out.fetched_len[i]);
            djn_frag_fetched_free(out.fetched[i], out.fetched_len[i], NULL);
            djn_session_uncharge_reply(out.sess, out.fetched_len[i]);
            out.fetched[i] = NULL;
            nframes++;
            continue;
        }
        s_sent_t *h = djn_malloc(sizeof(*h));
        if (h)
            *h = (s_sent_t){djn_session_retain(out.sess), out.fetched_len[i], out.fetched_hold[i]};
        if (!h || zmq_msg_init_data(&frames[i], out.fetched[i], out.fetched_len[i], s_free_sent,
                                    h) != 0) {
            if (h)
                djn_session_release(&h->sess);
            djn_free(h, sizeof(*h));
            st = DJN_ERR_NOMEM;
            break;
        }
        out.fetched[i] = NULL; /* ZeroMQ frees it once sent */
        nframes++;
    }
    if (st != DJN_OK) {
        for (uint32_t i = 0; i < nframes; i++)
            zmq_msg_close(&frames[i]);
        s_send_error(srv, push, &j->ident, j->msg->sid, j->msg->seq, st, "out of host memory", -1,
                     NULL);
    } else {
        djn_buf_t b = {0};
        djn_msg_hdr_t h = {DJN_MSG_REPLY, j->msg->sid, j->msg->seq};
        djn_graph_rep_t rep = {nframes, NULL, out.dyn.data, out.dyn.len};
        djn_graph_rep_encode(&b, &h, &rep);
        s_send_reply(srv, push, &j->ident, &b, frames, nframes);
        djn_buf_release(&b);
    }
    djn_free(frames, out.nfetched * sizeof(zmq_msg_t));
    djn_frag_out_release(&out);
}

/* Runs a GRAPH, GRAPH_CACHED or FETCH job and sends its reply, under its session's lock
 * from the run's start until the reply has left (`locked`: the caller took it). */
static void s_run_graph_env(s_worker_t *w, const djn_frag_env_t *envp, s_out_t *push, s_job_t *j,
                            bool locked) {
    if (!locked)
        djn_session_lock(j->sess);
    s_run_and_reply(w, envp, push, j);
    djn_session_unlock(j->sess);
}

/* The models a tenant may load: its certificate's `models`; every model on a server
 * without keys. */
static const char *s_model_acl(djn_server_t *srv, const djn_peer_t *peer) {
    const djn_tenant_t *t = srv->auth ? djn_auth_by_name(srv->auth, peer->tenant) : NULL;
    return srv->auth ? (t ? t->models : "") : "*";
}

/* LOAD_MODEL: the model store answers, for the tenant's access list. */
static void s_run_load(s_worker_t *w, s_out_t *push, s_job_t *j) {
    djn_server_t *srv = w->srv;
    const djn_peer_t *peer = djn_session_peer(j->sess);
    const char *acl = s_model_acl(srv, peer);
    djn_arena_t *a = djn_arena_new();
    djn_load_rep_t rep;
    char err[4096] = "out of host memory";
    djn_status_t st = a ? djn_models_load(srv->models, w->exec, w->index, j->sess, &j->msg->u.load,
                                          acl, peer->tenant, a, &rep, err, sizeof err)
                        : DJN_ERR_NOMEM;
    atomic_fetch_add(&w->jobs, 1);
    if (st != DJN_OK) {
        s_send_error(srv, push, &j->ident, j->msg->sid, j->msg->seq, st, err, -1, NULL);
    } else {
        djn_buf_t b = {0};
        djn_msg_hdr_t h = {DJN_MSG_REPLY, j->msg->sid, j->msg->seq};
        djn_load_rep_encode(&b, &h, &rep);
        s_send_reply(srv, push, &j->ident, &b, NULL, 0);
        djn_buf_release(&b);
    }
    djn_arena_destroy(&a);
}

/* Preemption (djn_frag.h urgent_fn / yield_fn): while the worker runs `running`, a
 * queued GRAPH of a better class from another session, whose session lock is free right
 * now, runs nested; one per node boundary, so the paused fragment still advances a node
 * between two nested runs (it never starves either). Nested runs never yield again. */
typedef struct {
    s_worker_t *w;
    s_out_t *push;
    s_job_t *running; /* its nested_ns grows by each nested run */
} s_yield_t;

/* The device time the running job has taken so far, nested runs excluded: CPU time on
 * a CPU device, wall time on a GPU (what the batch share counts, djn_sched.c). */
static uint64_t s_progress(const s_worker_t *w, const s_job_t *j) {
    uint64_t t = w->cpu ? s_cpu_ns() - j->cpu0_ns : s_now_ns() - j->start_ns,
             nested = w->cpu ? j->nested_cpu_ns : j->nested_ns;
    return t > nested ? t - nested : 0;
}

static bool s_urgent_fn(void *ctx) {
    s_yield_t *y = ctx;
    uint64_t need;
    if (!djn_sched_urgent(y->w->srv->sched, y->w->index, y->running->item.cls, &need))
        return false;
    return !need || s_progress(y->w, y->running) >= need; /* interactive over its share */
}

static bool s_nest_ok_fn(djn_sched_item_t *it, void *ctx) {
    (void)ctx;
    s_job_t *j = (s_job_t *)it;
    return j->msg->type != DJN_MSG_HAVE && djn_session_trylock(j->sess);
}

static void s_yield_fn(void *ctx) {
    s_yield_t *y = ctx;
    s_worker_t *w = y->w;
    djn_sched_item_t *it =
        djn_sched_pop_urgent(w->srv->sched, w->index, y->running->item.cls, y->running->item.owner,
                             s_progress(w, y->running), s_nest_ok_fn, NULL);
    if (!it)
        return;
    s_job_t *j = (s_job_t *)it;
    if (djn_session_expired(j->sess)) {
        djn_session_unlock(j->sess);
        s_refuse_expired(w->srv, y->push, j);
        s_job_free(w->srv, j);
        return;
    }
    uint64_t t0 = s_now_ns(), c0 = s_cpu_ns();
    djn_frag_env_t env = s_env(w);
    env.nested = true;
    j->start_ns = t0;
    j->cpu0_ns = c0;
    s_run_graph_env(w, &env, y->push, j, true);
    y->running->nested_ns += s_now_ns() - t0;
    y->running->nested_cpu_ns += s_cpu_ns() - c0;
    s_job_free(w->srv, j);
}

/* A worker's or lane's thread: named "djn-worker-<i>" / "djn-lane-<i>" in top, gdb and
 * /proc/<pid>/task/<tid>/comm, crash-reporting, allocating from its device's VMU; where
 * its replies leave (the device's PUSH socket). */
static void s_thread_name(s_worker_t *w, pthread_t th) {
    char name[16];
    snprintf(name, sizeof name, "djn-%s-%u", w->lane ? "lane" : "worker", (unsigned)w->index);
    pthread_setname_np(th, name);
}

static s_out_t *s_thread_begin(s_worker_t *w) {
    s_thread_name(w, pthread_self());
    djn_crash_thread();
    djn_exec_use_vmu(w->exec, w->vmu);
    return &w->counts->push;
}

/* The device's PUSH socket, made (and connected) before its threads start. */
static bool s_push_open(djn_server_t *srv, s_worker_t *w) {
    int hwm = 0, linger = 0;
    if (pthread_mutex_init(&w->push_mu, NULL) != 0)
        return false;
    w->push_mu_init = true;
    w->push = (s_out_t){zmq_socket(srv->ctx, ZMQ_PUSH), &w->push_mu};
    if (!w->push.sock)
        return false;
    zmq_setsockopt(w->push.sock, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(w->push.sock, ZMQ_LINGER, &linger, sizeof linger);
    return zmq_connect(w->push.sock, S_REPLY_EP) == 0;
}

/* What a lane takes: a fragment (not HAVE or LOAD_MODEL, which need the worker's
 * executor), its session locked now (a lane never waits for a lock). */
static bool s_lane_ok_fn(djn_sched_item_t *it, void *ctx) {
    (void)ctx;
    s_job_t *j = (s_job_t *)it;
    return j->msg->type != DJN_MSG_HAVE && j->msg->type != DJN_MSG_LOAD_MODEL &&
           djn_session_trylock(j->sess);
}

static void *s_lane_main(void *arg) {
    s_worker_t *w = arg;
    s_out_t *push = s_thread_begin(w);
    djn_sched_item_t *it;
    while ((it = djn_sched_pop_lane(w->srv->sched, w->index, s_lane_ok_fn, NULL)) != NULL) {
        s_job_t *j = (s_job_t *)it;
        j->start_ns = s_now_ns();
        j->cpu0_ns = s_cpu_ns();
        if (djn_session_expired(j->sess)) {
            djn_session_unlock(j->sess);
            s_refuse_expired(w->srv, push, j);
        } else {
            djn_frag_env_t env = s_env(w);
            env.nested = true; /* the slab is the worker's */
            s_run_graph_env(w, &env, push, j, true);
        }
        s_job_free(w->srv, j);
        djn_sched_lane_done(w->srv->sched, w->index);
    }
    return NULL;
}

static void *s_worker_main(void *arg) {
    s_worker_t *w = arg;
    s_out_t *push = s_thread_begin(w);
    djn_sched_item_t *it;
    while ((it = djn_sched_pop(w->srv->sched, w->index)) != NULL) {
        s_job_t *j = (s_job_t *)it;
        s_yield_t y = {w, push, j};
        j->start_ns = s_now_ns();
        j->cpu0_ns = s_cpu_ns();
        if (djn_session_expired(j->sess)) { /* expired after it was popped */
            s_refuse_expired(w->srv, push, j);
        } else if (j->msg->type == DJN_MSG_HAVE) {
            s_run_have(w, push, j);
        } else if (j->msg->type == DJN_MSG_LOAD_MODEL) {
            s_run_load(w, push, j);
        } else {
            djn_frag_env_t env = s_env(w);
            if (j->item.cls > DJN_SCHED_REALTIME) {
                env.urgent_fn = s_urgent_fn;
                env.yield_fn = s_yield_fn;
                env.yield_ctx = &y;
            }
            s_run_graph_env(w, &env, push, j, false);
        }
        s_job_free(w->srv, j);
        djn_sched_done(w->srv->sched, w->index);
    }
    return NULL;
}

/* ------------------------------------------------------------------ transport */

/* ERROR replies by kind: the statuses an operator tells apart (PROTOCOL.md section 6). */
static void s_error_kinds(djn_server_t *srv, djn_stats_server_t *sv) {
    uint64_t n[DJN_ERR_DENIED + 1];
    for (int i = 0; i <= DJN_ERR_DENIED; i++)
        n[i] = atomic_load(&srv->errors_by[i]);
    sv->errors_proto = n[DJN_ERR_PROTO] + n[DJN_ERR_VERSION];
    sv->errors_limit = n[DJN_ERR_LIMIT];
    sv->errors_session = n[DJN_ERR_SESSION];
    sv->errors_handle = n[DJN_ERR_HANDLE];
    sv->errors_op = n[DJN_ERR_OP];
    sv->errors_args = n[DJN_ERR_ARGS];
    sv->errors_device = n[DJN_ERR_DEVICE];
    sv->errors_memory = n[DJN_ERR_OOM] + n[DJN_ERR_NOMEM];
    sv->errors_quota = n[DJN_ERR_QUOTA];
    sv->errors_evicted = n[DJN_ERR_EVICTED];
    sv->errors_denied = n[DJN_ERR_DENIED];
    sv->errors_other = n[DJN_ERR_TIMEOUT] + n[DJN_ERR_IO] + n[DJN_ERR_CLOSED] + n[DJN_ERR_INTERNAL];
}

/* The scheduler's per-class latency figures of one device (operators only). */
static void s_qos_stats(djn_server_t *srv, uint32_t dev, djn_stats_device_t *d) {
    djn_sched_lat_t l[DJN_SCHED_NCLASS];
    for (uint8_t c = 0; c < DJN_SCHED_NCLASS; c++)
        djn_sched_latency(srv->sched, dev, c, &l[c]);
#define S_QOS_ROWS(p, c)                                                                           \
    d->p##_fragments = l[c].count;                                                                 \
    d->p##_wait_p50_us = l[c].wait_p50_us;                                                         \
    d->p##_wait_p99_us = l[c].wait_p99_us;                                                         \
    d->p##_run_p50_us = l[c].run_p50_us;                                                           \
    d->p##_run_p99_us = l[c].run_p99_us;
    S_QOS_ROWS(rt, DJN_SCHED_REALTIME)
    S_QOS_ROWS(ia, DJN_SCHED_INTERACTIVE)
    S_QOS_ROWS(bt, DJN_SCHED_BATCH)
#undef S_QOS_ROWS
    d->preemptions = djn_sched_preemptions(srv->sched, dev);
    d->lane_runs = djn_sched_lane_runs(srv->sched, dev);
    d->queued = djn_sched_depth(srv->sched, dev);
}

/* Whether `name` is one of the comma-separated names of `list`. */
static bool s_listed(const char *list, const char *name) {
    size_t n = strlen(name);
    for (const char *p = list; p && *p;) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == n && n && !strncmp(p, name, n))
            return true;
        p = e ? e + 1 : NULL;
    }
    return false;
}

/* Who sent a message: the tenant ZAP admitted for its connection (ZeroMQ's User-Id
 * property, present on every frame of an authenticated connection) and the connection's
 * routing id. Without keys there is one tenant, the owner, with every right. */
static void s_peer(djn_server_t *srv, zmq_msg_t *ident, zmq_msg_t *hdr, djn_peer_t *p) {
    memset(p, 0, sizeof(*p));
    size_t n = zmq_msg_size(ident);
    if (n > sizeof p->rid)
        n = sizeof p->rid;
    memcpy(p->rid, zmq_msg_data(ident), n);
    p->rid_len = (uint8_t)n;
    p->fd = zmq_msg_get(hdr, ZMQ_SRCFD); /* -1 where the transport has none (inproc) */
    if (!srv->auth) {
        p->is_operator = p->realtime = true;
        return;
    }
    const char *uid = zmq_msg_gets(hdr, "User-Id");
    const djn_tenant_t *t = uid ? djn_auth_by_name(srv->auth, uid) : NULL;
    if (t) {
        snprintf(p->tenant, sizeof p->tenant, "%s", t->name);
        p->is_operator = t->is_operator;
        p->realtime = t->realtime || s_listed(srv->cfg.realtime_tenants, t->name);
    }
}

/* ZAP (ZeroMQ RFC 27): libzmq asks, for each connection's CURVE handshake, whether the
 * client's public key may connect; the reply's user id becomes the connection's User-Id.
 * Request: version, request id, domain, address, identity, mechanism, credentials. */
static void s_handle_zap(djn_server_t *srv) {
    zmq_msg_t f[8];
    int n = 0, more = 1;
    while (more) {
        zmq_msg_t part;
        zmq_msg_init(&part);
        if (zmq_msg_recv(&part, srv->zap, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&part);
            break;
        }
        more = zmq_msg_more(&part);
        if (n < 8) {
            zmq_msg_init(&f[n]);
            zmq_msg_move(&f[n++], &part);
        }
        zmq_msg_close(&part);
    }
    if (n < 2) { /* not a ZAP request: nothing to answer */
        for (int i = 0; i < n; i++)
            zmq_msg_close(&f[i]);
        return;
    }
    const djn_tenant_t *t = NULL;
    if (n >= 7 && zmq_msg_size(&f[5]) == 5 && !memcmp(zmq_msg_data(&f[5]), "CURVE", 5) &&
        zmq_msg_size(&f[6]) == DJN_KEY_BYTES)
        t = djn_auth_find(srv->auth, zmq_msg_data(&f[6]));
    const char *code = t ? "200" : "400", *text = t ? "OK" : "unknown key";
    if (!t)
        djn_log(DJN_LOG_DEBUG, "refused a connection with an unknown key");
    zmq_send(srv->zap, "1.0", 3, ZMQ_SNDMORE);
    zmq_send(srv->zap, zmq_msg_data(&f[1]), zmq_msg_size(&f[1]), ZMQ_SNDMORE);
    zmq_send(srv->zap, code, 3, ZMQ_SNDMORE);
    zmq_send(srv->zap, text, strlen(text), ZMQ_SNDMORE);
    zmq_send(srv->zap, t ? t->name : "", t ? strlen(t->name) : 0, ZMQ_SNDMORE);
    zmq_send(srv->zap, "", 0, 0);
    for (int i = 0; i < n; i++)
        zmq_msg_close(&f[i]);
}

static void s_reply_hello(djn_server_t *srv, zmq_msg_t *ident, const djn_msg_t *m,
                          const djn_peer_t *peer) {
    if (m->u.hello.version != DJN_PROTO_VERSION) {
        char e[160];
        snprintf(e, sizeof e, "protocol version %u is not supported: this server speaks version %d",
                 m->u.hello.version, DJN_PROTO_VERSION);
        s_send_error(srv, &srv->rout, ident, 0, m->seq, DJN_ERR_VERSION, e, -1, NULL);
        return;
    }
    if (srv->draining || s_drain_flag) {
        s_send_error(srv, &srv->rout, ident, 0, m->seq, DJN_ERR_CLOSED,
                     "the server is draining (it is shutting down) and opens no new sessions: "
                     "use another server, or this one once it has restarted",
                     -1, NULL);
        return;
    }
    djn_status_t st;
    char e[256];
    djn_session_t *s = djn_sessions_open(srv->sessions, s_now_ms(), peer, &st, e, sizeof e);
    if (!s) {
        s_send_error(srv, &srv->rout, ident, 0, m->seq, st, e, -1, NULL);
        return;
    }
    uint64_t sid = djn_session_id(s);
    djn_session_release(&s);
    djn_log(DJN_LOG_DEBUG, "session opened", DJN_KV_HEX("session", sid),
            DJN_KV_STR("client", m->u.hello.client), DJN_KV_STR("tenant", peer->tenant));
    const char *names[DJN_SERVER_MAX_DEVICES];
    for (int i = 0; i < srv->nworkers; i++)
        names[i] = djn_exec_device(srv->workers[i].exec);
    djn_hello_rep_t rep = {sid,
                           DJN_PROTO_VERSION,
                           "djinn-server 0.2",
                           srv->cfg.lease_ms,
                           srv->cfg.heartbeat_ms,
                           (uint32_t)srv->nworkers,
                           names};
    djn_buf_t b = {0};
    djn_msg_hdr_t h = {DJN_MSG_REPLY, sid, m->seq};
    djn_hello_rep_encode(&b, &h, &rep);
    s_send_reply(srv, &srv->rout, ident, &b, NULL, 0);
    djn_buf_release(&b);
}

/* PLACE (PROTOCOL.md 5.6), on the transport thread (it never waits for a worker or a
 * model load): the figures of each device for djn_place_choose. The content counted is
 * the hashes' Text content this tenant uploaded before (the rule HAVE answers by, so
 * placement is no oracle for other tenants' content) and the named model if its access
 * list allows it. Unless the request is a probe, the session then counts among the
 * device's sessions, so that sessions opened together spread before any sent work. */
static void s_reply_place(djn_server_t *srv, zmq_msg_t *ident, const djn_msg_t *m,
                          djn_session_t *sess, const djn_peer_t *peer) {
    const djn_place_req_t *r = &m->u.place;
    uint32_t n = (uint32_t)srv->nworkers, per[DJN_SERVER_MAX_DEVICES];
    djn_place_dev_t devs[DJN_SERVER_MAX_DEVICES];
    djn_sessions_per_device(srv->sessions, m->sid, n, per);
    uint32_t tenant = r->nhashes ? djn_text_tenant(srv->text, peer->tenant) : 0;
    const char *acl = s_model_acl(srv, peer);
    for (uint32_t d = 0; d < n; d++) {
        djn_place_dev_t *c = &devs[d];
        *c = (djn_place_dev_t){.sessions = per[d], .backlog = djn_sched_load(srv->sched, d)};
        for (uint32_t i = 0; i < r->nhashes; i++) {
            uint64_t plain[2] = {r->hashes[i].hi, r->hashes[i].lo};
            c->held += djn_text_held(srv->text, d, plain, r->hashes[i].nbytes, tenant);
        }
        c->held += djn_models_held(srv->models, r->model, acl, d);
        if (srv->workers[d].vmu) {
            djn_vmu_stats_t vs;
            djn_vmu_stats(srv->workers[d].vmu, &vs);
            c->used = vs.data.used;
        }
    }
    uint32_t dev = djn_place_choose(devs, n);
    if (!r->probe)
        djn_session_use_device(sess, dev);
    djn_place_rep_t rep = {.device = dev, .held = devs[dev].held, .has_load = peer->is_operator};
    if (rep.has_load) { /* the load describes other tenants' work: operators only */
        rep.sessions = devs[dev].sessions;
        rep.backlog = devs[dev].backlog;
        rep.used = devs[dev].used;
    }
    djn_log(DJN_LOG_DEBUG, "placed", DJN_KV_HEX("session", m->sid), DJN_KV_U64("device", dev),
            DJN_KV_U64("held", rep.held));
    djn_buf_t b = {0};
    djn_msg_hdr_t h = {DJN_MSG_REPLY, m->sid, m->seq};
    djn_place_rep_encode(&b, &h, &rep);
    s_send_reply(srv, &srv->rout, ident, &b, NULL, 0);
    djn_buf_release(&b);
}

static void s_reply_stats(djn_server_t *srv, zmq_msg_t *ident, const djn_msg_t *m,
                          const djn_peer_t *peer) {
    djn_stats_rep_t *r = djn_calloc(1, sizeof(*r));
    if (!r) {
        s_send_simple(srv, ident, m, DJN_ERR_NOMEM, "out of host memory");
        return;
    }
    djn_session_t *me = m->sid ? djn_sessions_get(srv->sessions, m->sid, s_now_ms(), peer) : NULL;
    if (me) { /* read without the session lock: a running fragment must not stall the transport */
        r->session.session_bytes = djn_session_bytes(me);
        r->session.session_plan_bytes = djn_session_cache_bytes(me);
        r->session.session_peak_bytes = djn_session_peak(me);
        r->session.session_plan_entries = djn_tlb_session_entries(srv->tlb, m->sid);
        djn_session_release(&me);
    }
    r->session.session_quota_bytes = srv->cfg.session_quota_bytes;
    /* what describes other tenants (their sessions, memory, traffic) is for operators */
    r->has_server = peer->is_operator;
    djn_stats_server_t *sv = &r->server;
    djn_sessions_stats_t ss;
    djn_sessions_stats(srv->sessions, &ss);
    djn_text_stats_t ts;
    djn_text_stats(srv->text, &ts);
    djn_tlb_stats_t tl;
    djn_tlb_stats(srv->tlb, &tl);
    uint64_t nh = atomic_load(&srv->sched_n_hit), nm = atomic_load(&srv->sched_n_miss);
    sv->uptime_ms = (uint64_t)(s_now_ms() - srv->started_ms);
    sv->lease_ms = srv->cfg.lease_ms;
    sv->sessions_open = ss.open;
    sv->sessions_opened = ss.opened_total;
    sv->sessions_closed = ss.closed_total;
    sv->sessions_expired = ss.expired_total;
    sv->sessions_refused = ss.refused_total;
    sv->handles = ss.handles;
    sv->bytes_in_use = ss.bytes;
    sv->requests = atomic_load(&srv->requests);
    sv->errors = atomic_load(&srv->errors);
    s_error_kinds(srv, sv);
    sv->bytes_received = atomic_load(&srv->bytes_in);
    sv->bytes_sent = atomic_load(&srv->bytes_out);
    sv->text_entries = ts.entries;
    sv->text_bytes = ts.bytes;
    sv->text_refs = ts.refs;
    sv->text_hits = ts.hits;
    sv->plan_cache_entries = tl.entries;
    sv->plan_cache_capacity = tl.capacity;
    sv->plan_cache_hits = tl.hits;
    sv->plan_cache_misses = tl.misses;
    sv->plan_cache_evictions = tl.evictions;
    sv->plan_cache_bytes = tl.bytes;
    sv->sched_us_hit_avg = nh ? atomic_load(&srv->sched_ns_hit) / nh / 1000 : 0;
    sv->sched_us_miss_avg = nm ? atomic_load(&srv->sched_ns_miss) / nm / 1000 : 0;
    sv->session_max_queued = srv->cfg.session_max_queued;
    sv->inline_runs = atomic_load(&srv->inline_runs);
    r->ndevices = (uint32_t)srv->nworkers;
    for (int i = 0; i < srv->nworkers; i++) {
        s_worker_t *w = &srv->workers[i];
        djn_stats_device_t *d = &r->devices[i];
        snprintf(d->name, sizeof d->name, "%s", djn_exec_device(w->exec));
        djn_vmu_stats_t vs;
        if (w->vmu)
            djn_vmu_stats(w->vmu, &vs);
        if (w->vmu) { /* capacities describe the device, not its tenants */
            d->data_capacity = vs.data.capacity;
            d->slab_capacity = vs.slab.capacity;
        }
        if (!peer->is_operator || !w->vmu) {
            if (peer->is_operator) {
                d->nodes = atomic_load(&w->nodes);
                d->fragments = atomic_load(&w->jobs);
                d->errors = atomic_load(&w->errors);
                s_qos_stats(srv, (uint32_t)i, d);
            }
            continue;
        }
        s_qos_stats(srv, (uint32_t)i, d);
        d->nodes = atomic_load(&w->nodes);
        d->fragments = atomic_load(&w->jobs);
        d->errors = atomic_load(&w->errors);
        d->data_used = vs.data.used;
        d->data_peak = vs.data.peak;
        d->data_free_blocks = vs.data.free_blocks;
        d->data_largest_free = vs.data.largest_free;
        d->data_fragmentation = vs.data.fragmentation;
        d->slab_high_water = vs.slab.high_water;
        d->slab_in_use = vs.slab.top;
        d->slab_resets = vs.slab.resets;
        d->slab_resets_deferred = vs.slab_resets_deferred;
        d->planned_fragments = vs.planned_fragments;
        d->plan_peak_last = vs.plan_peak_last;
        d->plan_lower_bound_last = vs.plan_lower_bound_last;
        d->plan_bump_last = vs.plan_bump_last;
        d->plan_high_water_last = vs.plan_high_water_last;
        d->plan_peak_sum = vs.plan_peak_sum;
        d->plan_lower_bound_sum = vs.plan_lower_bound_sum;
        d->plan_bump_sum = vs.plan_bump_sum;
        d->plan_high_water_sum = vs.plan_high_water_sum;
        d->plan_reserved_sum = vs.plan_reserved_sum;
        d->planned_runs = vs.planned_runs;
        d->copied_out_bytes = vs.copied_out_bytes;
        d->scrub_bytes = vs.scrub_bytes;
        d->scrub_ns = vs.scrub_ns;
    }
    djn_buf_t b = {0};
    djn_msg_hdr_t h = {DJN_MSG_REPLY, m->sid, m->seq};
    djn_stats_rep_encode(&b, &h, r);
    s_send_reply(srv, &srv->rout, ident, &b, NULL, 0);
    djn_buf_release(&b);
    djn_free(r, sizeof(*r));
}

static void s_reply_empty(djn_server_t *srv, zmq_msg_t *ident, const djn_msg_t *m) {
    djn_buf_t b = {0};
    djn_msg_hdr_t h = {DJN_MSG_REPLY, m->sid, m->seq};
    djn_empty_encode(&b, &h);
    s_send_reply(srv, &srv->rout, ident, &b, NULL, 0);
    djn_buf_release(&b);
}

/* A message after its header: its frames. false when it must be refused (the reply is
 * sent); the frames are the caller's either way. */
typedef struct {
    zmq_msg_t hdr;
    bool have_hdr, too_many, alloc_failed;
    zmq_msg_t *frames;
    uint32_t nframes, cap, total;
    uint64_t bytes;
} s_rx_t;

static void s_recv_rest(djn_server_t *srv, zmq_msg_t *ident, s_rx_t *rx) {
    int more = zmq_msg_more(ident);
    while (more) {
        zmq_msg_t part;
        zmq_msg_init(&part);
        if (zmq_msg_recv(&part, srv->router, 0) < 0) {
            zmq_msg_close(&part);
            break;
        }
        more = zmq_msg_more(&part);
        rx->bytes += zmq_msg_size(&part);
        if (!rx->have_hdr) {
            zmq_msg_move(&rx->hdr, &part);
            rx->have_hdr = true;
            zmq_msg_close(&part);
            continue;
        }
        if (++rx->total > DJN_MAX_FRAMES || rx->alloc_failed) { /* drain, answer once */
            rx->too_many |= rx->total > DJN_MAX_FRAMES;
            zmq_msg_close(&part);
            continue;
        }
        if (rx->nframes == rx->cap) {
            uint32_t ncap = rx->cap ? rx->cap * 2 : 8;
            zmq_msg_t *nf =
                djn_realloc(rx->frames, rx->cap * sizeof(zmq_msg_t), ncap * sizeof(zmq_msg_t));
            if (!nf) {
                rx->alloc_failed = true;
                zmq_msg_close(&part);
                continue;
            }
            rx->frames = nf;
            rx->cap = ncap;
        }
        zmq_msg_init(&rx->frames[rx->nframes]);
        zmq_msg_move(&rx->frames[rx->nframes++], &part);
        zmq_msg_close(&part);
    }
}

#define S_INLINE_RUN_NS 100000ull    /* cached fragments that ran faster than this ... */
#define S_INLINE_BYTES (64ull << 10) /* ... moving at most this many bytes */

/* Operators whose cost is fixed by the shapes in the cached nodes, whatever the values
 * bound to them: pointwise arithmetic, views, copies, reductions, products. The time of
 * the last run predicts the next only for these: a degree, a count or an iteration
 * limit held in a tensor (orthogonal polynomials, repeat_interleave, linalg's iterative
 * solvers) could make the same nodes run for hours on the transport thread. */
static const char *const s_shape_cost_ops[] = {"_local_scalar_dense",
                                               "_scaled_dot_product_flash_attention_for_cpu",
                                               "_log_softmax",
                                               "_softmax",
                                               "_to_copy",
                                               "_unsafe_view",
                                               "abs",
                                               "add",
                                               "add_",
                                               "addmm",
                                               "alias",
                                               "amax",
                                               "amin",
                                               "argmax",
                                               "as_strided",
                                               "bmm",
                                               "cat",
                                               "clone",
                                               "contiguous",
                                               "copy_",
                                               "cos",
                                               "detach",
                                               "div",
                                               "div_",
                                               "embedding",
                                               "eq",
                                               "exp",
                                               "expand",
                                               "fill_",
                                               "ge",
                                               "gelu",
                                               "gt",
                                               "index_select",
                                               "le",
                                               "linear",
                                               "log",
                                               "lt",
                                               "masked_fill",
                                               "matmul",
                                               "max",
                                               "mean",
                                               "min",
                                               "mm",
                                               "mul",
                                               "mul_",
                                               "ne",
                                               "neg",
                                               "permute",
                                               "pow",
                                               "reciprocal",
                                               "relu",
                                               "reshape",
                                               "rsqrt",
                                               "select",
                                               "sigmoid",
                                               "silu",
                                               "sin",
                                               "slice",
                                               "sqrt",
                                               "squeeze",
                                               "stack",
                                               "sub",
                                               "sub_",
                                               "sum",
                                               "t",
                                               "tanh",
                                               "transpose",
                                               "unsqueeze",
                                               "view",
                                               "where",
                                               "zero_"};

static bool s_shape_cost(const djn_graph_req_t *g) {
    for (uint32_t i = 0; i < g->nnodes; i++) {
        const char *op = g->nodes[i].op;
        if (strncmp(op, "aten::", 6) != 0)
            return false;
        bool found = false;
        for (size_t k = 0; !found && k < sizeof s_shape_cost_ops / sizeof *s_shape_cost_ops; k++)
            found = strcmp(op + 6, s_shape_cost_ops[k]) == 0;
        if (!found)
            return false;
    }
    return true;
}

static void s_forward_ready(djn_server_t *srv);

/* Whether the transport may run a job itself: a plan-cache hit whose nodes ran in under
 * S_INLINE_RUN_NS last time, all of operators whose cost the shapes fix (above), with
 * small uploads and fetches, on an idle device (nothing queued or running: the order is
 * kept), whose session's lock is free. A fragment whose cost may depend on its data (a
 * DYNAMIC node: repeat_interleave, nonzero) or that draws random numbers (it would wait
 * for the generator's lock) never runs inline. On true the device is claimed and the
 * session locked. */
static bool s_inline_ok(djn_server_t *srv, s_job_t *j, uint32_t device) {
    if (!j->plan || !srv->cfg.inline_small)
        return false;
    uint64_t bytes = 0;
    if (!s_shape_cost(djn_tlb_graph(j->plan)) ||
        !djn_tlb_inline_ok(j->plan, j->nodes, S_INLINE_RUN_NS))
        return false;
    const djn_graph_req_t *g = &j->msg->u.graph;
    for (uint32_t i = 0; i < j->nframes; i++)
        bytes += zmq_msg_size(&j->frames[i]);
    for (uint32_t i = 0; i < g->nfetches; i++)
        bytes += g->fetches[i].nbytes;
    if (bytes > S_INLINE_BYTES || !djn_sched_try_claim(srv->sched, device))
        return false;
    if (djn_session_trylock(j->sess))
        return true;
    djn_sched_release(srv->sched, device);
    return false;
}

/* The scheduling class of a job (PROTOCOL.md 7.6): what the client asked for, else from
 * the fragment's semantics: decode steps interactive; prefill, training and bulk
 * transfers (S_BULK_BYTES uploaded or fetched) batch; other fragments interactive. A HAVE
 * is interactive: it only binds content, and it precedes the session's next fragment. */
#define S_BULK_BYTES (4ull << 20)
static uint8_t s_class_of(const s_job_t *j) {
    if (j->msg->type == DJN_MSG_HAVE)
        return DJN_SCHED_INTERACTIVE;
    const djn_graph_req_t *g = &j->msg->u.graph;
    if (g->qos != DJN_QOS_AUTO)
        return (uint8_t)(g->qos - DJN_QOS_REALTIME);
    if (g->phase == DJN_PHASE_DECODE)
        return DJN_SCHED_INTERACTIVE;
    if (g->phase == DJN_PHASE_PREFILL || g->phase == DJN_PHASE_TRAINING)
        return DJN_SCHED_BATCH;
    uint64_t bytes = 0;
    for (uint32_t i = 0; i < j->nframes; i++)
        bytes += zmq_msg_size(&j->frames[i]);
    for (uint32_t i = 0; i < g->nfetches && bytes < S_BULK_BYTES; i++)
        bytes += g->fetches[i].nbytes > S_BULK_BYTES ? S_BULK_BYTES : g->fetches[i].nbytes;
    return bytes >= S_BULK_BYTES ? DJN_SCHED_BATCH : DJN_SCHED_INTERACTIVE;
}

/* A fragment (or HAVE) for a worker: checks that need no session lock, then the queue. */
static void s_enqueue_job(djn_server_t *srv, zmq_msg_t *ident, djn_msg_t **m_p,
                          djn_session_t **sess_p, s_rx_t *rx, uint64_t t0) {
    djn_msg_t *m = *m_p;
    char err[512];
    uint32_t device = m->type == DJN_MSG_HAVE         ? m->u.have.device
                      : m->type == DJN_MSG_LOAD_MODEL ? m->u.load.device
                                                      : m->u.graph.device;
    djn_tlb_entry_t *plan = NULL;
    const djn_node_t *nodes = NULL;
    bool frag = m->type == DJN_MSG_GRAPH || m->type == DJN_MSG_GRAPH_CACHED;
    uint64_t evicted = djn_session_evicted(*sess_p);
    if (frag && m->u.graph.resume) {
        djn_session_set_evicted(*sess_p, 0);
    } else if (frag && evicted) { /* it may use the results of the one not run */
        snprintf(err, sizeof err,
                 "skipped: fragment %" PRIu64 " of this session was answered E_EVICTED and "
                 "not run; later fragments wait for its resend (marked 'resume')",
                 evicted);
        s_send_simple(srv, ident, m, DJN_ERR_EVICTED, err);
        return;
    }
    if (m->type == DJN_MSG_GRAPH_CACHED) {
        plan = djn_tlb_lookup(srv->tlb, m->u.graph.fp, m->u.graph.device, m->sid);
        if (!plan) {
            snprintf(err, sizeof err,
                     "plan cache miss: fragment %016" PRIx64 "%016" PRIx64
                     " is not cached (evicted); send the full GRAPH",
                     m->u.graph.fp[0], m->u.graph.fp[1]);
            djn_session_set_evicted(*sess_p, m->seq ? m->seq : 1);
            s_send_simple(srv, ident, m, DJN_ERR_EVICTED, err);
            return;
        }
        djn_status_t st = djn_tlb_bind(m->arena, &m->u.graph, plan, &nodes, err, sizeof err);
        if (st != DJN_OK) {
            djn_tlb_release(srv->tlb, &plan);
            if (st == DJN_ERR_EVICTED)
                djn_session_set_evicted(*sess_p, m->seq ? m->seq : 1);
            s_send_simple(srv, ident, m, st, err);
            return;
        }
    }
    if (device >= (uint32_t)srv->nworkers) {
        djn_tlb_release(srv->tlb, &plan);
        snprintf(err, sizeof err, "device %u does not exist: this server has %d", device,
                 srv->nworkers);
        s_send_simple(srv, ident, m, DJN_ERR_DEVICE, err);
        return;
    }
    uint8_t qos = m->type == DJN_MSG_HAVE ? DJN_QOS_INTERACTIVE : m->u.graph.qos;
    if (qos == DJN_QOS_REALTIME && !djn_session_peer(*sess_p)->realtime) {
        djn_tlb_release(srv->tlb, &plan);
        snprintf(err, sizeof err,
                 "qos 'realtime' refused: tenant '%s' may not claim the realtime class (the "
                 "server grants it to keys made with `djinn-server keygen DIR NAME --realtime` "
                 "or named by --realtime-tenants); use 'interactive' or 'batch'",
                 djn_session_peer(*sess_p)->tenant);
        s_send_simple(srv, ident, m, DJN_ERR_DENIED, err);
        return;
    }
    uint64_t frame_bytes = 0;
    for (uint32_t i = 0; i < rx->nframes; i++)
        frame_bytes += zmq_msg_size(&rx->frames[i]);
    djn_status_t qst = djn_session_queue_enter(*sess_p, frame_bytes, err, sizeof err);
    if (qst != DJN_OK) {
        djn_tlb_release(srv->tlb, &plan);
        s_send_simple(srv, ident, m, qst, err);
        return;
    }
    s_job_t *j = djn_calloc(1, sizeof(*j));
    if (!j) {
        djn_tlb_release(srv->tlb, &plan);
        djn_session_queue_leave(*sess_p, frame_bytes, s_now_ms());
        s_send_simple(srv, ident, m, DJN_ERR_NOMEM, "out of host memory");
        return;
    }
    zmq_msg_init(&j->ident);
    zmq_msg_move(&j->ident, ident);
    j->frames = rx->frames;
    j->nframes = rx->nframes;
    j->msg = m;
    j->sess = *sess_p;
    j->plan = plan;
    j->frame_bytes = frame_bytes;
    j->nodes = nodes;
    j->sched_ns = s_now_ns() - t0;
    j->frames_cap = rx->cap;
    j->item.owner = djn_session_id(j->sess);
    j->item.cls = s_class_of(j);
    const djn_graph_req_t *g = &m->u.graph;
    bool holds = m->type == DJN_MSG_HAVE || m->type == DJN_MSG_LOAD_MODEL || g->nallocs ||
                 g->has_allocs_d || g->nuploads;
    if (holds) /* it holds memory there: it counts among the device's sessions (PLACE) */
        djn_session_use_device(j->sess, device);
    rx->frames = NULL;
    rx->nframes = rx->cap = 0;
    *m_p = NULL;
    *sess_p = NULL;
    if (s_inline_ok(srv, j, device)) {
        /* the device is idle and this is a cached fragment that ran in microseconds last
         * time: run it here and answer on the ROUTER, saving two thread hand-offs. Never
         * waits: the device is claimed and the session locked only if free at once. */
        s_worker_t *w = &srv->workers[device];
        s_forward_ready(srv); /* the device's last replies leave first: a session's order */
        djn_exec_enter(w->exec);
        djn_frag_env_t env = s_env(w);
        s_run_graph_env(w, &env, &srv->rout, j, true);
        djn_exec_leave(w->exec);
        djn_sched_release(srv->sched, device);
        atomic_fetch_add(&srv->inline_runs, 1);
        s_job_free(srv, j);
        return;
    }
    djn_sched_push(srv->sched, device, &j->item);
}

/* The ROUTER's socket monitor: a connection that closed (its process died, or ZMTP
 * heartbeats timed out) no longer holds the lease of its sessions' queued work
 * (djn_session.c, "Leases"). An event is [u16 event, u32 value (the fd)][endpoint]. */
static void s_handle_monitor(djn_server_t *srv) {
    if (!srv->mon)
        return;
    for (;;) {
        zmq_msg_t ev, ep;
        zmq_msg_init(&ev);
        if (zmq_msg_recv(&ev, srv->mon, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&ev);
            return;
        }
        bool more = zmq_msg_more(&ev);
        uint16_t event = 0;
        uint32_t value = 0;
        if (zmq_msg_size(&ev) >= 6) {
            memcpy(&event, zmq_msg_data(&ev), 2);
            memcpy(&value, (const uint8_t *)zmq_msg_data(&ev) + 2, 4);
        }
        zmq_msg_close(&ev);
        while (more) { /* the endpoint frame */
            zmq_msg_init(&ep);
            if (zmq_msg_recv(&ep, srv->mon, 0) < 0) {
                zmq_msg_close(&ep);
                break;
            }
            more = zmq_msg_more(&ep);
            zmq_msg_close(&ep);
        }
        if (event == ZMQ_EVENT_DISCONNECTED) {
            uint32_t n = djn_sessions_conn_lost(srv->sessions, (int)value);
            if (n)
                djn_log(DJN_LOG_DEBUG, "connection closed", DJN_KV_U64("sessions", n));
        }
    }
}

/* The queued messages of sessions whose lease ran out: answered and dropped, unrun (a
 * fragment of theirs that is running stops at its next node, djn_frag.c). */
static void s_drop_expired(djn_server_t *srv, const uint64_t *gone, uint32_t n) {
    for (uint32_t i = 0; i < n; i++)
        for (int d = 0; d < srv->nworkers; d++) {
            djn_sched_item_t *it = djn_sched_remove_owner(srv->sched, (uint32_t)d, gone[i]);
            while (it) {
                s_job_t *j = (s_job_t *)it;
                it = it->next;
                s_refuse_expired(srv, &srv->rout, j);
                s_job_free(srv, j);
            }
        }
}

/* Receive one multipart message from the ROUTER and answer or queue it. */
static void s_handle_client(djn_server_t *srv) {
    zmq_msg_t ident;
    zmq_msg_init(&ident);
    if (zmq_msg_recv(&ident, srv->router, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&ident);
        return;
    }
    atomic_fetch_add(&srv->requests, 1);
    s_rx_t rx = {0};
    zmq_msg_init(&rx.hdr);
    s_recv_rest(srv, &ident, &rx);
    atomic_fetch_add(&srv->bytes_in, rx.bytes);
    /* a connection that closed before this one opened on the same fd is forgotten first:
     * its event was queued before this message could arrive */
    s_handle_monitor(srv);
    uint64_t t0 = s_now_ns();
    djn_msg_t *m = NULL;
    char err[512] = {0};
    uint64_t seq = 0;
    djn_session_t *sess = NULL;
    if (!rx.have_hdr) {
        s_send_error(srv, &srv->rout, &ident, 0, 0, DJN_ERR_PROTO, "message without a header frame",
                     -1, NULL);
        goto done;
    }
    if (rx.too_many || rx.alloc_failed) {
        if (rx.too_many)
            snprintf(err, sizeof err, "message has %u frames, the limit is %u", rx.total,
                     DJN_MAX_FRAMES);
        s_send_error(srv, &srv->rout, &ident, 0, 0, rx.too_many ? DJN_ERR_LIMIT : DJN_ERR_NOMEM,
                     rx.too_many ? err : "out of host memory receiving frames", -1, NULL);
        goto done;
    }
    for (uint32_t i = 0; i < rx.nframes; i++)
        if (zmq_msg_size(&rx.frames[i]) > srv->cfg.max_tensor_bytes) {
            snprintf(err, sizeof err, "frame %u of %zu bytes exceeds the limit of %" PRIu64, i + 1,
                     zmq_msg_size(&rx.frames[i]), srv->cfg.max_tensor_bytes);
            s_send_error(srv, &srv->rout, &ident, 0, 0, DJN_ERR_LIMIT, err, -1, NULL);
            goto done;
        }
    djn_status_t st = djn_msg_decode(zmq_msg_data(&rx.hdr), zmq_msg_size(&rx.hdr), rx.nframes, &m,
                                     &seq, err, sizeof err);
    if (st != DJN_OK) {
        s_send_error(srv, &srv->rout, &ident, 0, seq, st, err[0] ? err : djn_status_str(st), -1,
                     NULL);
        goto done;
    }
    djn_peer_t peer;
    s_peer(srv, &ident, &rx.hdr, &peer);
    switch (m->type) {
    case DJN_MSG_HELLO:
        s_reply_hello(srv, &ident, m, &peer);
        goto done;
    case DJN_MSG_STATS:
        s_reply_stats(srv, &ident, m, &peer);
        goto done;
    default:
        break;
    }
    sess = djn_sessions_get(srv->sessions, m->sid, s_now_ms(), &peer);
    if (!sess) {
        snprintf(err, sizeof err,
                 "unknown session 0x%" PRIx64 ": the server restarted or the lease expired",
                 m->sid);
        s_send_simple(srv, &ident, m, DJN_ERR_SESSION, err);
        goto done;
    }
    switch (m->type) {
    case DJN_MSG_HEARTBEAT:
        s_reply_empty(srv, &ident, m);
        break;
    case DJN_MSG_PLACE:
        s_reply_place(srv, &ident, m, sess, &peer);
        break;
    case DJN_MSG_CLOSE:
        djn_session_release(&sess);
        djn_sessions_close(srv->sessions, m->sid, &peer);
        djn_tlb_drop_sessions(srv->tlb, &m->sid, 1);
        djn_log(DJN_LOG_DEBUG, "session closed", DJN_KV_HEX("session", m->sid));
        s_reply_empty(srv, &ident, m);
        break;
    case DJN_MSG_GRAPH:
    case DJN_MSG_GRAPH_CACHED:
    case DJN_MSG_FETCH:
    case DJN_MSG_HAVE:
    case DJN_MSG_LOAD_MODEL:
        s_enqueue_job(srv, &ident, &m, &sess, &rx, t0);
        break;
    default:
        snprintf(err, sizeof err, "message type %u is reserved and not served by this version",
                 m->type);
        s_send_simple(srv, &ident, m, DJN_ERR_PROTO, err);
        break;
    }
done:
    djn_session_release(&sess);
    djn_msg_free(&m);
    for (uint32_t i = 0; i < rx.nframes; i++)
        zmq_msg_close(&rx.frames[i]);
    djn_free(rx.frames, rx.cap * sizeof(zmq_msg_t));
    zmq_msg_close(&rx.hdr);
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
        if (!more) {
            srv->forwarded++;
            return;
        }
    }
}

/* Forward every reply the devices' threads have sent so far (each is in the pipe once
 * counted); nothing to do, and no system call, when all were forwarded already. */
static void s_forward_ready(djn_server_t *srv) {
    while (srv->forwarded != atomic_load(&srv->pushed)) {
        zmq_pollitem_t it = {srv->pull, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 100) <= 0) /* bounded: a failed send is counted too */
            return;
        s_forward_reply(srv);
    }
}

/* ------------------------------------------------------------------ life cycle */

djn_server_t *djn_server_new(const djn_server_cfg_t *cfg, char *err, size_t errlen) {
    djn_server_t *srv = djn_calloc(1, sizeof(*srv));
    if (!srv) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    srv->cfg = *cfg;
    srv->started_ms = s_now_ms();
    djn_crash_install();
    djn_exec_install_allocator(); /* zeroes what it hands out, with or without a VMU */
    if (cfg->threads)
        djn_exec_set_threads((int)cfg->threads); /* before any worker runs a kernel */
    srv->text = djn_text_new();
    srv->tlb = djn_tlb_new(cfg->plan_cache_entries);
    srv->sched = djn_sched_new((uint32_t)cfg->ndevices);
    djn_sessions_limits_t lim = {
        cfg->lease_ms,     cfg->session_quota_bytes,         cfg->session_max_queued,
        cfg->max_sessions, cfg->max_sessions_per_connection, cfg->session_max_handles};
    srv->sessions = srv->text ? djn_sessions_new(&lim, srv->text) : NULL;
    if (srv->sched) {
        djn_sched_set_aging(srv->sched, cfg->qos_age_passes, cfg->qos_age_ns);
        djn_sched_set_share(srv->sched, cfg->qos_batch_share, DJN_SCHED_BURST_NS);
    }
    srv->ctx = zmq_ctx_new();
    if (!srv->sessions || !srv->ctx || !srv->tlb || !srv->sched ||
        !djn_sessions_start_reaper(srv->sessions)) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (cfg->keys_dir && !(srv->auth = djn_auth_load(cfg->keys_dir, err, errlen)))
        goto fail;
    djn_text_set_cache(srv->text, cfg->text_cache_bytes);
    if (!(srv->models = djn_models_new(cfg->models_dir, srv->text, err, errlen)))
        goto fail;
    if (cfg->text_cache_dir && *cfg->text_cache_dir) {
        if (!(srv->tcache = djn_tcache_new(cfg->text_cache_dir, err, errlen)))
            goto fail;
        djn_text_store_t store = djn_tcache_store(srv->tcache);
        djn_text_set_store(srv->text, &store);
    }
    srv->router = zmq_socket(srv->ctx, ZMQ_ROUTER);
    srv->pull = zmq_socket(srv->ctx, ZMQ_PULL);
    srv->rout = (s_out_t){srv->router, NULL};
    int hwm = 0, linger = 0, mandatory = 0;
    int64_t maxmsg = (int64_t)cfg->max_tensor_bytes + (int64_t)DJN_MAX_HEADER_BYTES;
    zmq_setsockopt(srv->router, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(srv->router, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(srv->router, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(srv->router, ZMQ_ROUTER_MANDATORY, &mandatory, sizeof mandatory);
    zmq_setsockopt(srv->router, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    /* a client that reconnects (a network blip) keeps its routing id, so its session */
    int one = 1, hb_ivl = 1000, hb_timeout = 10000;
    zmq_setsockopt(srv->router, ZMQ_ROUTER_HANDOVER, &one, sizeof one);
    zmq_setsockopt(srv->router, ZMQ_HEARTBEAT_IVL, &hb_ivl, sizeof hb_ivl);
    zmq_setsockopt(srv->router, ZMQ_HEARTBEAT_TIMEOUT, &hb_timeout, sizeof hb_timeout);
    if (srv->auth) {
        srv->zap = zmq_socket(srv->ctx, ZMQ_REP);
        if (!srv->zap || zmq_bind(srv->zap, S_ZAP_EP) != 0) {
            snprintf(err, errlen, "cannot start the ZAP handler: %s", zmq_strerror(errno));
            goto fail;
        }
        zmq_setsockopt(srv->zap, ZMQ_LINGER, &linger, sizeof linger);
        zmq_setsockopt(srv->router, ZMQ_CURVE_SERVER, &one, sizeof one);
        zmq_setsockopt(srv->router, ZMQ_CURVE_SECRETKEY, djn_auth_server(srv->auth)->sec,
                       DJN_KEY_BYTES);
        zmq_setsockopt(srv->router, ZMQ_ZAP_DOMAIN, "djinn", 5);
    }
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
    /* closed connections (djn_session.c, "Leases"); without the monitor a session with
     * queued work keeps its lease until that work ran */
    srv->mon = zmq_socket(srv->ctx, ZMQ_PAIR);
    if (!srv->mon || zmq_socket_monitor(srv->router, S_MON_EP, ZMQ_EVENT_DISCONNECTED) != 0 ||
        zmq_connect(srv->mon, S_MON_EP) != 0) {
        snprintf(err, errlen, "cannot monitor the socket: %s", zmq_strerror(errno));
        goto fail;
    }
    zmq_setsockopt(srv->mon, ZMQ_LINGER, &linger, sizeof linger);
    for (int i = 0; i < cfg->ndevices; i++) {
        s_worker_t *w = &srv->workers[i];
        w->srv = srv;
        w->index = (uint32_t)i;
        w->exec = djn_exec_new(cfg->devices[i], err, errlen);
        if (!w->exec)
            goto fail;
        w->cpu = !strncmp(cfg->devices[i], "cpu", 3);
        w->counts = w;
        srv->nworkers++;
        if (srv->tcache)
            djn_tcache_set_exec(srv->tcache, (uint32_t)i, w->exec);
        if (!strncmp(cfg->devices[i], "cpu", 3) && cfg->data_bytes &&
            !(w->vmu = djn_vmu_new(cfg->data_bytes, cfg->slab_bytes, err, errlen)))
            goto fail;
    }
    /* lanes: CPU devices only (a GPU's would need a stream of their own per class) */
    uint32_t nl = cfg->lanes > DJN_SCHED_MAX_LANES ? DJN_SCHED_MAX_LANES : cfg->lanes;
    for (int i = 0; i < srv->nworkers; i++)
        for (uint32_t k = 0; srv->workers[i].cpu && k < nl; k++) {
            s_worker_t *l = &srv->lanes[srv->nlanes];
            *l = (s_worker_t){.srv = srv,
                              .index = (uint32_t)i,
                              .vmu = srv->workers[i].vmu,
                              .cpu = true,
                              .lane = true,
                              .counts = &srv->workers[i]};
            if (!(l->exec = djn_exec_new(cfg->devices[i], err, errlen)))
                goto fail;
            srv->nlanes++;
        }
    for (int i = 0; i < srv->nworkers; i++)
        if (!s_push_open(srv, &srv->workers[i])) {
            snprintf(err, errlen, "cannot open a worker's reply socket: %s",
                     zmq_strerror(zmq_errno()));
            goto fail;
        }
    for (int i = 0; i < srv->nworkers + srv->nlanes; i++) {
        s_worker_t *w = i < srv->nworkers ? &srv->workers[i] : &srv->lanes[i - srv->nworkers];
        if (pthread_create(&w->th, NULL, w->lane ? s_lane_main : s_worker_main, w) != 0) {
            snprintf(err, errlen, "cannot start a worker thread");
            goto fail;
        }
        s_thread_name(w, w->th); /* named before the server says it listens */
        w->started = true;
    }
    return srv;
fail:
    djn_server_destroy(&srv);
    return NULL;
}

/* The drain's last step: forward the replies workers pushed (a fragment that ended just
 * now), until the reply socket stays quiet for a moment. */
static void s_forward_rest(djn_server_t *srv) {
    for (int i = 0; i < 1000; i++) { /* bounded: a worker cannot push without a job */
        zmq_pollitem_t it = {srv->pull, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 20) <= 0)
            return;
        s_forward_reply(srv);
    }
}

/* Fragments still queued when the drain's time is up: each gets an ERROR now rather
 * than silence (the one running on a device finishes: a kernel cannot be interrupted). */
static uint32_t s_refuse_queued(djn_server_t *srv) {
    uint32_t n = 0;
    for (int d = 0; d < srv->nworkers; d++) {
        djn_sched_item_t *it;
        while ((it = djn_sched_take(srv->sched, (uint32_t)d)) != NULL) {
            s_job_t *j = (s_job_t *)it;
            s_send_error(srv, &srv->rout, &j->ident, j->msg->sid, j->msg->seq, DJN_ERR_CLOSED,
                         "the server stopped (its drain timeout ran out) before running this "
                         "fragment",
                         -1, NULL);
            s_job_free(srv, j);
            n++;
        }
    }
    return n;
}

static uint32_t s_queued(djn_server_t *srv) {
    uint32_t n = 0;
    for (int d = 0; d < srv->nworkers; d++)
        n += djn_sched_depth(srv->sched, (uint32_t)d);
    return n;
}

djn_status_t djn_server_run(djn_server_t *srv) {
    if (srv->cfg.announce_fd >= 0) {
        dprintf(srv->cfg.announce_fd, "DJINN_ENDPOINT %s\n", srv->endpoint);
        close(srv->cfg.announce_fd);
    }
    char devs[DJN_SERVER_MAX_DEVICES * 34] = "";
    for (int i = 0; i < srv->nworkers; i++) {
        size_t l = strlen(devs);
        snprintf(devs + l, sizeof devs - l, "%s%s", i ? ", " : "",
                 djn_exec_device(srv->workers[i].exec));
    }
    char msg[sizeof devs + 320];
    snprintf(msg, sizeof msg, "listening on %s (%s)", srv->endpoint, devs);
    djn_log(DJN_LOG_INFO, msg);
    int64_t next_check = s_now_ms() + 250, drain_deadline = 0;
    while (!s_stop_flag) {
        if (s_drain_flag && !srv->draining) {
            srv->draining = true;
            if (srv->cfg.drain_timeout_ms == 0) /* no drain: stop at once, as SIGINT does */
                break;
            drain_deadline = s_now_ms() + (int64_t)srv->cfg.drain_timeout_ms;
            djn_log(DJN_LOG_INFO, "draining: no new sessions; exiting once queued fragments ran",
                    DJN_KV_U64("queued", s_queued(srv)),
                    DJN_KV_U64("timeout_ms", srv->cfg.drain_timeout_ms));
        }
        zmq_pollitem_t items[4] = {{srv->router, 0, ZMQ_POLLIN, 0},
                                   {srv->pull, 0, ZMQ_POLLIN, 0},
                                   {srv->mon, 0, ZMQ_POLLIN, 0},
                                   {srv->zap, 0, ZMQ_POLLIN, 0}};
        int rc = zmq_poll(items, srv->zap ? 4 : 3, srv->draining ? 10 : 100);
        if (rc < 0 && errno != EINTR)
            break;
        /* zmq_poll is level-triggered: one message per ready socket, then poll again
         * (every ZeroMQ call checks the socket's mailbox: fewer calls, fewer syscalls) */
        if (rc > 0 && srv->zap && (items[3].revents & ZMQ_POLLIN))
            s_handle_zap(srv);
        if (rc > 0 && (items[2].revents & ZMQ_POLLIN))
            s_handle_monitor(srv);
        if (rc > 0 && (items[1].revents & ZMQ_POLLIN))
            s_forward_reply(srv);
        if (rc > 0 && (items[0].revents & ZMQ_POLLIN))
            s_handle_client(srv);
        int64_t now = s_now_ms();
        zmq_pollitem_t in = {srv->router, 0, ZMQ_POLLIN, 0}; /* a request already here runs */
        if (srv->draining && djn_sched_idle(srv->sched) && zmq_poll(&in, 1, 0) == 0) {
            s_forward_rest(srv);
            djn_log(DJN_LOG_INFO, "drained: every queued fragment ran");
            break;
        }
        if (srv->draining && now >= drain_deadline) {
            uint32_t n = s_refuse_queued(srv);
            djn_log(DJN_LOG_WARN, "drain timeout: stopping with fragments unfinished",
                    DJN_KV_U64("refused", n), DJN_KV_U64("timeout_ms", srv->cfg.drain_timeout_ms));
            break;
        }
        if (now >= next_check) {
            next_check = now + 250;
            uint64_t gone[256]; /* at most this many per tick: a burst is spread out */
            uint32_t n = djn_sessions_expire(srv->sessions, now, gone, 256);
            djn_tlb_drop_sessions(srv->tlb, gone, n);
            s_drop_expired(srv, gone, n);
            if (n)
                djn_log(DJN_LOG_DEBUG, "reclaimed expired sessions", DJN_KV_U64("count", n));
            if (srv->cfg.parent_pid > 0 && getppid() != srv->cfg.parent_pid) {
                djn_log(DJN_LOG_INFO, "parent process is gone, exiting",
                        DJN_KV_U64("parent_pid", srv->cfg.parent_pid));
                break;
            }
        }
    }
    if (srv->draining) { /* let ZeroMQ deliver the last replies while the sockets close */
        int linger = 2000;
        zmq_setsockopt(srv->router, ZMQ_LINGER, &linger, sizeof linger);
    }
    return DJN_OK;
}

/* Order matters: workers stop first (no fragment runs); then the sockets, so that the
 * replies still in them are sent (a drain's linger) or dropped while the sessions whose
 * fetched bytes they carry still exist; then everything that holds device storages
 * (queued jobs, sessions, the plan cache, Text), and the VMUs last, since freeing a
 * storage finds its segment through its VMU. */
void djn_server_destroy(djn_server_t **self_p) {
    if (!self_p || !*self_p)
        return;
    djn_server_t *srv = *self_p;
    if (srv->sched)
        djn_sched_stop(srv->sched);
    for (int i = 0; i < srv->nworkers; i++)
        if (srv->workers[i].started)
            pthread_join(srv->workers[i].th, NULL);
    for (int i = 0; i < srv->nlanes; i++)
        if (srv->lanes[i].started)
            pthread_join(srv->lanes[i].th, NULL);
    for (int i = 0; srv->sched && i < srv->nworkers; i++) {
        djn_sched_item_t *it;
        while ((it = djn_sched_take(srv->sched, (uint32_t)i)) != NULL)
            s_job_free(srv, (s_job_t *)it);
    }
    for (int i = 0; i < srv->nworkers; i++) {
        if (srv->workers[i].push.sock)
            zmq_close(srv->workers[i].push.sock);
        if (srv->workers[i].push_mu_init)
            pthread_mutex_destroy(&srv->workers[i].push_mu);
    }
    if (srv->mon)
        zmq_close(srv->mon);
    if (srv->router)
        zmq_close(srv->router);
    if (srv->pull)
        zmq_close(srv->pull);
    if (srv->zap)
        zmq_close(srv->zap);
    if (srv->ctx)
        zmq_ctx_term(srv->ctx);
    djn_tlb_destroy(&srv->tlb); /* its entries hold session references */
    djn_sessions_destroy(&srv->sessions);
    djn_models_destroy(&srv->models);
    djn_text_destroy(&srv->text);
    djn_tcache_destroy(&srv->tcache);
    for (int i = 0; i < srv->nlanes; i++)
        djn_exec_destroy(&srv->lanes[i].exec); /* its vmu is its worker's */
    for (int i = 0; i < srv->nworkers; i++) {
        djn_exec_destroy(&srv->workers[i].exec);
        djn_vmu_destroy(&srv->workers[i].vmu);
    }
    djn_sched_destroy(&srv->sched);
    djn_auth_destroy(&srv->auth);
    if (srv->cfg.remove_ipc_dir && !strncmp(srv->endpoint, "ipc://", 6)) {
        char dir[256]; /* the socket file is gone with the socket; its private directory: */
        snprintf(dir, sizeof dir, "%s", srv->endpoint + 6);
        unlink(dir);
        char *slash = strrchr(dir, '/');
        if (slash && slash != dir) {
            *slash = 0;
            rmdir(dir);
        }
    }
    djn_free(srv, sizeof(*srv));
    *self_p = NULL;
}
