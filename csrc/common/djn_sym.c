/* djn_sym.c: a fragment's integers as bindings (see djn_sym.h).
 *
 * 1. Scan (client). One pass over the encoded nodes, the client's own bytes: structure
 *    is copied to the skeleton, each integer is appended to the list and stands in the
 *    skeleton as the byte 0xc1 (which msgpack never uses), so integers of any width give
 *    the same skeleton. A tensor reference keeps its ext header, slot, dtype and rank in
 *    the skeleton; its offset, sizes and strides become integers. Malformed input (the
 *    recorder never writes it) makes the scan fail, and the client then sends the full
 *    GRAPH.
 * 2. Walk (server). The same order over a decoded node: djn_value_t kinds INT and TENSOR
 *    hold integers; lists and maps are walked in order.
 * 3. Patch (server). The node array is copied shallowly; a node with a patched position
 *    is deep-copied into the message's arena, its integers rewritten in walk order, and
 *    every tensor reference in it checked again (extent and slot) as the decoder checks a
 *    GRAPH's. Unpatched nodes were checked when the template was decoded and are shared.
 *
 * Rejected: patching the encoded bytes and decoding them again (a full decode per token,
 * the cost the plan cache exists to save), and symbolic dimensions solved on the server
 * (needs shape functions for every operator; a patch says the same with no inference). */
#include "djn_sym.h"

#include <stdio.h>
#include <string.h>
#include <xxhash.h>

#define S_MARK 0xc1 /* never used by msgpack: an integer in the skeleton */

/* ------------------------------------------------------------------ 1: scan */

typedef struct {
    const uint8_t *p, *end;
    djn_buf_t *skel;
    djn_vec_t *ints;
    bool ok, oom;
} s_scan_t;

static uint64_t s_be(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

static int64_t s_le64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return (int64_t)v;
}

static bool s_has(s_scan_t *s, uint64_t n) {
    if ((uint64_t)(s->end - s->p) < n)
        s->ok = false;
    return s->ok;
}

/* djn_sym_scan reserves room first: the skeleton is never longer than the input (an
 * integer of any width becomes one byte, a tensor reference loses its offset, sizes and
 * strides) and there are never more integers than input bytes, so the writes below
 * need no capacity checks. */
static inline void s_raw(s_scan_t *s, const uint8_t *p, size_t n) {
    memcpy(s->skel->data + s->skel->len, p, n);
    s->skel->len += n;
}

static inline void s_copy(s_scan_t *s, uint64_t n) {
    if (s_has(s, n)) {
        s_raw(s, s->p, (size_t)n);
        s->p += n;
    }
}

static inline void s_push(s_scan_t *s, int64_t v) {
    ((int64_t *)s->ints->data)[s->ints->len++] = v;
}

static inline void s_int(s_scan_t *s, int64_t v, size_t width) {
    s->skel->data[s->skel->len++] = S_MARK;
    s->p += width;
    s_push(s, v);
}

static void s_value(s_scan_t *s, int depth);

static void s_items(s_scan_t *s, uint64_t n, int depth) {
    if (depth >= DJN_MAX_DEPTH || n > (uint64_t)(s->end - s->p))
        s->ok = false;
    for (uint64_t i = 0; s->ok && i < n; i++)
        s_value(s, depth + 1);
}

/* ext payload of n bytes, type t; the header (up to and including the type) is copied */
static void s_ext(s_scan_t *s, int8_t t, uint64_t n) {
    if (!s_has(s, n))
        return;
    if (t != DJN_EXT_TENSOR) {
        s_copy(s, n);
        return;
    }
    if (n < 18 || s->p[17] > DJN_MAX_DIMS || n != 18 + 16ull * s->p[17]) {
        s->ok = false;
        return;
    }
    const uint8_t *q = s->p;
    uint8_t nd = q[17];
    s_raw(s, q, 8);      /* slot */
    s_raw(s, q + 16, 2); /* dtype, ndim */
    s_push(s, s_le64(q + 8));
    for (uint32_t i = 0; i < 2u * nd; i++)
        s_push(s, s_le64(q + 18 + 8 * i));
    s->p += n;
}

