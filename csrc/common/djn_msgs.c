/* djn_msgs.c: one encoder and one decoder per message of djn_proto.h.
 *
 * Built on the value layer (djn_codec.c): decoders walk a djn_value_t tree and fill the
 * typed structs, checking every field a peer could get wrong (types, ranges, frame
 * indexes, slots); encoders write the same fields in the same order. This file is the
 * only place that knows a message's field names and layout; the client, the server, the
 * C tests and the Python tests (through djinn._C) all call these functions.
 *
 * Key order on the wire is the order of the encoders below; decoders accept any order
 * and ignore unknown keys, so that a later minor addition does not break an older peer
 * (anything a peer could misread bumps DJN_PROTO_VERSION instead). */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "djn_codec.h"
#include "djn_mem.h"
#include "djn_sym.h"

/* ------------------------------------------------------------------ helpers */

static void s_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static bool s_uint(const djn_value_t *v, uint64_t *out) {
    if (!v || v->kind != DJN_V_INT)
        return false;
    *out = (uint64_t)v->u.i;
    return true;
}

static bool s_list(const djn_value_t *v) {
    return v && v->kind == DJN_V_LIST;
}

static void s_kv_uint(djn_buf_t *b, const char *k, uint64_t v) {
    djn_enc_cstr(b, k);
    djn_enc_uint(b, v);
}

static void s_header(djn_buf_t *b, const djn_msg_hdr_t *h) {
    djn_enc_map(b, 4);
    s_kv_uint(b, "type", h->type);
    s_kv_uint(b, "sid", h->sid);
    s_kv_uint(b, "seq", h->seq);
    djn_enc_cstr(b, "body");
}

/* ------------------------------------------------------------------ requests: decode */

typedef struct {
    djn_arena_t *a;
    uint32_t nframes;
    const char *what; /* message name for error texts */
    char *err;
    size_t errlen;
} s_parse_t;

static djn_status_t s_bad(s_parse_t *p, const char *what) {
    s_err(p->err, p->errlen, "%s: %s", p->what, what);
    return DJN_ERR_PROTO;
}

/* Check every tensor reference inside a value (recursively): well-formed, and its slot
 * number below nbinds; *max_slot becomes the highest slot named + 1. Nodes carry slots,
 * not handles ("binds" maps slots to handles), so that the bytes of a fragment (and so
 * its fingerprint) do not depend on handle values and a cached fragment can run again
 * with other bindings. */
static bool s_check_refs(const djn_value_t *v, uint32_t nbinds, uint32_t *max_slot, int depth) {
    if (depth > DJN_MAX_DEPTH)
        return false;
    if (v->kind == DJN_V_TENSOR) {
        uint64_t b, e;
        if (v->u.t->handle >= nbinds || !djn_tref_extent(v->u.t, &b, &e))
            return false;
        if (v->u.t->handle + 1 > *max_slot)
            *max_slot = (uint32_t)v->u.t->handle + 1;
        return true;
    }
    if (v->kind == DJN_V_LIST || v->kind == DJN_V_MAP) { /* a map's keys and values */
        uint32_t n = v->kind == DJN_V_MAP ? 2 * v->len : v->len;
        for (uint32_t i = 0; i < n; i++)
            if (!s_check_refs(&v->u.items[i], nbinds, max_slot, depth + 1))
                return false;
    }
    return true;
}

static djn_status_t s_client_handle(s_parse_t *p, uint64_t h) {
    return djn_handle_is_client(h) ? DJN_OK : s_bad(p, "client handles must be in [1, 2^62)");
}

static djn_status_t s_parse_nodes(s_parse_t *p, const djn_value_t *v, uint32_t nbinds,
                                  djn_graph_req_t *g) {
    if (!s_list(v))
        return s_bad(p, "'nodes' must be an array");
    if (v->len > DJN_MAX_NODES) {
        s_err(p->err, p->errlen, "%s: %u nodes exceed the limit of %u", p->what, v->len,
              DJN_MAX_NODES);
        return DJN_ERR_LIMIT;
    }
    djn_node_t *nodes = djn_arena_alloc(p->a, sizeof(djn_node_t) * (v->len + 1));
    if (!nodes)
        return DJN_ERR_NOMEM;
    for (uint32_t i = 0; i < v->len; i++) {
        const djn_value_t *e = &v->u.items[i];
        djn_node_t *n = &nodes[i];
        uint64_t flags;
        if (!s_list(e) || e->len != 5 || e->u.items[0].kind != DJN_V_STR ||
            e->u.items[1].kind != DJN_V_STR || !s_list(&e->u.items[2]) || !s_list(&e->u.items[3]) ||
            !s_uint(&e->u.items[4], &flags)) {
            s_err(p->err, p->errlen, "%s: node %u must be [op, overload, [args], [outs], flags]",
                  p->what, i);
            return DJN_ERR_PROTO;
        }
        const djn_value_t *op = &e->u.items[0], *ovl = &e->u.items[1];
        if (op->len == 0 || op->len > DJN_MAX_NAME || ovl->len > DJN_MAX_NAME ||
            memchr(op->u.s, 0, op->len) || memchr(ovl->u.s, 0, ovl->len)) {
            s_err(p->err, p->errlen, "%s: node %u has a bad operator name", p->what, i);
            return DJN_ERR_PROTO;
        }
        n->op = op->u.s; /* arena strings are NUL-terminated */
        n->overload = ovl->u.s;
        n->nargs = e->u.items[2].len;
        n->args = e->u.items[2].u.items;
        n->nouts = e->u.items[3].len;
        n->outs = e->u.items[3].u.items;
        n->flags = (uint32_t)flags;
        if (!s_check_refs(&e->u.items[2], nbinds, &g->nslots, 0) ||
            !s_check_refs(&e->u.items[3], nbinds, &g->nslots, 0)) {
            s_err(p->err, p->errlen,
                  "%s: node %u (%s) has a malformed tensor reference or unbound slot", p->what, i,
                  n->op);
            return DJN_ERR_PROTO;
        }
    }
    g->nnodes = v->len;
    g->nodes = nodes;
    return DJN_OK;
}

/* `patch` / `allocs_n`: [gap, delta, gap, delta, ...], position = previous + gap from -1,
 * every gap >= 1 (positions ascend), positions below 2^32; the delta is added to the
 * template's value (wrapping) */
static djn_status_t s_parse_patch(s_parse_t *p, const djn_value_t *v, const char *bad,
                                  const djn_sym_patch_t **out, uint32_t *n) {
    if (!s_list(v) || v->len % 2)
        return s_bad(p, bad);
    djn_sym_patch_t *pt = djn_arena_alloc(p->a, sizeof(djn_sym_patch_t) * (v->len / 2 + 1));
    if (!pt)
        return DJN_ERR_NOMEM;
    int64_t pos = -1;
    for (uint32_t i = 0; i < v->len / 2; i++) {
        const djn_value_t *gap = &v->u.items[2 * i], *val = &v->u.items[2 * i + 1];
        if (gap->kind != DJN_V_INT || val->kind != DJN_V_INT || gap->u.i < 1 ||
            gap->u.i > (int64_t)UINT32_MAX - pos)
            return s_bad(p, bad);
        pos += gap->u.i;
        pt[i] = (djn_sym_patch_t){(uint32_t)pos, val->u.i};
    }
    *out = pt;
    *n = v->len / 2;
    return DJN_OK;
}

/* `binds_d` / `allocs_d` / `frees_d`: [count, delta, count, delta, ...], count >= 1; a nil
 * delta repeats the delta of the run two before (runs often alternate 0 and one shift) */
