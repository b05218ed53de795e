/* djn_server.c: transport thread, workers, request handling (the only server file that
 * includes zmq.h).
 *
 * Transport thread: polls the ROUTER (clients) and a PULL socket (replies from workers).
 * A client message is [identity][header][frames...]. The header is decoded and checked
 * here (djn_msg_decode enforces every protocol limit before allocating); HELLO,
 * HEARTBEAT, STATS, HAVE and CLOSE are answered on the spot; GRAPH, GRAPH_CACHED and
 * FETCH become jobs on
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
#include "djn_tlb.h"
#include "djn_map.h"
#include "djn_plan.h"
#include "djn_vmu.h"

#define S_REPLY_EP "inproc://djn-replies"

typedef struct s_job {
    struct s_job *next;
    zmq_msg_t ident;
    zmq_msg_t *frames; /* frames after the header */
    uint32_t nframes;
    uint64_t sched_ns; /* time spent scheduling so far (transport side) */
    djn_msg_t *msg;
    djn_session_t *sess;
    bool queued; /* counted against the session's queue quota */
    djn_tlb_entry_t *plan; /* GRAPH_CACHED: the cached fragment whose nodes run */
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
    djn_vmu_t *vmu; /* CPU devices: the Data segment and the stack slab */
    _Atomic uint64_t nodes, jobs, errors;
} s_worker_t;

struct djn_server {
    djn_server_cfg_t cfg;
    void *ctx, *router, *pull;
    char endpoint[256];
    djn_sessions_t *sessions;
    djn_text_t *text;
    djn_tlb_t *tlb;
    s_worker_t workers[DJN_SERVER_MAX_DEVICES];
    int nworkers;
    int64_t started_ms;
    _Atomic uint64_t requests, errors, bytes_in, bytes_out;
    /* scheduling latency: header decode + plan-cache lookup (transport) and planning
     * (worker), per fragment, split by plan-cache hit (GRAPH_CACHED) and miss (GRAPH) */
    _Atomic uint64_t sched_ns_hit, sched_n_hit, sched_ns_miss, sched_n_miss;
};

static uint64_t s_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

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

static djn_tlb_t *s_tlb_of_jobs; /* for s_job_free: one server per process */