static void s_value(s_scan_t *s, int depth) {
    if (!s_has(s, 1))
        return;
    uint8_t c = *s->p;
    if (c <= 0x7f) {
        s_int(s, c, 1);
        return;
    }
    if (c >= 0xe0) {
        s_int(s, (int8_t)c, 1);
        return;
    }
    if ((c & 0xf0) == 0x80 || (c & 0xf0) == 0x90) {
        s_copy(s, 1);
        s_items(s, (c & 0x80) && !(c & 0x10) ? 2ull * (c & 0x0f) : c & 0x0f, depth);
        return;
    }
    if ((c & 0xe0) == 0xa0) {
        s_copy(s, 1 + (c & 0x1f));
        return;
    }
    int w;
    switch (c) {
    case 0xc0:
    case 0xc2:
    case 0xc3:
        s_copy(s, 1);
        return;
    case 0xca:
        s_copy(s, 5);
        return;
    case 0xcb:
        s_copy(s, 9);
        return;
    case 0xcc:
    case 0xcd:
    case 0xce:
    case 0xcf:
        w = 1 << (c - 0xcc);
        if (s_has(s, 1 + (uint64_t)w))
            s_int(s, (int64_t)s_be(s->p + 1, w), 1 + (size_t)w);
        return;
    case 0xd0:
    case 0xd1:
    case 0xd2:
    case 0xd3: {
        w = 1 << (c - 0xd0);
        if (!s_has(s, 1 + (uint64_t)w))
            return;
        uint64_t u = s_be(s->p + 1, w);
        int64_t v = w == 1 ? (int8_t)u : w == 2 ? (int16_t)u : w == 4 ? (int32_t)u : (int64_t)u;
        s_int(s, v, 1 + (size_t)w);
        return;
    }
    case 0xc4:
    case 0xc5:
    case 0xc6:
    case 0xd9:
    case 0xda:
    case 0xdb:
        w = c == 0xc4 || c == 0xd9 ? 1 : c == 0xc5 || c == 0xda ? 2 : 4;
        if (s_has(s, 1 + (uint64_t)w))
            s_copy(s, 1 + (uint64_t)w + s_be(s->p + 1, w));
        return;
    case 0xc7:
    case 0xc8:
    case 0xc9: {
        w = c == 0xc7 ? 1 : c == 0xc8 ? 2 : 4;
        if (!s_has(s, 2 + (uint64_t)w))
            return;
        uint64_t n = s_be(s->p + 1, w);
        int8_t t = (int8_t)s->p[1 + w];
        s_copy(s, 2 + (uint64_t)w);
        s_ext(s, t, n);
        return;
    }
    case 0xd4:
    case 0xd5:
    case 0xd6:
    case 0xd7:
    case 0xd8: {
        if (!s_has(s, 2))
            return;
        int8_t t = (int8_t)s->p[1];
        s_copy(s, 2);
        s_ext(s, t, 1ull << (c - 0xd4));
        return;
    }
    case 0xdc:
    case 0xdd:
    case 0xde:
    case 0xdf: {
        w = c == 0xdc || c == 0xde ? 2 : 4;
        if (!s_has(s, 1 + (uint64_t)w))
            return;
        uint64_t n = s_be(s->p + 1, w) * (c >= 0xde ? 2 : 1);
        s_copy(s, 1 + (uint64_t)w);
        s_items(s, n, depth);
        return;
    }
    default:
        s->ok = false;
    }
}

/* op or overload: a string, structure (an integer here would be malformed anyway) */
static void s_opaque(s_scan_t *s) {
    size_t mark = s->ints->len;
    s_value(s, 0);
    s->ints->len = mark;
}

djn_status_t djn_sym_scan(const uint8_t *nodes, size_t len, uint32_t nnodes, djn_buf_t *skel,
                          djn_vec_t *ints, uint64_t fp[2]) {
    s_scan_t s = {nodes, nodes + len, skel, ints, true, false};
    djn_buf_reset(skel);
    if (!djn_buf_reserve(skel, len + 1) || !djn_vec_reserve(ints, ints->len + len + 1))
        return DJN_ERR_NOMEM;
    for (uint32_t i = 0; s.ok && i < nnodes; i++) {
        if (!s_has(&s, 1) || *s.p != 0x95) { /* fixarray of 5 */
            s.ok = false;
            break;
        }
        s_copy(&s, 1);
        s_opaque(&s);                         /* op */
        s_opaque(&s);                         /* overload */
        for (int k = 0; k < 2 && s.ok; k++) { /* args, outs: arrays of values */
            if (!s_has(&s, 1))
                break;
            uint8_t c = *s.p;
            if ((c & 0xf0) == 0x90) {
                s_copy(&s, 1);
                s_items(&s, c & 0x0f, 0);
            } else if (c == 0xdc || c == 0xdd) {
                s_value(&s, 0);
            } else {
                s.ok = false;
            }
        }
        if (s.ok) { /* flags: a uint, part of the structure with its value */
            const uint8_t *f = s.p;
            size_t mark = ints->len;
            s_value(&s, 0);
            ints->len = mark;
            if (s.ok) {
                skel->len--; /* drop the marker, keep the flags' bytes */
                s_raw(&s, f, (size_t)(s.p - f));
            }
        }
    }
    if (s.oom || skel->failed)
        return DJN_ERR_NOMEM;
    if (!s.ok || s.p != s.end)
        return DJN_ERR_PROTO;
    XXH128_hash_t h = XXH3_128bits(skel->data, skel->len);
    fp[0] = h.high64;
    fp[1] = h.low64;
    if (!fp[0] && !fp[1])
        fp[1] = 1; /* [0, 0] means "no nodes" */
    return DJN_OK;
}