static djn_status_t s_parse_runs(s_parse_t *p, const djn_value_t *v, const char *bad,
                                 const djn_sym_run_t **out, uint32_t *n) {
    if (!s_list(v) || v->len % 2)
        return s_bad(p, bad);
    djn_sym_run_t *r = djn_arena_alloc(p->a, sizeof(djn_sym_run_t) * (v->len / 2 + 1));
    if (!r)
        return DJN_ERR_NOMEM;
    for (uint32_t i = 0; i < v->len / 2; i++) {
        const djn_value_t *c = &v->u.items[2 * i], *d = &v->u.items[2 * i + 1];
        bool again = d->kind == DJN_V_NONE && i >= 2; /* nil: the delta of the run two before */
        if (c->kind != DJN_V_INT || (d->kind != DJN_V_INT && !again) || c->u.i < 1)
            return s_bad(p, bad);
        r[i] = (djn_sym_run_t){(uint64_t)c->u.i, again ? r[i - 2].delta : d->u.i};
    }
    *out = r;
    *n = v->len / 2;
    return DJN_OK;
}

/* The template fields of a GRAPH_CACHED (7.4); the server expands them against the cached
 * template after the lookup. */
static djn_status_t s_parse_tpl(s_parse_t *p, const djn_value_t *body, djn_graph_req_t *g) {
    djn_status_t st;
    const djn_value_t *v;
    if ((v = djn_value_get(body, "tpl")) != NULL && (!s_uint(v, &g->tpl) || !g->tpl))
        return s_bad(p, "'tpl' must be a non-zero integer");
    if ((v = djn_value_get(body, "patch")) != NULL &&
        (st = s_parse_patch(p, v, "'patch' must be [gap, value] integer pairs with gaps >= 1",
                            &g->patch, &g->npatch)) != DJN_OK)
        return st;
    if ((v = djn_value_get(body, "allocs_n")) != NULL &&
        (st = s_parse_patch(p, v, "'allocs_n' must be [gap, value] integer pairs with gaps >= 1",
                            &g->allocs_n, &g->nallocs_n)) != DJN_OK)
        return st;
    struct {
        const char *key, *plain, *bad;
        const djn_sym_run_t **runs;
        uint32_t *n;
        bool *has;
    } f[3] = {
        {"binds_d", "binds", "'binds_d' must be [count, delta] integer pairs with counts >= 1",
         &g->binds_d, &g->nbinds_d, &g->has_binds_d},
        {"allocs_d", "allocs", "'allocs_d' must be [count, delta] integer pairs with counts >= 1",
         &g->allocs_d, &g->nallocs_d, &g->has_allocs_d},
        {"frees_d", "frees", "'frees_d' must be [count, delta] integer pairs with counts >= 1",
         &g->frees_d, &g->nfrees_d, &g->has_frees_d},
    };
    for (int i = 0; i < 3; i++) {
        if ((v = djn_value_get(body, f[i].key)) == NULL)
            continue;
        if ((st = s_parse_runs(p, v, f[i].bad, f[i].runs, f[i].n)) != DJN_OK)
            return st;
        if (djn_value_get(body, f[i].plain)) {
            s_err(p->err, p->errlen, "%s: '%s' and '%s' exclude each other", p->what, f[i].plain,
                  f[i].key);
            return DJN_ERR_PROTO;
        }
        *f[i].has = true;
    }
    if ((v = djn_value_get(body, "pal")) != NULL) {
        if (!s_list(v) || v->len > DJN_SYM_MAX_CLASSES)
            return s_bad(p, "'pal' must be an array of at most 4096 integers");
        int64_t *pal = djn_arena_alloc(p->a, sizeof(int64_t) * (v->len + 1));
        if (!pal)
            return DJN_ERR_NOMEM;
        for (uint32_t i = 0; i < v->len; i++) {
            if (v->u.items[i].kind != DJN_V_INT)
                return s_bad(p, "'pal' must be an array of at most 4096 integers");
            pal[i] = v->u.items[i].u.i;
        }
        g->pal = pal;
        g->npal = v->len;
        const djn_value_t *pat = djn_value_get(body, "pat"), *pid = djn_value_get(body, "pid");
        if (!!pat == !!pid)
            return s_bad(p, "'pal' needs exactly one of 'pat' and 'pid'");
        if (pid && (!s_uint(pid, &g->pid) || !g->pid))
            return s_bad(p, "'pid' must be a non-zero integer");
        if (pat) {
            if ((st = s_parse_patch(p, pat,
                                    "'pat' must be [gap, class] integer pairs with gaps >= 1",
                                    &g->pat, &g->npat)) != DJN_OK)
                return st;
            for (uint32_t i = 0; i < g->npat; i++)
                if (g->pat[i].val < 0 || g->pat[i].val >= (int64_t)g->npal)
                    return s_bad(p, "'pat' names a class 'pal' does not have");
            g->has_pat = true;
        }
        if (g->npatch || g->nallocs_n || g->has_binds_d || djn_value_get(body, "binds") ||
            djn_value_get(body, "allocs"))
            return s_bad(p, "'pal' excludes 'patch', 'allocs_n', 'binds', 'binds_d' and 'allocs'");
    } else if (djn_value_get(body, "pat") || djn_value_get(body, "pid")) {
        return s_bad(p, "'pat' and 'pid' need 'pal'");
    }
    bool compact = g->npatch || g->nallocs_n || g->has_binds_d || g->has_allocs_d ||
                   g->has_frees_d || g->has_pat;
    if (compact && !g->tpl)
        return s_bad(p, "'patch', 'allocs_n', 'pat' and the '_d' fields need 'tpl'");
    if (g->nallocs_n && !g->has_allocs_d)
        return s_bad(p, "'allocs_n' needs 'allocs_d'");
    return DJN_OK;
}

