/* fuzz_server.c: libFuzzer target for the server's message handling below the socket.
 *
 * One input is a short conversation: up to 8 messages, each [u8 nframes][u16 len][frame
 * 0][u16 len][data frame]... (an input that does not parse that way is one message, the
 * whole input as frame 0). The harness plays the transport: a session is opened for the
 * input (its id and owner written into every message, so the fuzzer reaches past the
 * session check), each message is decoded by djn_msg_decode and run through the real
 * fragment runtime (djn_frag.c), sessions, Text, plan cache and VMU, with the stub
 * executor (exec_stub.c) behind the djn_exec.h seam. After the input the session is
 * closed, and every handle, device byte and Text entry must be back (a leak is a crash;
 * host memory is LeakSanitizer's). LOAD_MODEL runs against a small model store the
 * harness writes at start (djn_models.c: access list, parse, describe, bind into Text
 * without a cache, so its entries must go with the session too). PLACE gathers what the
 * transport gathers for device 0 (Text held for the tenant, the model store) and runs the
 * placement rule. Seeds are real client messages (fuzz/corpus/server, `make fuzz-seeds`),
 * LOAD_MODEL and PLACE requests. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "djn_codec.h"
#include "djn_frag.h"
#include "djn_mem.h"
#include "djn_models.h"
#include "djn_place.h"
#include "djn_session.h"
#include "djn_text.h"
#include "djn_tlb.h"
#include "djn_vmu.h"

static struct {
    djn_sessions_t *sessions;
    djn_text_t *text;
    djn_tlb_t *tlb;
    djn_vmu_t *vmu;
    djn_exec_t *exec;
    djn_models_t *models;
    char store[64];
} g;

/* The model store: "tiny" and "org/tiny" (a tensor of each kind of span: empty, small,
 * 4 KiB), and "secret", which the fuzzed tenant may not load. */
static void s_write(const char *dir, const char *name, const void *p, size_t n) {
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0)
        abort();
}

static void s_model(const char *name) {
    static const char hdr[] = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
                              "\"b\":{\"dtype\":\"BF16\",\"shape\":[0],\"data_offsets\":[24,24]},"
                              "\"w\":{\"dtype\":\"I64\",\"shape\":[512],\"data_offsets\":[24,4120]},"
                              "\"__metadata__\":{\"format\":\"pt\"}}";
    char dir[256];
    snprintf(dir, sizeof dir, "%s/%s", g.store, name);
    if (mkdir(dir, 0700) != 0)
        abort();
    static const char cfg[] = "{\"model_type\": \"bert\"}";
    s_write(dir, "config.json", cfg, sizeof cfg - 1);
    size_t hl = sizeof hdr - 1, n = 8 + hl + 4120;
    uint8_t *f = calloc(1, n);
    if (!f)
        abort();
    for (int i = 0; i < 8; i++)
        f[i] = (uint8_t)(hl >> (8 * i));
    memcpy(f + 8, hdr, hl);
    for (size_t i = 8 + hl; i < n; i++)
        f[i] = (uint8_t)(i * 7);
    s_write(dir, "model.safetensors", f, n);
    free(f);
}

static void s_rm_store(void) {
    static const char *paths[] = {"tiny/config.json",        "tiny/model.safetensors",
                                  "tiny",                    "secret/config.json",
                                  "secret/model.safetensors", "secret",
                                  "org/tiny/config.json",    "org/tiny/model.safetensors",
                                  "org/tiny",                "org"};
    char path[256];
    for (size_t i = 0; i < sizeof paths / sizeof *paths; i++) {
        snprintf(path, sizeof path, "%s/%s", g.store, paths[i]);
        remove(path);
    }
    djn_models_destroy(&g.models);
    rmdir(g.store);
}

static void s_setup(void) {
    if (g.sessions)
        return;
    char err[256];
    g.text = djn_text_new();
    g.tlb = djn_tlb_new(8);
    djn_sessions_limits_t lim = {.quota_bytes = 32u << 20, .max_sessions = 64, .max_handles = 4096};
    g.sessions = djn_sessions_new(&lim, g.text);
    g.vmu = djn_vmu_new(64u << 20, 8u << 20, err, sizeof err);
    g.exec = djn_exec_new("cpu", err, sizeof err);
    if (!g.text || !g.tlb || !g.sessions || !g.vmu || !g.exec)
        abort();
    djn_exec_use_vmu(g.exec, g.vmu);
    snprintf(g.store, sizeof g.store, "/tmp/djinn-fuzz-models-XXXXXX");
    if (!mkdtemp(g.store))
        abort();
    s_model("tiny");
    s_model("secret");
    char org[128];
    snprintf(org, sizeof org, "%s/org", g.store);
    if (mkdir(org, 0700) != 0)
        abort();
    s_model("org/tiny");
    if (!(g.models = djn_models_new(g.store, g.text, err, sizeof err)) ||
        djn_models_count(g.models) != 3)
        abort();
    atexit(s_rm_store);
}

typedef struct {
    const uint8_t *p;
    size_t n;
} s_span_t;

static bool s_take(const uint8_t **p, size_t *left, size_t n, s_span_t *out) {
    if (*left < n)
        return false;
    out->p = *p;
    out->n = n;
    *p += n;
    *left -= n;
    return true;
}