/* ------------------------------------------------------------------ 2: walk */

static uint32_t s_walk(const djn_value_t *v, int64_t *out, uint32_t k, int depth) {
    if (depth > DJN_MAX_DEPTH)
        return k;
    switch (v->kind) {
    case DJN_V_INT:
        if (out)
            out[k] = v->u.i;
        return k + 1;
    case DJN_V_TENSOR: {
        const djn_tref_t *t = v->u.t;
        if (out) {
            out[k] = t->offset;
            for (uint32_t d = 0; d < t->ndim; d++) {
                out[k + 1 + d] = t->sizes[d];
                out[k + 1 + t->ndim + d] = t->strides[d];
            }
        }
        return k + 1 + 2u * t->ndim;
    }
    case DJN_V_LIST:
        for (uint32_t i = 0; i < v->len; i++)
            k = s_walk(&v->u.items[i], out, k, depth + 1);
        return k;
    case DJN_V_MAP:
        for (uint32_t i = 0; i < 2 * v->len; i++)
            k = s_walk(&v->u.items[i], out, k, depth + 1);
        return k;
    default:
        return k;
    }
}

uint32_t djn_sym_node_ints(const djn_node_t *n, int64_t *out) {
    uint32_t k = 0;
    for (uint32_t a = 0; a < n->nargs; a++)
        k = s_walk(&n->args[a], out, k, 0);
    for (uint32_t a = 0; a < n->nouts; a++)
        k = s_walk(&n->outs[a], out, k, 0);
    return k;
}

/* each list: its length, then its words; chained through the seed */
static uint64_t s_hash_words(uint64_t seed, const void *w, uint64_t n) {
    seed = XXH3_64bits_withSeed(&n, sizeof n, seed);
    return n ? XXH3_64bits_withSeed(w, (size_t)n * 8, seed) : seed;
}

uint64_t djn_sym_digest(const int64_t *ints, uint32_t nints, const uint64_t *binds, uint32_t nbinds,
                        const djn_alloc_t *allocs, uint32_t nallocs, const uint64_t *frees,
                        uint32_t nfrees) {
    uint64_t d = s_hash_words(0, ints, nints);
    d = s_hash_words(d, binds, nbinds);
    d = s_hash_words(d, allocs, 2ull * nallocs); /* djn_alloc_t is {handle, nbytes} */
    d = s_hash_words(d, frees, nfrees);
    return d ? d : 1;
}

/* ------------------------------------------------------------------ 3: patch */

typedef struct {
    const djn_sym_patch_t *p, *end;
    uint32_t k; /* position of the next integer */
} s_patch_t;

static void s_set(s_patch_t *pp, int64_t *slot) {
    if (pp->p < pp->end && pp->p->pos == pp->k) {
        *slot = (int64_t)((uint64_t)*slot + (uint64_t)pp->p->val); /* a delta, wrapping */
        pp->p++;
    }
    pp->k++;
}

static void s_apply(djn_value_t *v, s_patch_t *pp, int depth) {
    if (depth > DJN_MAX_DEPTH)
        return;
    switch (v->kind) {
    case DJN_V_INT:
        s_set(pp, &v->u.i);
        return;
    case DJN_V_TENSOR: {
        djn_tref_t *t = v->u.t;
        s_set(pp, &t->offset);
        for (uint32_t d = 0; d < t->ndim; d++)
            s_set(pp, &t->sizes[d]);
        for (uint32_t d = 0; d < t->ndim; d++)
            s_set(pp, &t->strides[d]);
        return;
    }
    case DJN_V_LIST:
        for (uint32_t i = 0; i < v->len; i++)
            s_apply(&v->u.items[i], pp, depth + 1);
        return;
    case DJN_V_MAP:
        for (uint32_t i = 0; i < 2 * v->len; i++)
            s_apply(&v->u.items[i], pp, depth + 1);
        return;
    default:
        return;
    }
}