static djn_status_t s_parse_graph(s_parse_t *p, const djn_value_t *body, djn_graph_req_t *g) {
    uint64_t u;
    djn_status_t st;
    const djn_value_t *v = djn_value_get(body, "dev");
    g->device = 0;
    if (v) {
        if (!s_uint(v, &u) || u >= DJN_MAX_DEVICES)
            return s_bad(p, "'dev' must be a device index");
        g->device = (uint32_t)u;
    }
    g->seed = -1;
    if ((v = djn_value_get(body, "seed")) != NULL && v->kind != DJN_V_NONE) {
        if (v->kind != DJN_V_INT)
            return s_bad(p, "'seed' must be an integer");
        g->seed = v->u.i & INT64_MAX;
    }
    uint32_t nbinds = 0;
    if ((v = djn_value_get(body, "binds")) != NULL) {
        if (!s_list(v))
            return s_bad(p, "'binds' must be an array");
        uint64_t *binds = djn_arena_alloc(p->a, sizeof(uint64_t) * (v->len + 1));
        if (!binds)
            return DJN_ERR_NOMEM;
        for (uint32_t i = 0; i < v->len; i++)
            if (!s_uint(&v->u.items[i], &binds[i]) || binds[i] == 0)
                return s_bad(p, "'binds' must hold non-zero handles");
        nbinds = v->len;
        g->binds = binds;
    }
    g->nbinds = nbinds;
    if ((v = djn_value_get(body, "fp")) != NULL) {
        if (!s_list(v) || v->len != 2 || !s_uint(&v->u.items[0], &g->fp[0]) ||
            !s_uint(&v->u.items[1], &g->fp[1]))
            return s_bad(p, "'fp' must be [hi, lo]");
    }
    if ((v = djn_value_get(body, "allocs")) != NULL) {
        if (!s_list(v))
            return s_bad(p, "'allocs' must be an array");
        djn_alloc_t *allocs = djn_arena_alloc(p->a, sizeof(djn_alloc_t) * (v->len + 1));
        if (!allocs)
            return DJN_ERR_NOMEM;
        for (uint32_t i = 0; i < v->len; i++) {
            const djn_value_t *e = &v->u.items[i];
            if (!s_list(e) || e->len != 2 || !s_uint(&e->u.items[0], &allocs[i].handle) ||
                !s_uint(&e->u.items[1], &allocs[i].nbytes))
                return s_bad(p, "each alloc must be [handle, nbytes]");
            if ((st = s_client_handle(p, allocs[i].handle)) != DJN_OK)
                return st;
        }
        g->nallocs = v->len;
        g->allocs = allocs;
    }
    if ((v = djn_value_get(body, "uploads")) != NULL) {
        if (!s_list(v))
            return s_bad(p, "'uploads' must be an array");
        djn_upload_t *ups = djn_arena_alloc(p->a, sizeof(djn_upload_t) * (v->len + 1));
        if (!ups)
            return DJN_ERR_NOMEM;
        for (uint32_t i = 0; i < v->len; i++) {
            const djn_value_t *e = &v->u.items[i];
            if (!s_list(e) || (e->len != 2 && e->len != 3 && e->len != 5) ||
                !s_uint(&e->u.items[0], &ups[i].handle) || !s_uint(&e->u.items[1], &u) ||
                (e->len == 5 &&
                 (e->u.items[2].kind != DJN_V_BOOL || !s_uint(&e->u.items[3], &ups[i].offset) ||
                  !s_uint(&e->u.items[4], &ups[i].total))))
                return s_bad(p, "each upload must be [handle, frame], [handle, frame, text] or "
                                "[handle, frame, text, offset, total]");
            ups[i].text = e->len >= 3 && e->u.items[2].kind == DJN_V_BOOL && e->u.items[2].u.b;
            ups[i].chunk = e->len == 5;
            if ((st = s_client_handle(p, ups[i].handle)) != DJN_OK)
                return st;
            if (u < 1 || u > p->nframes) {
                s_err(p->err, p->errlen, "%s: upload names frame %llu but the message has %u",
                      p->what, (unsigned long long)u, p->nframes);
                return DJN_ERR_PROTO;
            }
            ups[i].frame = (uint32_t)u;
        }
        g->nuploads = v->len;
        g->uploads = ups;
    }
    if ((v = djn_value_get(body, "nodes")) != NULL &&
        (st = s_parse_nodes(p, v, nbinds, g)) != DJN_OK)
        return st;
    if ((v = djn_value_get(body, "frees")) != NULL) {
        if (!s_list(v))
            return s_bad(p, "'frees' must be an array");
        uint64_t *frees = djn_arena_alloc(p->a, sizeof(uint64_t) * (v->len + 1));
        if (!frees)
            return DJN_ERR_NOMEM;
        for (uint32_t i = 0; i < v->len; i++)
            if (!s_uint(&v->u.items[i], &frees[i]))
                return s_bad(p, "'frees' must hold handles");
        g->nfrees = v->len;
        g->frees = frees;
    }
    if ((v = djn_value_get(body, "fetch")) != NULL) {
        if (!s_list(v))
            return s_bad(p, "'fetch' must be an array");
        djn_fetch_t *fetches = djn_arena_alloc(p->a, sizeof(djn_fetch_t) * (v->len + 1));
        if (!fetches)
            return DJN_ERR_NOMEM;
        for (uint32_t i = 0; i < v->len; i++) {
            const djn_value_t *e = &v->u.items[i];
            djn_fetch_t *f = &fetches[i];
            if (!s_list(e) || e->len != 3 || !s_uint(&e->u.items[0], &f->handle) ||
                !s_uint(&e->u.items[1], &f->offset) || !s_uint(&e->u.items[2], &f->nbytes))
                return s_bad(p, "each fetch must be [handle, offset, nbytes]");
        }
        g->nfetches = v->len;
        g->fetches = fetches;
    }
    g->sem_tpl = !djn_value_get(body, "qos") && !djn_value_get(body, "phase") &&
                 !djn_value_get(body, "life");
    if ((v = djn_value_get(body, "qos")) != NULL) {
        if (!s_uint(v, &u) || u > DJN_QOS_MAX)
            return s_bad(p, "'qos' must be 0 (auto), 1 (realtime), 2 (interactive) or 3 (batch)");
        g->qos = (uint8_t)u;
    }
    if ((v = djn_value_get(body, "phase")) != NULL) {
        if (!s_uint(v, &u) || u > DJN_PHASE_MAX)
            return s_bad(p, "'phase' must be 0 (none), 1 (prefill), 2 (decode) or 3 (training)");
        g->phase = (uint8_t)u;
    }
    if ((v = djn_value_get(body, "life")) != NULL) {
        uint64_t kept, transient;
        if (!s_list(v) || v->len != 2 || !s_uint(&v->u.items[0], &kept) ||
            !s_uint(&v->u.items[1], &transient) || kept > DJN_MAX_NODES ||
            transient > DJN_MAX_NODES - kept)
            return s_bad(p, "'life' must be [kept, transient] node counts");
        g->life_kept = (uint32_t)kept;
        g->life_transient = (uint32_t)transient;
    }
    if ((v = djn_value_get(body, "resume")) != NULL) {
        if (v->kind != DJN_V_BOOL)
            return s_bad(p, "'resume' must be a boolean");
        g->resume = v->u.b;
    }
    return s_parse_tpl(p, body, g);
}

static djn_status_t s_parse_have(s_parse_t *p, const djn_value_t *body, djn_have_req_t *h) {
    uint64_t u;
    const djn_value_t *dev = djn_value_get(body, "dev"), *items = djn_value_get(body, "items");
    if (!s_uint(dev, &u) || u >= DJN_MAX_DEVICES || !s_list(items))
        return s_bad(p, "needs 'dev' (a device index) and 'items' (an array)");
    h->device = (uint32_t)u;
    djn_have_item_t *out = djn_arena_alloc(p->a, sizeof(djn_have_item_t) * (items->len + 1));
    if (!out)
        return DJN_ERR_NOMEM;
    for (uint32_t i = 0; i < items->len; i++) {
        const djn_value_t *e = &items->u.items[i];
        if (!s_list(e) || e->len != 4 || !s_uint(&e->u.items[0], &out[i].handle) ||
            !s_uint(&e->u.items[1], &out[i].hi) || !s_uint(&e->u.items[2], &out[i].lo) ||
            !s_uint(&e->u.items[3], &out[i].nbytes))
            return s_bad(p, "each item must be [handle, hash_hi, hash_lo, nbytes]");
        djn_status_t st = s_client_handle(p, out[i].handle);
        if (st != DJN_OK)
            return st;
    }
    h->nitems = items->len;
    h->items = out;
    return DJN_OK;
}

static bool s_str(const djn_value_t *v, uint32_t maxlen) {
    return v && v->kind == DJN_V_STR && v->len > 0 && v->len <= maxlen &&
           strlen(v->u.s) == v->len; /* no NUL inside: a name means what it shows */
}