static void s_run(djn_session_t *s, const s_span_t *frames, uint32_t nframes) {
    djn_msg_t *m = NULL;
    char err[512];
    uint64_t seq;
    if (djn_msg_decode(frames[0].p, frames[0].n, nframes - 1, &m, &seq, err, sizeof err) != DJN_OK)
        return;
    djn_frag_env_t env = {.exec = g.exec,
                          .vmu = g.vmu,
                          .device = 0,
                          .text = g.text,
                          .tlb = g.tlb,
                          .max_tensor_bytes = 1u << 24};
    djn_blob_t blobs[8];
    for (uint32_t i = 1; i < nframes; i++)
        blobs[i - 1] = (djn_blob_t){frames[i].p, frames[i].n};
    if (m->type == DJN_MSG_GRAPH || m->type == DJN_MSG_FETCH || m->type == DJN_MSG_GRAPH_CACHED) {
        djn_tlb_entry_t *cached = NULL;
        const djn_node_t *nodes = NULL;
        if (m->type == DJN_MSG_GRAPH_CACHED) {
            cached = djn_tlb_lookup(g.tlb, m->u.graph.fp, m->u.graph.device, djn_session_id(s));
            if (!cached || djn_tlb_bind(m->arena, &m->u.graph, cached, &nodes, err,
                                                  sizeof err) != DJN_OK) {
                djn_tlb_release(g.tlb, &cached);
                djn_msg_free(&m);
                return;
            }
        }
        if (m->u.graph.device == 0) {
            djn_frag_in_t in = {m->type, s, &m->u.graph, cached, nodes, blobs, nframes - 1};
            djn_frag_out_t out;
            djn_frag_run(&env, &in, &out);
            djn_frag_out_release(&out);
        }
        djn_tlb_release(g.tlb, &cached);
    } else if (m->type == DJN_MSG_HAVE && m->u.have.device == 0) {
        uint32_t *missing = NULL, n = 0;
        if (djn_frag_have(&env, s, &m->u.have, &missing, &n) == DJN_OK)
            djn_free(missing, m->u.have.nitems * sizeof(uint32_t));
    } else if (m->type == DJN_MSG_LOAD_MODEL && m->u.load.device == 0) {
        djn_arena_t *a = djn_arena_new();
        djn_load_rep_t rep;
        char why[4096];
        djn_status_t st = a ? djn_models_load(g.models, g.exec, 0, s, &m->u.load, "tiny, org/tiny",
                                              "fuzz", a, &rep, why, sizeof why)
                            : DJN_ERR_NOMEM;
        /* a success did what was asked: every bind, or the whole description */
        if (st == DJN_OK && (m->u.load.nbinds ? rep.bound != m->u.load.nbinds : rep.ntensors != 3))
            abort();
        djn_arena_destroy(&a);
    } else if (m->type == DJN_MSG_PLACE) { /* the figures the transport gathers, device 0 */
        djn_place_dev_t d = {0};
        uint32_t tenant = djn_text_tenant(g.text, "fuzz");
        for (uint32_t i = 0; i < m->u.place.nhashes; i++) {
            uint64_t plain[2] = {m->u.place.hashes[i].hi, m->u.place.hashes[i].lo};
            d.held += djn_text_held(g.text, 0, plain, m->u.place.hashes[i].nbytes, tenant);
        }
        d.held += djn_models_held(g.models, m->u.place.model, "tiny, org/tiny", 0);
        if (djn_place_choose(&d, 1) != 0)
            abort();
        if (!m->u.place.probe)
            djn_session_use_device(s, 0);
    }
    djn_msg_free(&m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    s_setup();
    djn_peer_t peer = {.tenant = "fuzz", .rid = {1}, .rid_len = 1, .fd = -1};
    djn_status_t st;
    char why[256];
    djn_session_t *s = djn_sessions_open(g.sessions, 0, &peer, &st, why, sizeof why);
    if (!s)
        return 0;
    const uint8_t *p = data;
    size_t left = size;
    int nmsg = 0;
    while (left && nmsg < 8) {
        s_span_t frames[8], hdr;
        if (!s_take(&p, &left, 1, &hdr))
            break;
        uint32_t nframes = (hdr.p[0] & 7) + 1, k;
        for (k = 0; k < nframes; k++) {
            s_span_t len;
            if (!s_take(&p, &left, 2, &len) ||
                !s_take(&p, &left, (size_t)len.p[0] | (size_t)len.p[1] << 8, &frames[k]))
                break;
        }
        if (k < nframes)
            break;
        s_run(s, frames, nframes);
        nmsg++;
    }
    if (nmsg == 0) { /* not framed: the whole input is one header */
        s_span_t whole = {data, size};
        s_run(s, &whole, 1);
    }
    uint64_t sid = djn_session_id(s);
    djn_session_release(&s);
    djn_sessions_close(g.sessions, sid, &peer);
    djn_tlb_drop_sessions(g.tlb, &sid, 1);
    djn_text_stats_t ts;
    djn_text_stats(g.text, &ts);
    djn_vmu_stats_t vs;
    djn_vmu_stats(g.vmu, &vs);
    djn_sessions_stats_t ss;
    djn_sessions_stats(g.sessions, &ss);
    if (ss.handles || ss.bytes || ts.entries || ts.refs || vs.data.used || vs.slab_live) {
        fprintf(stderr,
                "leak: %llu handles, %llu session bytes, text %llu entries %llu refs, "
                "data %llu bytes, %llu slab blocks\n",
                (unsigned long long)ss.handles, (unsigned long long)ss.bytes,
                (unsigned long long)ts.entries, (unsigned long long)ts.refs,
                (unsigned long long)vs.data.used, (unsigned long long)vs.slab_live);
        abort();
    }
    return 0;
}