static void s_job_free(s_job_t *j) {
    if (j->plan)
        djn_tlb_release(s_tlb_of_jobs, &j->plan);
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

/* ------------------------------------------------------------------ planning */

typedef struct {
    djn_map_t idx; /* ephemeral handle -> request index + 1 */
    djn_plan_req_t *reqs;
    uint64_t *handles;
    uint32_t n;
} s_lifetimes_t;

static void s_note_use(s_lifetimes_t *lt, const djn_graph_req_t *g, const djn_value_t *v, uint32_t node,
                       int depth) {
    if (depth > DJN_MAX_DEPTH)
        return;
    if (v->kind == DJN_V_TENSOR) {
        if (v->u.t->handle >= g->nbinds)
            return;
        uint64_t i;
        if (djn_map_get(&lt->idx, g->binds[v->u.t->handle], &i)) {
            djn_plan_req_t *r = &lt->reqs[i - 1];
            if (r->first == UINT32_MAX)
                r->first = node;
            r->last = node;
        }
    } else if (v->kind == DJN_V_LIST) {
        for (uint32_t k = 0; k < v->len; k++)
            s_note_use(lt, g, &v->u.items[k], node, depth + 1);
    }
}

/* The meta-simulator's plan for this fragment: intermediates are the handles declared
 * and freed by the same message; their lifetimes come from the nodes that name them,
 * and djn_plan assigns slab offsets. Returns the planned peak (0: nothing planned) and
 * fills `place` (handle -> offset + 1). */
static uint64_t s_plan_fragment(s_worker_t *w, const djn_graph_req_t *g, const djn_node_t *nodes,
                                uint32_t nnodes, djn_map_t *place, uint64_t *too_big) {
    if (!w->vmu || !g->nallocs || !g->nfrees || !nnodes)
        return 0;
    djn_map_t freed = {0};
    for (uint32_t i = 0; i < g->nfrees; i++)
        djn_map_put(&freed, g->frees[i], 1);
    s_lifetimes_t lt = {0};
    lt.reqs = djn_calloc(g->nallocs, sizeof(djn_plan_req_t));
    lt.handles = djn_calloc(g->nallocs, sizeof(uint64_t));
    uint64_t peak = 0;
    if (!lt.reqs || !lt.handles)
        goto out;
    for (uint32_t i = 0; i < g->nallocs; i++) {
        if (!djn_map_get(&freed, g->allocs[i].handle, NULL))
            continue;
        lt.reqs[lt.n] = (djn_plan_req_t){g->allocs[i].nbytes, UINT32_MAX, 0};
        lt.handles[lt.n] = g->allocs[i].handle;
        djn_map_put(&lt.idx, g->allocs[i].handle, ++lt.n);
    }
    for (uint32_t i = 0; i < nnodes; i++) {
        for (uint32_t a = 0; a < nodes[i].nargs; a++)
            s_note_use(&lt, g, &nodes[i].args[a], i, 0);
        for (uint32_t a = 0; a < nodes[i].nouts; a++)
            s_note_use(&lt, g, &nodes[i].outs[a], i, 0);
    }
    uint32_t m = 0; /* keep the requests some node names */
    for (uint32_t i = 0; i < lt.n; i++)
        if (lt.reqs[i].first != UINT32_MAX) {
            lt.reqs[m] = lt.reqs[i];
            lt.handles[m++] = lt.handles[i];
        }
    djn_plan_t *plan = NULL;
    if (m && djn_plan_build(lt.reqs, m, 256, &plan) == DJN_OK) {
        uint64_t bump = 0;
        for (uint32_t i = 0; i < m; i++) {
            djn_map_put(place, lt.handles[i], plan->offsets[i] + 1);
            bump += (lt.reqs[i].nbytes + 255) & ~255ull;
        }
        peak = plan->peak;
        if (peak > djn_vmu_slab_capacity(w->vmu)) { /* does not fit: refuse the fragment */
            djn_map_clear(place);
            *too_big = peak;
            peak = 0;
        } else {
            djn_vmu_note_plan(w->vmu, plan->peak, plan->lower_bound, bump);
        }
        djn_plan_destroy(&plan);
    }
out:
    djn_map_release(&freed);
    djn_map_release(&lt.idx);
    djn_free(lt.reqs, g->nallocs * sizeof(djn_plan_req_t));
    djn_free(lt.handles, g->nallocs * sizeof(uint64_t));
    return peak;
}

/* A plan-cache hit reuses the fragment's slab plan when it still holds: every planned
 * slot is bound to a handle this message declares and frees (an intermediate again). */
static bool s_reuse_plan(const djn_graph_req_t *g, const djn_tlb_entry_t *e, djn_map_t *place,
                         uint64_t *peak) {
    const uint64_t *slots;
    uint32_t n;
    if (!djn_tlb_plan(e, &slots, &n, peak) || n > g->nbinds)
        return false;
    djn_map_t eph = {0};
    for (uint32_t i = 0; i < g->nfrees; i++)
        djn_map_put(&eph, g->frees[i], 1);
    djn_map_t declared = {0};
    for (uint32_t i = 0; i < g->nallocs; i++)
        if (djn_map_get(&eph, g->allocs[i].handle, NULL))
            djn_map_put(&declared, g->allocs[i].handle, 1);
    bool ok = true;
    for (uint32_t s = 0; ok && s < n; s++)
        if (slots[s]) {
            ok = djn_map_get(&declared, g->binds[s], NULL);
            if (ok)
                djn_map_put(place, g->binds[s], slots[s]);
        }
    djn_map_release(&eph);
    djn_map_release(&declared);
    if (!ok) {
        djn_map_clear(place);
        return false;
    }
    return true;
}

static void s_poison_value(djn_session_t *s, const djn_graph_req_t *g, const djn_value_t *v, const char *why,
                           bool force, int depth) {
    if (depth > DJN_MAX_DEPTH)
        return;
    if (v->kind == DJN_V_TENSOR && v->u.t->handle < g->nbinds)
        djn_session_poison(s, g->binds[v->u.t->handle], why, force);
    else if (v->kind == DJN_V_LIST)
        for (uint32_t k = 0; k < v->len; k++)
            s_poison_value(s, g, &v->u.items[k], why, force, depth + 1);
}

/* The failed node's results (outs, which name in-place and out= targets too) may be
 * half-written: poisoned whatever they hold. Nodes after it never ran: whatever they
 * would have produced and has no value yet is poisoned. */
static void s_poison_outputs(djn_session_t *s, const djn_graph_req_t *g, const djn_node_t *n, const char *why,
                             bool failed_node) {
    for (uint32_t a = 0; a < n->nouts; a++)
        s_poison_value(s, g, &n->outs[a], why, failed_node, 0);
    for (uint32_t a = 0; a < n->nargs; a++)
        s_poison_value(s, g, &n->args[a], why, false, 0);
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
    const djn_node_t *nodes = j->plan ? djn_tlb_graph(j->plan)->nodes : g->nodes;
    uint32_t nnodes = j->plan ? djn_tlb_graph(j->plan)->nnodes : g->nnodes;
    djn_session_lock(s);
    djn_exec_env_t env;
    djn_session_env(s, w->exec, w->index, &env);
    env.binds = g->binds;
    env.nbinds = g->nbinds;
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
    djn_map_t place = {0};
    bool planned = false;
    uint64_t t_plan = s_now_ns();
    uint64_t plan_peak = 0;
    if (st == DJN_OK && w->vmu) {
        uint64_t too_big = 0;
        uint64_t peak = 0;
        if (!(j->plan && s_reuse_plan(g, j->plan, &place, &peak)))
            peak = s_plan_fragment(w, g, nodes, nnodes, &place, &too_big);
        plan_peak = peak;
        if (too_big) {
            st = DJN_ERR_OOM;
            snprintf(err, sizeof err,
                     "out of memory: this fragment's activations need %" PRIu64 " bytes of stack slab "
                     "(planned peak) but the slab holds %" PRIu64 " bytes; split the work into smaller "
                     "steps (torch.remote.synchronize()) or start djinn-server with a larger --slab-bytes",
                     too_big, djn_vmu_slab_capacity(w->vmu));
        }
        if (djn_vmu_fragment_begin(w->vmu, peak) != DJN_OK)
            djn_map_clear(&place); /* the slab was not empty: run unplanned */
        planned = true;
        djn_session_set_placements(&place);
        djn_exec_slab_mode(1);
    }
    if (nnodes) {
        uint64_t ns = j->sched_ns + (s_now_ns() - t_plan);
        if (j->plan) {
            atomic_fetch_add(&srv->sched_ns_hit, ns);
            atomic_fetch_add(&srv->sched_n_hit, 1);
        } else {
            atomic_fetch_add(&srv->sched_ns_miss, ns);
            atomic_fetch_add(&srv->sched_n_miss, 1);
        }
    }
    for (uint32_t i = 0; st == DJN_OK && i < nnodes; i++) {
        const djn_node_t *n = &nodes[i];
        bool dynamic = (n->flags & DJN_NODE_DYNAMIC) && i + 1 == nnodes;
        if (dynamic)
            has_dyn = true; /* a DYNAMIC node elsewhere gets NULL and is refused */
        st = djn_exec_node(w->exec, n, &env, dynamic ? &dyn : NULL, err, sizeof err);
        if (st != DJN_OK)
            bad_node = i;
        else
            atomic_fetch_add(&w->nodes, 1);
    }
    if (bad_node >= 0) /* what the failed node and those after it should have produced */
        for (uint32_t i = (uint32_t)bad_node; i < nnodes; i++)
            s_poison_outputs(s, g, &nodes[i], err, i == (uint32_t)bad_node);
    else if (st != DJN_OK) /* refused before any node ran (plan, allocs, uploads) */
        for (uint32_t i = 0; i < nnodes; i++)
            s_poison_outputs(s, g, &nodes[i], err, false);
    djn_exec_rng_exit(w->exec, &env);
    djn_exec_slab_mode(0);
    djn_session_set_placements(NULL);
    if (planned) { /* what clients still hold leaves the slab before it is reset */
        uint64_t moved = 0;
        djn_map_t freed = {0};
        for (uint32_t i = 0; i < g->nfrees; i++)
            djn_map_put(&freed, g->frees[i], 1);
        for (uint32_t i = 0; i < g->nbinds; i++)
            if (!djn_map_get(&freed, g->binds[i], NULL))
                djn_session_copy_out(s, w->exec, g->binds[i], &moved);
        for (uint32_t i = 0; i < g->nallocs; i++)
            if (!djn_map_get(&freed, g->allocs[i].handle, NULL))
                djn_session_copy_out(s, w->exec, g->allocs[i].handle, &moved);
        djn_map_release(&freed);
        if (moved)
            djn_vmu_note_copy_out(w->vmu, moved);
    }
    if (st == DJN_OK && dyn.failed) {
        st = DJN_ERR_NOMEM;
        snprintf(err, sizeof err, "out of host memory encoding results");
    }
    for (uint32_t i = 0; st == DJN_OK && i < g->nfetches; i++) {
        const djn_fetch_t *f = &g->fetches[i];
        djn_stor_t *stor = djn_session_resolve(s, w->exec, f->handle, 0, err, sizeof err);
        if (!stor) {
            st = strstr(err, "unknown handle") ? DJN_ERR_HANDLE
                 : strstr(err, "quota")        ? DJN_ERR_QUOTA
                 : strstr(err, "never computed") ? DJN_ERR_OP
                                                 : DJN_ERR_OOM;
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
    if (planned) {
        djn_exec_sync(w->exec); /* the slab is reused only after the device finished */
        djn_vmu_fragment_end(w->vmu);
    }
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
        /* filed before the reply leaves: the client may send GRAPH_CACHED right after;
         * with its slab plan by slot, so that a hit plans nothing */
        if (!j->plan && j->msg->type == DJN_MSG_GRAPH) {
            uint64_t *slots = place.len && g->nbinds ? djn_calloc(g->nbinds, sizeof(uint64_t)) : NULL;
            for (uint32_t i = 0; slots && i < g->nbinds; i++)
                djn_map_get(&place, g->binds[i], &slots[i]);
            djn_tlb_insert_planned(srv->tlb, &j->msg, slots, slots ? g->nbinds : 0, plan_peak);
            djn_free(slots, g->nbinds * sizeof(uint64_t));
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
            const djn_node_t *n = &nodes[bad_node];
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
    djn_map_release(&place);
    s_job_free(j);
}

static void *s_worker_main(void *arg) {
    s_worker_t *w = arg;
    djn_exec_use_vmu(w->exec, w->vmu);
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
    if (me) { /* read without the session lock: a running fragment must not stall the transport */
        my_bytes = djn_session_bytes(me);
        my_peak = djn_session_peak(me);
        djn_session_release(&me);
    }
    djn_buf_t b = {0};
    djn_enc_header(&b, DJN_MSG_REPLY, m->sid, m->seq);
    djn_tlb_stats_t tl;
    djn_tlb_stats(srv->tlb, &tl);
    djn_enc_map(&b, 28);
    uint64_t nh = atomic_load(&srv->sched_n_hit), nm = atomic_load(&srv->sched_n_miss);
    s_enc_kv(&b, "sched_us_hit_avg", nh ? atomic_load(&srv->sched_ns_hit) / nh / 1000 : 0);
    s_enc_kv(&b, "sched_us_miss_avg", nm ? atomic_load(&srv->sched_ns_miss) / nm / 1000 : 0);
    s_enc_kv(&b, "plan_cache_entries", tl.entries);
    s_enc_kv(&b, "plan_cache_capacity", tl.capacity);
    s_enc_kv(&b, "plan_cache_hits", tl.hits);
    s_enc_kv(&b, "plan_cache_misses", tl.misses);
    s_enc_kv(&b, "plan_cache_evictions", tl.evictions);
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
        djn_vmu_stats_t vs;
        memset(&vs, 0, sizeof vs);
        if (w->vmu)
            djn_vmu_stats(w->vmu, &vs);
        djn_enc_map(&b, 23);
        djn_enc_cstr(&b, "name");
        djn_enc_cstr(&b, djn_exec_device(w->exec));
        s_enc_kv(&b, "nodes", atomic_load(&w->nodes));
        s_enc_kv(&b, "fragments", atomic_load(&w->jobs));
        s_enc_kv(&b, "errors", atomic_load(&w->errors));
        s_enc_kv(&b, "data_capacity", vs.data.capacity);
        s_enc_kv(&b, "data_used", vs.data.used);
        s_enc_kv(&b, "data_peak", vs.data.peak);
        s_enc_kv(&b, "data_free_blocks", vs.data.free_blocks);
        s_enc_kv(&b, "data_largest_free", vs.data.largest_free);
        djn_enc_cstr(&b, "data_fragmentation");
        djn_enc_float(&b, vs.data.fragmentation);
        s_enc_kv(&b, "slab_capacity", vs.slab.capacity);
        s_enc_kv(&b, "slab_high_water", vs.slab.high_water);
        s_enc_kv(&b, "slab_in_use", vs.slab.top);
        s_enc_kv(&b, "slab_resets", vs.slab.resets);
        s_enc_kv(&b, "slab_resets_deferred", vs.slab_resets_deferred);
        s_enc_kv(&b, "planned_fragments", vs.planned_fragments);
        s_enc_kv(&b, "plan_peak_last", vs.plan_peak_last);
        s_enc_kv(&b, "plan_lower_bound_last", vs.plan_lower_bound_last);
        s_enc_kv(&b, "plan_bump_last", vs.plan_bump_last);
        s_enc_kv(&b, "plan_peak_sum", vs.plan_peak_sum);
        s_enc_kv(&b, "plan_lower_bound_sum", vs.plan_lower_bound_sum);
        s_enc_kv(&b, "plan_bump_sum", vs.plan_bump_sum);
        s_enc_kv(&b, "copied_out_bytes", vs.copied_out_bytes);
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
    uint64_t t0 = s_now_ns();
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
    djn_tlb_entry_t *plan = NULL;
    if (m->type == DJN_MSG_GRAPH_CACHED) {
        plan = djn_tlb_lookup(srv->tlb, m->u.graph.fp, m->u.graph.device, m->sid);
        if (!plan) {
            snprintf(err, sizeof err, "plan cache miss: fragment %016" PRIx64 "%016" PRIx64
                     " is not cached (evicted); send the full GRAPH", m->u.graph.fp[0], m->u.graph.fp[1]);
            s_send_error(srv, srv->router, &ident, m->sid, m->seq, DJN_ERR_EVICTED, err);
            goto done;
        }
        if (djn_tlb_graph(plan)->nslots > m->u.graph.nbinds) {
            djn_tlb_release(srv->tlb, &plan);
            s_send_error(srv, srv->router, &ident, m->sid, m->seq, DJN_ERR_PROTO,
                         "GRAPH_CACHED binds fewer slots than the cached fragment names");
            goto done;
        }
    }
    if (m->type != DJN_MSG_GRAPH && m->type != DJN_MSG_FETCH && m->type != DJN_MSG_GRAPH_CACHED) {
        snprintf(err, sizeof err, "message type %u is reserved and not served by this version", m->type);
        s_send_error(srv, srv->router, &ident, m->sid, m->seq, DJN_ERR_PROTO, err);
        goto done;
    }
    if (m->u.graph.device >= (uint32_t)srv->nworkers) {
        djn_tlb_release(srv->tlb, &plan);
        snprintf(err, sizeof err, "device %u does not exist: this server has %d", m->u.graph.device,
                 srv->nworkers);
        s_send_error(srv, srv->router, &ident, m->sid, m->seq, DJN_ERR_DEVICE, err);
        goto done;
    }
    if (!djn_session_queue_enter(sess)) {
        djn_tlb_release(srv->tlb, &plan);
        snprintf(err, sizeof err, "session quota exceeded: more than %u fragments queued (--session-max-queued)",
                 srv->cfg.session_max_queued);
        s_send_error(srv, srv->router, &ident, m->sid, m->seq, DJN_ERR_QUOTA, err);
        goto done;
    }
    s_job_t *j = djn_calloc(1, sizeof(*j));
    if (!j) {
        djn_tlb_release(srv->tlb, &plan);
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
    j->plan = plan;
    j->sched_ns = s_now_ns() - t0;
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
    if (cfg->data_bytes)
        djn_exec_install_allocator();
    srv->text = djn_text_new();
    srv->tlb = djn_tlb_new(cfg->plan_cache_entries);
    s_tlb_of_jobs = srv->tlb;
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
        if (!strncmp(cfg->devices[i], "cpu", 3) && cfg->data_bytes &&
            !(w->vmu = djn_vmu_new(cfg->data_bytes, cfg->slab_bytes, err, errlen))) {
            djn_exec_destroy(&w->exec);
            goto fail;
        }
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
        djn_vmu_destroy(&w->vmu);
        pthread_mutex_destroy(&w->mu);
        pthread_cond_destroy(&w->cv);
    }
    djn_sessions_destroy(&srv->sessions);
    djn_text_destroy(&srv->text);
    djn_tlb_destroy(&srv->tlb);
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