static djn_status_t s_parse_load(s_parse_t *p, const djn_value_t *body, djn_load_req_t *l) {
    uint64_t u;
    const djn_value_t *dev = djn_value_get(body, "dev"), *name = djn_value_get(body, "name"),
                      *binds = djn_value_get(body, "binds");
    if (!s_uint(dev, &u) || u >= DJN_MAX_DEVICES || !s_str(name, DJN_MAX_NAME))
        return s_bad(p, "needs 'dev' (a device index) and 'name' (a model name of at most 256 "
                        "bytes)");
    l->device = (uint32_t)u;
    l->name = name->u.s;
    if (!binds)
        return DJN_OK;
    if (!s_list(binds))
        return s_bad(p, "'binds' must be an array");
    djn_model_bind_t *out = djn_arena_alloc(p->a, sizeof(djn_model_bind_t) * (binds->len + 1));
    if (!out)
        return DJN_ERR_NOMEM;
    for (uint32_t i = 0; i < binds->len; i++) {
        const djn_value_t *e = &binds->u.items[i];
        if (!s_list(e) || e->len != 2 || !s_str(&e->u.items[0], DJN_MAX_TENSOR_NAME) ||
            !s_uint(&e->u.items[1], &out[i].handle))
            return s_bad(p, "each bind must be [tensor name, handle]");
        out[i].name = e->u.items[0].u.s;
        djn_status_t st = s_client_handle(p, out[i].handle);
        if (st != DJN_OK)
            return st;
    }
    l->nbinds = binds->len;
    l->binds = out;
    return DJN_OK;
}

static djn_status_t s_parse_place(s_parse_t *p, const djn_value_t *body, djn_place_req_t *r) {
    const djn_value_t *model = djn_value_get(body, "model"),
                      *hashes = djn_value_get(body, "hashes"),
                      *probe = djn_value_get(body, "probe");
    if (model && !s_str(model, DJN_MAX_NAME))
        return s_bad(p, "'model' must be a model name of at most 256 bytes");
    r->model = model ? model->u.s : NULL;
    if (probe && probe->kind != DJN_V_BOOL)
        return s_bad(p, "'probe' must be true or false");
    r->probe = probe && probe->u.b;
    if (!hashes)
        return DJN_OK;
    if (!s_list(hashes) || hashes->len > DJN_MAX_PLACE_HASHES)
        return s_bad(p, "'hashes' must be an array of at most 64 [hash_hi, hash_lo, nbytes]");
    djn_place_hash_t *out = djn_arena_alloc(p->a, sizeof(djn_place_hash_t) * (hashes->len + 1));
    if (!out)
        return DJN_ERR_NOMEM;
    for (uint32_t i = 0; i < hashes->len; i++) {
        const djn_value_t *e = &hashes->u.items[i];
        if (!s_list(e) || e->len != 3 || !s_uint(&e->u.items[0], &out[i].hi) ||
            !s_uint(&e->u.items[1], &out[i].lo) || !s_uint(&e->u.items[2], &out[i].nbytes))
            return s_bad(p, "'hashes' must be an array of at most 64 [hash_hi, hash_lo, nbytes]");
    }
    r->nhashes = hashes->len;
    r->hashes = out;
    return DJN_OK;
}

djn_status_t djn_msg_decode(const void *buf, size_t len, uint32_t nframes, djn_msg_t **out,
                            uint64_t *seq_out, char *err, size_t errlen) {
    *out = NULL;
    if (nframes > DJN_MAX_FRAMES) {
        s_err(err, errlen, "message has %u frames, the limit is %u", nframes, DJN_MAX_FRAMES);
        return DJN_ERR_LIMIT;
    }
    djn_arena_t *a = djn_arena_new();
    if (!a) {
        s_err(err, errlen, "out of host memory decoding the message");
        return DJN_ERR_NOMEM;
    }
    djn_value_t *root = NULL;
    djn_status_t st = djn_decode_value(buf, len, a, &root, err, errlen);
    if (st != DJN_OK)
        goto fail;
    uint64_t type, sid, seq;
    if (seq_out && s_uint(djn_value_get(root, "seq"), &seq))
        *seq_out = seq;
    if (root->kind != DJN_V_MAP || !s_uint(djn_value_get(root, "type"), &type) ||
        !s_uint(djn_value_get(root, "sid"), &sid) || !s_uint(djn_value_get(root, "seq"), &seq)) {
        s_err(err, errlen, "header must be a map with integer 'type', 'sid' and 'seq'");
        st = DJN_ERR_PROTO;
        goto fail;
    }
    const djn_value_t *body = djn_value_get(root, "body");
    if (!body || body->kind != DJN_V_MAP) {
        s_err(err, errlen, "header 'body' must be a map");
        st = DJN_ERR_PROTO;
        goto fail;
    }
    djn_msg_t *m = djn_arena_alloc(a, sizeof(*m));
    if (!m) {
        st = DJN_ERR_NOMEM;
        goto fail;
    }
    m->type = (uint8_t)type;
    m->sid = sid;
    m->seq = seq;
    m->arena = a;
    s_parse_t p = {a, nframes, "GRAPH", err, errlen};
    switch (type) {
    case DJN_MSG_HELLO: {
        uint64_t ver;
        if (!s_uint(djn_value_get(body, "version"), &ver) || ver > UINT32_MAX) {
            s_err(err, errlen, "HELLO needs an integer 'version'");
            st = DJN_ERR_PROTO;
            goto fail;
        }
        m->u.hello.version = (uint32_t)ver;
        const djn_value_t *c = djn_value_get(body, "client");
        m->u.hello.client = c && c->kind == DJN_V_STR ? c->u.s : "";
        break;
    }
    case DJN_MSG_GRAPH:
    case DJN_MSG_GRAPH_CACHED:
    case DJN_MSG_FETCH:
        st = s_parse_graph(&p, body, &m->u.graph);
        if (st != DJN_OK)
            goto fail;
        break;
    case DJN_MSG_HAVE:
        p.what = "HAVE";
        st = s_parse_have(&p, body, &m->u.have);
        if (st != DJN_OK)
            goto fail;
        break;
    case DJN_MSG_LOAD_MODEL:
        p.what = "LOAD_MODEL";
        st = s_parse_load(&p, body, &m->u.load);
        if (st != DJN_OK)
            goto fail;
        break;
    case DJN_MSG_PLACE:
        p.what = "PLACE";
        st = s_parse_place(&p, body, &m->u.place);
        if (st != DJN_OK)
            goto fail;
        break;
    case DJN_MSG_HEARTBEAT:
    case DJN_MSG_STATS:
    case DJN_MSG_CLOSE:
        break;
    default:
        s_err(err, errlen, "unknown message type %llu", (unsigned long long)type);
        st = DJN_ERR_PROTO;
        goto fail;
    }
    *out = m;
    return DJN_OK;
fail:
    if (st == DJN_ERR_NOMEM)
        s_err(err, errlen, "out of host memory decoding the message");
    djn_arena_destroy(&a);
    return st;
}

void djn_msg_free(djn_msg_t **msg_p) {
    if (!msg_p || !*msg_p)
        return;
    djn_arena_t *a = (*msg_p)->arena;
    djn_arena_destroy(&a);
    *msg_p = NULL;
}

/* ------------------------------------------------------------------ requests: encode */

void djn_hello_req_encode(djn_buf_t *b, const djn_msg_hdr_t *hdr, const djn_hello_req_t *r) {
    s_header(b, hdr);
    djn_enc_map(b, 2);
    s_kv_uint(b, "version", r->version);
    djn_enc_cstr(b, "client");
    djn_enc_cstr(b, r->client ? r->client : "");
}

void djn_node_enc_begin(djn_buf_t *b, const char *op, const char *overload, uint32_t nargs) {
    djn_enc_array(b, 5);
    djn_enc_cstr(b, op);
    djn_enc_cstr(b, overload);
    djn_enc_array(b, nargs);
}