/* the decoder's check of a reference (djn_msgs.c s_check_refs), on a patched node */
static bool s_refs_ok(const djn_value_t *v, uint32_t nbinds, int depth) {
    if (depth > DJN_MAX_DEPTH)
        return false;
    if (v->kind == DJN_V_TENSOR) {
        uint64_t b, e;
        return v->u.t->handle < nbinds && djn_tref_extent(v->u.t, &b, &e);
    }
    if (v->kind == DJN_V_LIST || v->kind == DJN_V_MAP) {
        uint32_t n = v->kind == DJN_V_MAP ? 2 * v->len : v->len;
        for (uint32_t i = 0; i < n; i++)
            if (!s_refs_ok(&v->u.items[i], nbinds, depth + 1))
                return false;
    }
    return true;
}

djn_status_t djn_sym_patch(djn_arena_t *a, const djn_node_t *nodes, uint32_t nnodes,
                           const uint32_t *start, const djn_sym_patch_t *patch, uint32_t npatch,
                           uint32_t nbinds, const djn_node_t **out, char *err, size_t errlen) {
    *out = nodes;
    if (!npatch)
        return DJN_OK;
    djn_node_t *copy = djn_arena_alloc(a, sizeof(djn_node_t) * (size_t)nnodes);
    if (!copy) {
        snprintf(err, errlen, "out of host memory");
        return DJN_ERR_NOMEM;
    }
    memcpy(copy, nodes, sizeof(djn_node_t) * (size_t)nnodes);
    s_patch_t pp = {patch, patch + npatch, 0};
    for (uint32_t i = 0; i < nnodes && pp.p < pp.end; i++) {
        if (pp.p->pos >= start[i + 1])
            continue; /* nothing of this node is patched */
        djn_node_t *n = &copy[i];
        djn_node_t *c = djn_nodes_clone(a, n, 1);
        if (!c) {
            snprintf(err, errlen, "out of host memory");
            return DJN_ERR_NOMEM;
        }
        *n = *c;
        pp.k = start[i];
        for (uint32_t k = 0; k < n->nargs; k++)
            s_apply(&n->args[k], &pp, 0);
        for (uint32_t k = 0; k < n->nouts; k++)
            s_apply(&n->outs[k], &pp, 0);
        bool ok = true;
        for (uint32_t k = 0; ok && k < n->nargs; k++)
            ok = s_refs_ok(&n->args[k], nbinds, 0);
        for (uint32_t k = 0; ok && k < n->nouts; k++)
            ok = s_refs_ok(&n->outs[k], nbinds, 0);
        if (!ok) {
            snprintf(err, errlen,
                     "GRAPH: node %u (%s) has a malformed tensor reference or unbound slot", i,
                     n->op);
            return DJN_ERR_PROTO;
        }
    }
    if (pp.p < pp.end) {
        snprintf(err, errlen, "GRAPH_CACHED patch names integer %u but the cached fragment has %u",
                 pp.p->pos, start[nnodes]);
        return DJN_ERR_PROTO;
    }
    *out = copy;
    return DJN_OK;
}

uint64_t djn_sym_pattern_hash(const djn_sym_patch_t *pat, uint32_t n) {
    uint64_t d = n, w[256];
    for (uint32_t i = 0; i < n;) { /* blocks of 256 words, chained through the seed */
        uint32_t k = 0;
        while (k < 256 && i < n) {
            w[k++] = (uint64_t)pat[i].pos << 32 | (uint64_t)(uint32_t)pat[i].val;
            i++;
        }
        d = XXH3_64bits_withSeed(w, k * sizeof(uint64_t), d);
    }
    return d ? d : 1;
}

/* ------------------------------------------------------------------ runs */

bool djn_sym_expand(const uint64_t *tpl, uint32_t ntpl, const djn_sym_run_t *runs, uint32_t nruns,
                    uint64_t *out) {
    uint64_t i = 0;
    for (uint32_t r = 0; r < nruns; r++) {
        if (runs[r].count > ntpl - i)
            return false;
        for (uint64_t k = 0; k < runs[r].count; k++, i++)
            out[i] = tpl[i] + (uint64_t)runs[r].delta;
    }
    return i == ntpl;
}

bool djn_sym_runs(const uint64_t *tpl, const uint64_t *cur, uint32_t n, djn_vec_t *runs) {
    for (uint32_t i = 0; i < n;) {
        djn_sym_run_t r = {0, (int64_t)(cur[i] - tpl[i])};
        while (i < n && (int64_t)(cur[i] - tpl[i]) == r.delta) {
            r.count++;
            i++;
        }
        if (!djn_vec_push(runs, &r))
            return false;
    }
    return true;
}