void djn_node_enc_outs(djn_buf_t *b, uint32_t nouts) {
    djn_enc_array(b, nouts);
}

void djn_node_enc_end(djn_buf_t *b, uint32_t flags) {
    djn_enc_uint(b, flags);
}

void djn_node_encode(djn_buf_t *b, const djn_node_t *n) {
    djn_node_enc_begin(b, n->op, n->overload, n->nargs);
    for (uint32_t i = 0; i < n->nargs; i++)
        djn_enc_value(b, &n->args[i]);
    djn_node_enc_outs(b, n->nouts);
    for (uint32_t i = 0; i < n->nouts; i++)
        djn_enc_value(b, &n->outs[i]);
    djn_node_enc_end(b, n->flags);
}

/* [handle, frame], [handle, frame, true] or, for a chunk, [handle, frame, text, offset,
 * total] */
static void s_enc_upload(djn_buf_t *b, const djn_upload_t *u) {
    djn_enc_array(b, u->chunk ? 5 : u->text ? 3 : 2);
    djn_enc_uint(b, u->handle);
    djn_enc_uint(b, u->frame);
    if (u->text || u->chunk)
        djn_enc_bool(b, u->text);
    if (u->chunk) {
        djn_enc_uint(b, u->offset);
        djn_enc_uint(b, u->total);
    }
}

static void s_enc_pairs(djn_buf_t *b, const char *k, const void *items, uint32_t n, bool runs) {
    djn_enc_cstr(b, k);
    djn_enc_array(b, 2 * n);
    int64_t pos = -1;
    for (uint32_t i = 0; i < n; i++) {
        if (runs) {
            const djn_sym_run_t *r = (const djn_sym_run_t *)items + i;
            djn_enc_uint(b, r->count);
            if (i >= 2 && r->delta == r[-2].delta && (r->delta > 15 || r->delta < -15))
                djn_enc_nil(b); /* the delta of the run two before: one byte */
            else
                djn_enc_int(b, r->delta);
        } else {
            const djn_sym_patch_t *pt = (const djn_sym_patch_t *)items + i;
            djn_enc_uint(b, (uint64_t)((int64_t)pt->pos - pos));
            djn_enc_int(b, pt->val);
            pos = pt->pos;
        }
    }
}

/* The plain list fields of a GRAPH (both encoders write them alike). */
static void s_enc_u64s(djn_buf_t *b, const char *k, const uint64_t *v, uint32_t n) {
    djn_enc_cstr(b, k);
    djn_enc_array(b, n);
    for (uint32_t i = 0; i < n; i++)
        djn_enc_uint(b, v[i]);
}

static void s_enc_allocs(djn_buf_t *b, const djn_graph_req_t *r) {
    djn_enc_cstr(b, "allocs");
    djn_enc_array(b, r->nallocs);
    for (uint32_t i = 0; i < r->nallocs; i++) {
        djn_enc_array(b, 2);
        djn_enc_uint(b, r->allocs[i].handle);
        djn_enc_uint(b, r->allocs[i].nbytes);
    }
}

static void s_enc_uploads(djn_buf_t *b, const djn_graph_req_t *r) {
    djn_enc_cstr(b, "uploads");
    djn_enc_array(b, r->nuploads);
    for (uint32_t i = 0; i < r->nuploads; i++)
        s_enc_upload(b, &r->uploads[i]);
}

static void s_enc_fetches(djn_buf_t *b, const djn_graph_req_t *r) {
    djn_enc_cstr(b, "fetch");
    djn_enc_array(b, r->nfetches);
    for (uint32_t i = 0; i < r->nfetches; i++) {
        djn_enc_array(b, 3);
        djn_enc_uint(b, r->fetches[i].handle);
        djn_enc_uint(b, r->fetches[i].offset);
        djn_enc_uint(b, r->fetches[i].nbytes);
    }
}

static void s_enc_fp(djn_buf_t *b, const djn_graph_req_t *r) {
    djn_enc_cstr(b, "fp");
    djn_enc_array(b, 2);
    djn_enc_uint(b, r->fp[0]);
    djn_enc_uint(b, r->fp[1]);
}

/* The fragment's semantics (`qos`, `phase`, `life`): three keys, or none when all are 0. */
static bool s_has_sem(const djn_graph_req_t *r) {
    return r->qos || r->phase || r->life_kept || r->life_transient;
}

static void s_enc_sem(djn_buf_t *b, const djn_graph_req_t *r, bool sem) {
    if (!sem)
        return;
    s_kv_uint(b, "qos", r->qos);
    s_kv_uint(b, "phase", r->phase);
    djn_enc_cstr(b, "life");
    djn_enc_array(b, 2);
    djn_enc_uint(b, r->life_kept);
    djn_enc_uint(b, r->life_transient);
}

static void s_enc_resume(djn_buf_t *b, const djn_graph_req_t *r) {
    if (!r->resume)
        return;
    djn_enc_cstr(b, "resume");
    djn_enc_bool(b, true);
}

/* A GRAPH_CACHED against a template (r->tpl != 0): only the fields it needs, compact ones
 * where set; dev 0, no seed and empty lists are left out (all fields are optional). */
static void s_graph_cached_compact(djn_buf_t *b, const djn_graph_req_t *r) {
    bool pid_only = r->pal && !r->has_pat; /* the kept pattern: its template is implied */
    uint32_t n = 1 + (r->device != 0) + (r->seed >= 0) + (r->nbinds || r->has_binds_d) +
                 (r->nallocs || r->has_allocs_d) + (r->nallocs_n != 0) + (r->nuploads != 0) +
                 (r->nfrees || r->has_frees_d) + (r->nfetches != 0) + (r->npatch != 0) +
                 (r->pal ? 2 : 0) + !pid_only + (r->sem_tpl ? 0 : 3) + r->resume;
    djn_enc_map(b, n);
    if (r->device)
        s_kv_uint(b, "dev", r->device);
    if (r->seed >= 0) {
        djn_enc_cstr(b, "seed");
        djn_enc_int(b, r->seed);
    }
    if (r->has_binds_d) {
        s_enc_pairs(b, "binds_d", r->binds_d, r->nbinds_d, true);
    } else if (r->nbinds) {
        s_enc_u64s(b, "binds", r->binds, r->nbinds);
    }
    if (r->has_allocs_d) {
        s_enc_pairs(b, "allocs_d", r->allocs_d, r->nallocs_d, true);
        if (r->nallocs_n)
            s_enc_pairs(b, "allocs_n", r->allocs_n, r->nallocs_n, false);
    } else if (r->nallocs) {
        s_enc_allocs(b, r);
    }
    if (r->nuploads) {
        s_enc_uploads(b, r);
    }
    if (r->has_frees_d) {
        s_enc_pairs(b, "frees_d", r->frees_d, r->nfrees_d, true);
    } else if (r->nfrees) {
        s_enc_u64s(b, "frees", r->frees, r->nfrees);
    }
    if (r->nfetches) {
        s_enc_fetches(b, r);
    }
    s_enc_fp(b, r);
    if (!pid_only)
        s_kv_uint(b, "tpl", r->tpl);
    if (r->npatch)
        s_enc_pairs(b, "patch", r->patch, r->npatch, false);
    if (r->pal) {
        djn_enc_cstr(b, "pal");
        djn_enc_array(b, r->npal);
        for (uint32_t i = 0; i < r->npal; i++)
            djn_enc_int(b, r->pal[i]);
        if (r->has_pat)
            s_enc_pairs(b, "pat", r->pat, r->npat, false);
        else
            s_kv_uint(b, "pid", r->pid);
    }
    s_enc_sem(b, r, !r->sem_tpl);
    s_enc_resume(b, r);
}

void djn_graph_req_encode(djn_buf_t *b, const djn_msg_hdr_t *hdr, const djn_graph_req_t *r) {
    bool nodes = hdr->type != DJN_MSG_GRAPH_CACHED;
    s_header(b, hdr);
    if (!nodes && r->tpl) {
        s_graph_cached_compact(b, r);
        return;
    }
    djn_enc_map(b, (nodes ? 9 : 8) + (s_has_sem(r) ? 3 : 0) + r->resume);
    s_kv_uint(b, "dev", r->device);
    djn_enc_cstr(b, "seed");
    if (r->seed >= 0)
        djn_enc_int(b, r->seed);
    else
        djn_enc_nil(b);
    s_enc_u64s(b, "binds", r->binds, r->nbinds);
    s_enc_allocs(b, r);
    s_enc_uploads(b, r);
    if (nodes) {
        djn_enc_cstr(b, "nodes");
        djn_enc_array(b, r->nnodes);
        if (r->nodes_raw)
            djn_buf_raw(b, r->nodes_raw, r->nodes_raw_len);
        else
            for (uint32_t i = 0; i < r->nnodes; i++)
                djn_node_encode(b, &r->nodes[i]);
    }
    s_enc_u64s(b, "frees", r->frees, r->nfrees);
    s_enc_fetches(b, r);
    s_enc_fp(b, r);
    s_enc_sem(b, r, s_has_sem(r));
    s_enc_resume(b, r);
}

void djn_have_req_encode(djn_buf_t *b, const djn_msg_hdr_t *hdr, const djn_have_req_t *r) {
    s_header(b, hdr);
    djn_enc_map(b, 2);
    s_kv_uint(b, "dev", r->device);
    djn_enc_cstr(b, "items");
    djn_enc_array(b, r->nitems);
    for (uint32_t i = 0; i < r->nitems; i++) {
        djn_enc_array(b, 4);
        djn_enc_uint(b, r->items[i].handle);
        djn_enc_uint(b, r->items[i].hi);
        djn_enc_uint(b, r->items[i].lo);
        djn_enc_uint(b, r->items[i].nbytes);
    }
}

void djn_load_req_encode(djn_buf_t *b, const djn_msg_hdr_t *hdr, const djn_load_req_t *r) {
    s_header(b, hdr);
    djn_enc_map(b, r->nbinds ? 3 : 2);
    s_kv_uint(b, "dev", r->device);
    djn_enc_cstr(b, "name");
    djn_enc_cstr(b, r->name ? r->name : "");
    if (!r->nbinds)
        return;
    djn_enc_cstr(b, "binds");
    djn_enc_array(b, r->nbinds);
    for (uint32_t i = 0; i < r->nbinds; i++) {
        djn_enc_array(b, 2);
        djn_enc_cstr(b, r->binds[i].name);
        djn_enc_uint(b, r->binds[i].handle);
    }
}

void djn_place_req_encode(djn_buf_t *b, const djn_msg_hdr_t *hdr, const djn_place_req_t *r) {
    s_header(b, hdr);
    djn_enc_map(b, (r->model != NULL) + (r->nhashes != 0) + r->probe);
    if (r->model) {
        djn_enc_cstr(b, "model");
        djn_enc_cstr(b, r->model);
    }
    if (r->nhashes) {
        djn_enc_cstr(b, "hashes");
        djn_enc_array(b, r->nhashes);
        for (uint32_t i = 0; i < r->nhashes; i++) {
            djn_enc_array(b, 3);
            djn_enc_uint(b, r->hashes[i].hi);
            djn_enc_uint(b, r->hashes[i].lo);
            djn_enc_uint(b, r->hashes[i].nbytes);
        }
    }
    if (r->probe) {
        djn_enc_cstr(b, "probe");
        djn_enc_bool(b, true);
    }
}

void djn_empty_encode(djn_buf_t *b, const djn_msg_hdr_t *hdr) {
    s_header(b, hdr);
    djn_enc_map(b, 0);
}

djn_node_t *djn_nodes_clone(djn_arena_t *a, const djn_node_t *nodes, uint32_t n) {
    djn_node_t *out = djn_arena_alloc(a, sizeof(djn_node_t) * (n ? n : 1));
    if (!out)
        return NULL;
    for (uint32_t i = 0; i < n; i++) {
        const djn_node_t *s = &nodes[i];
        djn_node_t *d = &out[i];
        size_t lo = strlen(s->op) + 1, lv = strlen(s->overload) + 1;
        char *op = djn_arena_alloc(a, lo), *ovl = djn_arena_alloc(a, lv);
        if (!op || !ovl)
            return NULL;
        memcpy(op, s->op, lo);
        memcpy(ovl, s->overload, lv);
        *d = *s;
        d->op = op;
        d->overload = ovl;
        d->args = djn_value_clone(a, s->args, s->nargs);
        d->outs = djn_value_clone(a, s->outs, s->nouts);
        if (!d->args || !d->outs)
            return NULL;
    }
    return out;
}

/* ------------------------------------------------------------------ replies */

djn_status_t djn_reply_decode(const void *buf, size_t len, djn_reply_t **out, char *err,
                              size_t errlen) {
    *out = NULL;
    djn_arena_t *a = djn_arena_new();
    if (!a) {
        s_err(err, errlen, "out of host memory decoding a reply");
        return DJN_ERR_NOMEM;
    }
    djn_value_t *root = NULL;
    djn_status_t st = djn_decode_value(buf, len, a, &root, err, errlen);
    if (st != DJN_OK) {
        djn_arena_destroy(&a);
        return st;
    }
    uint64_t type, sid, seq;
    const djn_value_t *body = djn_value_get(root, "body");
    djn_reply_t *r = djn_arena_alloc(a, sizeof(*r));
    if (!r || !s_uint(djn_value_get(root, "type"), &type) ||
        !s_uint(djn_value_get(root, "sid"), &sid) || !s_uint(djn_value_get(root, "seq"), &seq) ||
        !body || body->kind != DJN_V_MAP || (type != DJN_MSG_REPLY && type != DJN_MSG_ERROR)) {
        s_err(err, errlen, "a reply must be {type: 64|65, sid, seq, body: map}");
        djn_arena_destroy(&a);
        return r ? DJN_ERR_PROTO : DJN_ERR_NOMEM;
    }
    r->type = (uint8_t)type;
    r->sid = sid;
    r->seq = seq;
    r->body = body;
    r->arena = a;
    r->error.node = -1;
    if (type == DJN_MSG_ERROR) {
        const djn_value_t *c = djn_value_get(body, "code"), *m = djn_value_get(body, "msg");
        const djn_value_t *n = djn_value_get(body, "node"), *op = djn_value_get(body, "op");
        uint64_t code = DJN_ERR_OP;
        s_uint(c, &code);
        r->error.code = code == DJN_OK ? DJN_ERR_OP : (djn_status_t)code;
        r->error.msg = m && m->kind == DJN_V_STR ? m->u.s : djn_status_str(r->error.code);
        if (n && n->kind == DJN_V_INT)
            r->error.node = n->u.i;
        r->error.op = op && op->kind == DJN_V_STR ? op->u.s : "";
    }
    *out = r;
    return DJN_OK;
}

void djn_reply_free(djn_reply_t **r_p) {
    if (!r_p || !*r_p)
        return;
    djn_arena_t *a = (*r_p)->arena;
    djn_arena_destroy(&a);
    *r_p = NULL;
}

static djn_status_t s_rep_bad(char *err, size_t errlen, const char *what) {
    s_err(err, errlen, "malformed reply: %s", what);
    return DJN_ERR_PROTO;
}

djn_status_t djn_hello_rep_parse(const djn_reply_t *r, djn_hello_rep_t *out, char *err,
                                 size_t errlen) {
    memset(out, 0, sizeof(*out));
    uint64_t v;
    const djn_value_t *devs = djn_value_get(r->body, "devices");
    if (!s_uint(djn_value_get(r->body, "sid"), &out->sid) || !out->sid || !s_list(devs))
        return s_rep_bad(err, errlen, "HELLO needs 'sid' and 'devices'");
    if (s_uint(djn_value_get(r->body, "version"), &v))
        out->version = (uint32_t)v;
    const djn_value_t *srv = djn_value_get(r->body, "server");
    out->server = srv && srv->kind == DJN_V_STR ? srv->u.s : "";
    s_uint(djn_value_get(r->body, "lease_ms"), &out->lease_ms);
    s_uint(djn_value_get(r->body, "heartbeat_ms"), &out->heartbeat_ms);
    const char **names = djn_arena_alloc(r->arena, sizeof(char *) * (devs->len + 1));
    if (!names)
        return DJN_ERR_NOMEM;
    for (uint32_t i = 0; i < devs->len; i++) {
        if (devs->u.items[i].kind != DJN_V_STR)
            return s_rep_bad(err, errlen, "HELLO 'devices' must hold names");
        names[i] = devs->u.items[i].u.s;
    }
    out->ndevices = devs->len;
    out->devices = names;
    return DJN_OK;
}

void djn_hello_rep_encode(djn_buf_t *b, const djn_msg_hdr_t *hdr, const djn_hello_rep_t *r) {
    s_header(b, hdr);
    djn_enc_map(b, 6);
    s_kv_uint(b, "sid", r->sid);
    s_kv_uint(b, "version", r->version);
    djn_enc_cstr(b, "server");
    djn_enc_cstr(b, r->server ? r->server : "");
    s_kv_uint(b, "lease_ms", r->lease_ms);
    s_kv_uint(b, "heartbeat_ms", r->heartbeat_ms);
    djn_enc_cstr(b, "devices");
    djn_enc_array(b, r->ndevices);
    for (uint32_t i = 0; i < r->ndevices; i++)
        djn_enc_cstr(b, r->devices[i]);
}

djn_status_t djn_graph_rep_parse(const djn_reply_t *r, djn_graph_rep_t *out, char *err,
                                 size_t errlen) {
    memset(out, 0, sizeof(*out));
    uint64_t n;
    if (!s_uint(djn_value_get(r->body, "fetched"), &n) || n > DJN_MAX_FRAMES)
        return s_rep_bad(err, errlen, "GRAPH needs 'fetched'");
    out->fetched = (uint32_t)n;
    out->dyn = djn_value_get(r->body, "dyn");
    return DJN_OK;
}

void djn_graph_rep_encode(djn_buf_t *b, const djn_msg_hdr_t *hdr, const djn_graph_rep_t *r) {
    bool dyn = r->dyn_raw_len || r->dyn;
    s_header(b, hdr);
    djn_enc_map(b, dyn ? 2 : 1);
    s_kv_uint(b, "fetched", r->fetched);
    if (dyn) {
        djn_enc_cstr(b, "dyn");
        if (r->dyn_raw_len)
            djn_buf_raw(b, r->dyn_raw, r->dyn_raw_len);
        else
            djn_enc_value(b, r->dyn);
    }
}

djn_status_t djn_have_rep_parse(const djn_reply_t *r, djn_have_rep_t *out, char *err,
                                size_t errlen) {
    memset(out, 0, sizeof(*out));
    const djn_value_t *m = djn_value_get(r->body, "missing");
    if (!s_list(m))
        return s_rep_bad(err, errlen, "HAVE needs 'missing'");
    uint32_t *idx = djn_arena_alloc(r->arena, sizeof(uint32_t) * (m->len + 1));
    if (!idx)
        return DJN_ERR_NOMEM;
    for (uint32_t i = 0; i < m->len; i++) {
        uint64_t v;
        if (!s_uint(&m->u.items[i], &v) || v > UINT32_MAX)
            return s_rep_bad(err, errlen, "HAVE 'missing' must hold item indexes");
        idx[i] = (uint32_t)v;
    }
    out->nmissing = m->len;
    out->missing = idx;
    return DJN_OK;
}

void djn_have_rep_encode(djn_buf_t *b, const djn_msg_hdr_t *hdr, const djn_have_rep_t *r) {
    s_header(b, hdr);
    djn_enc_map(b, 1);
    djn_enc_cstr(b, "missing");
    djn_enc_array(b, r->nmissing);
    for (uint32_t i = 0; i < r->nmissing; i++)
        djn_enc_uint(b, r->missing[i]);
}

djn_status_t djn_load_rep_parse(const djn_reply_t *r, djn_load_rep_t *out, char *err,
                                size_t errlen) {
    memset(out, 0, sizeof(*out));
    const djn_value_t *cfg = djn_value_get(r->body, "config"),
                      *ts = djn_value_get(r->body, "tensors");
    uint64_t u;
    if (!cfg || cfg->kind != DJN_V_STR || !s_list(ts))
        return s_rep_bad(err, errlen, "LOAD_MODEL needs 'config' and 'tensors'");
    out->config = cfg->u.s;
    djn_model_tensor_t *t = djn_arena_alloc(r->arena, sizeof(*t) * (ts->len + 1));
    if (!t)
        return DJN_ERR_NOMEM;
    for (uint32_t i = 0; i < ts->len; i++) {
        const djn_value_t *e = &ts->u.items[i];
        if (!s_list(e) || e->len != 3 || !s_str(&e->u.items[0], DJN_MAX_TENSOR_NAME) ||
            !s_uint(&e->u.items[1], &u) || !djn_dtype_size((uint32_t)u) || u > 255 ||
            !s_list(&e->u.items[2]) || e->u.items[2].len > DJN_MAX_DIMS)
            return s_rep_bad(err, errlen, "LOAD_MODEL tensors must be [name, dtype, [sizes]]");
        t[i].name = e->u.items[0].u.s;
        t[i].dtype = (uint8_t)u;
        t[i].ndim = (uint8_t)e->u.items[2].len;
        for (uint32_t d = 0; d < t[i].ndim; d++) {
            const djn_value_t *x = &e->u.items[2].u.items[d];
            if (x->kind != DJN_V_INT || x->u.i < 0)
                return s_rep_bad(err, errlen, "LOAD_MODEL sizes must be non-negative integers");
            t[i].shape[d] = x->u.i;
        }
    }
    out->ntensors = ts->len;
    out->tensors = t;
    if (s_uint(djn_value_get(r->body, "bound"), &u) && u <= UINT32_MAX)
        out->bound = (uint32_t)u;
    s_uint(djn_value_get(r->body, "read_bytes"), &out->read_bytes);
    return DJN_OK;
}

void djn_load_rep_encode(djn_buf_t *b, const djn_msg_hdr_t *hdr, const djn_load_rep_t *r) {
    s_header(b, hdr);
    djn_enc_map(b, 4);
    djn_enc_cstr(b, "config");
    djn_enc_cstr(b, r->config ? r->config : "");
    djn_enc_cstr(b, "tensors");
    djn_enc_array(b, r->ntensors);
    for (uint32_t i = 0; i < r->ntensors; i++) {
        const djn_model_tensor_t *t = &r->tensors[i];
        djn_enc_array(b, 3);
        djn_enc_cstr(b, t->name);
        djn_enc_uint(b, t->dtype);
        djn_enc_array(b, t->ndim);
        for (uint32_t d = 0; d < t->ndim; d++)
            djn_enc_int(b, t->shape[d]);
    }
    s_kv_uint(b, "bound", r->bound);
    s_kv_uint(b, "read_bytes", r->read_bytes);
}

djn_status_t djn_place_rep_parse(const djn_reply_t *r, djn_place_rep_t *out, char *err,
                                 size_t errlen) {
    memset(out, 0, sizeof(*out));
    uint64_t dev;
    if (!s_uint(djn_value_get(r->body, "dev"), &dev) || dev >= DJN_MAX_DEVICES)
        return s_rep_bad(err, errlen, "PLACE needs 'dev' (a device index)");
    out->device = (uint32_t)dev;
    s_uint(djn_value_get(r->body, "held"), &out->held);
    const djn_value_t *l = djn_value_get(r->body, "load");
    if (s_list(l) && l->len == 3 && s_uint(&l->u.items[0], &out->sessions) &&
        s_uint(&l->u.items[1], &out->backlog) && s_uint(&l->u.items[2], &out->used))
        out->has_load = true;
    return DJN_OK;
}

void djn_place_rep_encode(djn_buf_t *b, const djn_msg_hdr_t *hdr, const djn_place_rep_t *r) {
    s_header(b, hdr);
    djn_enc_map(b, r->has_load ? 3 : 2);
    s_kv_uint(b, "dev", r->device);
    s_kv_uint(b, "held", r->held);
    if (r->has_load) {
        djn_enc_cstr(b, "load");
        djn_enc_array(b, 3);
        djn_enc_uint(b, r->sessions);
        djn_enc_uint(b, r->backlog);
        djn_enc_uint(b, r->used);
    }
}

void djn_error_rep_encode(djn_buf_t *b, const djn_msg_hdr_t *hdr, const djn_error_rep_t *r) {
    bool node = r->node >= 0;
    s_header(b, hdr);
    djn_enc_map(b, node ? 4 : 2);
    s_kv_uint(b, "code", (uint64_t)r->code);
    djn_enc_cstr(b, "msg");
    djn_enc_cstr(b, r->msg ? r->msg : djn_status_str(r->code));
    if (node) {
        s_kv_uint(b, "node", (uint64_t)r->node);
        djn_enc_cstr(b, "op");
        djn_enc_cstr(b, r->op ? r->op : "");
    }
}

/* ------------------------------------------------------------------ stats, by the table */

static uint32_t s_count(djn_stats_scope_t scope) {
    uint32_t n, k = 0;
    const djn_stats_field_t *f = djn_stats_fields(&n);
    for (uint32_t i = 0; i < n; i++)
        k += f[i].scope == scope;
    return k;
}

static void s_enc_fields(djn_buf_t *b, djn_stats_scope_t scope, const void *base) {
    uint32_t n;
    const djn_stats_field_t *f = djn_stats_fields(&n);
    for (uint32_t i = 0; i < n; i++) {
        if (f[i].scope != scope)
            continue;
        djn_enc_cstr(b, f[i].name);
        const uint8_t *p = (const uint8_t *)base + f[i].offset;
        if (f[i].is_float) {
            double d;
            memcpy(&d, p, sizeof d);
            djn_enc_float(b, d);
        } else {
            uint64_t u;
            memcpy(&u, p, sizeof u);
            djn_enc_uint(b, u);
        }
    }
}

static void s_dec_fields(const djn_value_t *map, djn_stats_scope_t scope, void *base) {
    uint32_t n;
    const djn_stats_field_t *f = djn_stats_fields(&n);
    for (uint32_t i = 0; i < n; i++) {
        if (f[i].scope != scope)
            continue;
        const djn_value_t *v = djn_value_get(map, f[i].name);
        uint8_t *p = (uint8_t *)base + f[i].offset;
        if (!v)
            continue;
        if (f[i].is_float) {
            double d = v->kind == DJN_V_FLOAT ? v->u.f : v->kind == DJN_V_INT ? (double)v->u.i : 0;
            memcpy(p, &d, sizeof d);
        } else if (v->kind == DJN_V_INT) {
            uint64_t u = (uint64_t)v->u.i;
            memcpy(p, &u, sizeof u);
        }
    }
}

void djn_stats_rep_encode(djn_buf_t *b, const djn_msg_hdr_t *hdr, const djn_stats_rep_t *r) {
    s_header(b, hdr);
    uint32_t top = s_count(DJN_STATS_SCOPE_SESSION) + 1;
    if (r->has_server)
        top += s_count(DJN_STATS_SCOPE_SERVER);
    djn_enc_map(b, top);
    if (r->has_server)
        s_enc_fields(b, DJN_STATS_SCOPE_SERVER, &r->server);
    s_enc_fields(b, DJN_STATS_SCOPE_SESSION, &r->session);
    djn_enc_cstr(b, "devices");
    djn_enc_array(b, r->ndevices);
    for (uint32_t i = 0; i < r->ndevices; i++) {
        djn_enc_map(b, s_count(DJN_STATS_SCOPE_DEVICE) + 1);
        djn_enc_cstr(b, "name");
        djn_enc_cstr(b, r->devices[i].name);
        s_enc_fields(b, DJN_STATS_SCOPE_DEVICE, &r->devices[i]);
    }
}

djn_status_t djn_stats_rep_parse(const djn_reply_t *r, djn_stats_rep_t *out, char *err,
                                 size_t errlen) {
    memset(out, 0, sizeof(*out));
    const djn_value_t *devs = djn_value_get(r->body, "devices");
    if (!s_list(devs) || devs->len > DJN_MAX_DEVICES)
        return s_rep_bad(err, errlen, "STATS needs 'devices'");
    out->has_server = djn_value_get(r->body, "uptime_ms") != NULL;
    s_dec_fields(r->body, DJN_STATS_SCOPE_SERVER, &out->server);
    s_dec_fields(r->body, DJN_STATS_SCOPE_SESSION, &out->session);
    out->ndevices = devs->len;
    for (uint32_t i = 0; i < devs->len; i++) {
        const djn_value_t *d = &devs->u.items[i], *name = djn_value_get(d, "name");
        if (d->kind != DJN_V_MAP || !name || name->kind != DJN_V_STR)
            return s_rep_bad(err, errlen, "STATS devices must be maps with a 'name'");
        snprintf(out->devices[i].name, sizeof out->devices[i].name, "%s", name->u.s);
        s_dec_fields(d, DJN_STATS_SCOPE_DEVICE, &out->devices[i]);
    }
    return DJN_OK;
}

/* ------------------------------------------------------------------ dyn results */

void djn_dyn_tensor_encode(djn_buf_t *b, const djn_dyn_tensor_t *t) {
    djn_enc_map(b, 2);
    djn_enc_cstr(b, "ref");
    djn_enc_tref(b, &t->ref);
    s_kv_uint(b, "nbytes", t->nbytes);
}

bool djn_dyn_tensor_decode(const djn_value_t *v, djn_dyn_tensor_t *out) {
    const djn_value_t *ref = djn_value_get(v, "ref");
    uint64_t b, e;
    if (!ref || ref->kind != DJN_V_TENSOR || !s_uint(djn_value_get(v, "nbytes"), &out->nbytes))
        return false;
    out->ref = *ref->u.t;
    return djn_tref_extent(&out->ref, &b, &e) && e <= out->nbytes;
}
