/* djn_codec.c: msgpack <-> plain C (the only file that includes msgpack.h).
 *
 * Decoding is three steps:
 *   1. s_scan walks the raw bytes without allocating: it checks every length against
 *      the bytes that remain (an array of n items needs at least n more bytes), the
 *      nesting depth, the object count and the extension payloads. A hostile header
 *      that claims 2^32 elements is refused here, before msgpack-c would reserve
 *      memory for it.
 *   2. msgpack-c unpacks the now-trusted bytes into its zone.
 *   3. s_convert copies the objects into a djn_value_t tree in our counted arena and
 *      turns the extension types into tensor references and complex numbers.
 * djn_msg_parse then checks the tree against the protocol (field presence and types,
 * frame indexes, handle ranges) and fills the typed request structs.
 *
 * Rejected alternative: a hand-written decoder building the tree directly (one pass).
 * It would be faster by a few hundred ns on a typical 2 KB header; not worth owning a
 * second msgpack implementation while headers are this small. */
#include "djn_codec.h"

#include <msgpack.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "djn_mem.h"

/* ------------------------------------------------------------------ arena */

typedef struct s_chunk {
    struct s_chunk *next;
    size_t size, used;
    /* data follows, 16-byte aligned */
} s_chunk_t;

struct djn_arena {
    s_chunk_t *head;
};

#define S_CHUNK_HDR ((sizeof(s_chunk_t) + 15) & ~(size_t)15)

djn_arena_t *djn_arena_new(void) { return djn_calloc(1, sizeof(djn_arena_t)); }

void djn_arena_destroy(djn_arena_t **self_p) {
    if (!self_p || !*self_p)
        return;
    s_chunk_t *c = (*self_p)->head;
    while (c) {
        s_chunk_t *n = c->next;
        djn_free(c, S_CHUNK_HDR + c->size);
        c = n;
    }
    djn_free(*self_p, sizeof(djn_arena_t));
    *self_p = NULL;
}

void *djn_arena_alloc(djn_arena_t *a, size_t n) {
    if (n > SIZE_MAX - S_CHUNK_HDR - 16) return NULL;
    n = (n + 7) & ~(size_t)7;
    if (n == 0)
        n = 8;
    s_chunk_t *c = a->head;
    if (!c || c->size - c->used < n) {
        size_t size = n > 16384 ? n : 16384;
        c = djn_malloc(S_CHUNK_HDR + size);
        if (!c)
            return NULL;
        c->size = size;
        c->used = 0;
        c->next = a->head;
        a->head = c;
    }
    void *p = (uint8_t *)c + S_CHUNK_HDR + c->used;
    c->used += n;
    memset(p, 0, n);
    return p;
}

/* ------------------------------------------------------------------ helpers */

size_t djn_dtype_size(uint32_t dtype) {
    switch (dtype) {
    case DJN_DTYPE_U8: case DJN_DTYPE_I8: case DJN_DTYPE_BOOL: return 1;
    case DJN_DTYPE_I16: case DJN_DTYPE_F16: case DJN_DTYPE_BF16: return 2;
    case DJN_DTYPE_I32: case DJN_DTYPE_F32: case DJN_DTYPE_C32: return 4;
    case DJN_DTYPE_I64: case DJN_DTYPE_F64: case DJN_DTYPE_C64: return 8;
    case DJN_DTYPE_C128: return 16;
    default: return 0;
    }
}

bool djn_tref_extent(const djn_tref_t *t, uint64_t *begin, uint64_t *end) {
    size_t isz = djn_dtype_size(t->dtype);
    const int64_t lim = (int64_t)1 << 62;
    if (!isz || t->offset < 0 || t->offset > lim || t->ndim > DJN_MAX_DIMS)
        return false;
    bool empty = false;
    for (unsigned d = 0; d < t->ndim; d++) {
        if (t->sizes[d] < 0 || t->sizes[d] > lim || t->strides[d] > lim || t->strides[d] < -lim) return false;
        empty |= t->sizes[d] == 0;
    }
    if (empty) {
        if ((uint64_t)t->offset > UINT64_MAX / isz) return false;
        *begin = *end = (uint64_t)t->offset * isz;
        return true;
    }
    int64_t lo = t->offset, hi = t->offset;
    for (unsigned d = 0; d < t->ndim; d++) {
        int64_t sz = t->sizes[d], st = t->strides[d];
        if (sz > 1 && st != 0 && (sz - 1) > lim / (st < 0 ? -st : st))
            return false;
        int64_t span = (sz - 1) * st;
        if (span >= 0) { if (span > lim - hi) return false; hi += span; } else lo += span;
        if (hi > lim || lo < 0)
            return false;
    }
    if ((uint64_t)hi + 1 > UINT64_MAX / isz)
        return false;
    *begin = (uint64_t)lo * isz;
    *end = ((uint64_t)hi + 1) * isz;
    return true;
}

static void s_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ------------------------------------------------------------------ step 1: scan */

typedef struct {
    const uint8_t *p, *end, *start;
    uint32_t objects;
    char *err;
    size_t errlen;
} s_scan_t;

static uint64_t s_be(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

static bool s_need(s_scan_t *s, size_t n) {
    if ((size_t)(s->end - s->p) < n) {
        s_err(s->err, s->errlen, "truncated msgpack at byte %zu", (size_t)(s->p - s->start));
        return false;
    }
    return true;
}

static bool s_scan_one(s_scan_t *s, int depth);

static bool s_scan_items(s_scan_t *s, uint64_t n, int depth) {
    if (n > DJN_MAX_ITEMS || n > (uint64_t)(s->end - s->p)) {
        s_err(s->err, s->errlen, "msgpack container of %llu items exceeds the message",
              (unsigned long long)n);
        return false;
    }
    if (depth >= DJN_MAX_DEPTH) {
        s_err(s->err, s->errlen, "msgpack nesting deeper than %d", DJN_MAX_DEPTH);
        return false;
    }
    for (uint64_t i = 0; i < n; i++)
        if (!s_scan_one(s, depth + 1))
            return false;
    return true;
}

static bool s_skip(s_scan_t *s, uint64_t n) {
    if (!s_need(s, n))
        return false;
    s->p += n;
    return true;
}

static bool s_scan_ext(s_scan_t *s, int8_t type, uint64_t n) {
    if (!s_need(s, n))
        return false;
    if (type == DJN_EXT_TENSOR) {
        if (n < 18 || s->p[17] > DJN_MAX_DIMS || n != 18 + 16ull * s->p[17]) {
            s_err(s->err, s->errlen, "malformed tensor reference at byte %zu",
                  (size_t)(s->p - s->start));
            return false;
        }
    } else if (type == DJN_EXT_COMPLEX) {
        if (n != 16) {
            s_err(s->err, s->errlen, "malformed complex number");
            return false;
        }
    } else {
        s_err(s->err, s->errlen, "unknown msgpack extension type %d", type);
        return false;
    }
    s->p += n;
    return true;
}

static bool s_scan_one(s_scan_t *s, int depth) {
    if (++s->objects > DJN_MAX_OBJECTS) {
        s_err(s->err, s->errlen, "more than %u msgpack objects", DJN_MAX_OBJECTS);
        return false;
    }
    if (!s_need(s, 1))
        return false;
    uint8_t c = *s->p++;
    if (c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3)
        return true;
    if ((c & 0xf0) == 0x80)
        return s_scan_items(s, 2ull * (c & 0x0f), depth);
    if ((c & 0xf0) == 0x90)
        return s_scan_items(s, c & 0x0f, depth);
    if ((c & 0xe0) == 0xa0)
        return s_skip(s, c & 0x1f);
    switch (c) {
    case 0xc4: case 0xd9: /* bin8 / str8 */
        if (!s_need(s, 1)) return false;
        s->p += 1;
        return s_skip(s, s->p[-1]);
    case 0xc5: case 0xda:
        if (!s_need(s, 2)) return false;
        s->p += 2;
        return s_skip(s, s_be(s->p - 2, 2));
    case 0xc6: case 0xdb:
        if (!s_need(s, 4)) return false;
        s->p += 4;
        return s_skip(s, s_be(s->p - 4, 4));
    case 0xc7: case 0xc8: case 0xc9: { /* ext 8/16/32 */
        int w = c == 0xc7 ? 1 : c == 0xc8 ? 2 : 4;
        if (!s_need(s, (size_t)w + 1)) return false;
        uint64_t n = s_be(s->p, w);
        int8_t t = (int8_t)s->p[w];
        s->p += w + 1;
        return s_scan_ext(s, t, n);
    }
    case 0xca: return s_skip(s, 4);
    case 0xcb: return s_skip(s, 8);
    case 0xcc: case 0xd0: return s_skip(s, 1);
    case 0xcd: case 0xd1: return s_skip(s, 2);
    case 0xce: case 0xd2: return s_skip(s, 4);
    case 0xcf: case 0xd3: return s_skip(s, 8);
    case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8: { /* fixext 1..16 */
        uint64_t n = 1ull << (c - 0xd4);
        if (!s_need(s, 1)) return false;
        int8_t t = (int8_t)*s->p++;
        return s_scan_ext(s, t, n);
    }
    case 0xdc:
        if (!s_need(s, 2)) return false;
        s->p += 2;
        return s_scan_items(s, s_be(s->p - 2, 2), depth);
    case 0xdd:
        if (!s_need(s, 4)) return false;
        s->p += 4;
        return s_scan_items(s, s_be(s->p - 4, 4), depth);
    case 0xde:
        if (!s_need(s, 2)) return false;
        s->p += 2;
        return s_scan_items(s, 2 * s_be(s->p - 2, 2), depth);
    case 0xdf:
        if (!s_need(s, 4)) return false;
        s->p += 4;
        return s_scan_items(s, 2 * s_be(s->p - 4, 4), depth);
    default:
        s_err(s->err, s->errlen, "invalid msgpack byte 0x%02x at %zu", c,
              (size_t)(s->p - 1 - s->start));
        return false;
    }
}

/* ------------------------------------------------------------------ step 3: convert */

static uint64_t s_le(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static bool s_convert(const msgpack_object *o, djn_arena_t *a, djn_value_t *v) {
    switch (o->type) {
    case MSGPACK_OBJECT_NIL: v->kind = DJN_V_NONE; return true;
    case MSGPACK_OBJECT_BOOLEAN: v->kind = DJN_V_BOOL; v->u.b = o->via.boolean; return true;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        v->kind = DJN_V_INT;
        v->u.i = (int64_t)o->via.u64; /* handles above 2^63 wrap; compared bitwise */
        return true;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: v->kind = DJN_V_INT; v->u.i = o->via.i64; return true;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: v->kind = DJN_V_FLOAT; v->u.f = o->via.f64; return true;
    case MSGPACK_OBJECT_STR:
    case MSGPACK_OBJECT_BIN: {
        v->kind = o->type == MSGPACK_OBJECT_STR ? DJN_V_STR : DJN_V_BIN;
        v->len = o->via.str.size;
        char *s = djn_arena_alloc(a, (size_t)v->len + 1);
        if (!s) return false;
        if (v->len) memcpy(s, o->via.str.ptr, v->len);
        v->u.s = s;
        return true;
    }
    case MSGPACK_OBJECT_ARRAY: {
        v->kind = DJN_V_LIST;
        v->len = o->via.array.size;
        v->u.items = djn_arena_alloc(a, sizeof(djn_value_t) * (v->len ? v->len : 1));
        if (!v->u.items) return false;
        for (uint32_t i = 0; i < v->len; i++)
            if (!s_convert(&o->via.array.ptr[i], a, &v->u.items[i]))
                return false;
        return true;
    }
    case MSGPACK_OBJECT_MAP: {
        v->kind = DJN_V_MAP;
        v->len = o->via.map.size;
        v->u.items = djn_arena_alloc(a, sizeof(djn_value_t) * 2 * (v->len ? v->len : 1));
        if (!v->u.items) return false;
        for (uint32_t i = 0; i < v->len; i++) {
            if (!s_convert(&o->via.map.ptr[i].key, a, &v->u.items[2 * i]) ||
                !s_convert(&o->via.map.ptr[i].val, a, &v->u.items[2 * i + 1]))
                return false;
        }
        return true;
    }
    case MSGPACK_OBJECT_EXT: {
        const uint8_t *p = (const uint8_t *)o->via.ext.ptr;
        if (o->via.ext.type == DJN_EXT_COMPLEX) {
            v->kind = DJN_V_COMPLEX;
            uint64_t re = s_le(p, 8), im = s_le(p + 8, 8);
            memcpy(&v->u.c[0], &re, 8);
            memcpy(&v->u.c[1], &im, 8);
            return true;
        }
        /* DJN_EXT_TENSOR, size checked by the scan */
        djn_tref_t *t = djn_arena_alloc(a, sizeof(*t));
        if (!t) return false;
        t->handle = s_le(p, 8);
        t->offset = (int64_t)s_le(p + 8, 8);
        t->dtype = p[16];
        t->ndim = p[17];
        for (unsigned d = 0; d < t->ndim; d++) {
            t->sizes[d] = (int64_t)s_le(p + 18 + 8 * d, 8);
            t->strides[d] = (int64_t)s_le(p + 18 + 8 * (t->ndim + d), 8);
        }
        v->kind = DJN_V_TENSOR;
        v->u.t = t;
        return true;
    }
    default: return false;
    }
}

djn_status_t djn_decode_value(const void *buf, size_t len, djn_arena_t *a, djn_value_t **out,
                              char *err, size_t errlen) {
    *out = NULL;
    if (len > DJN_MAX_HEADER_BYTES) {
        s_err(err, errlen, "header of %zu bytes exceeds the limit of %u", len,
              DJN_MAX_HEADER_BYTES);
        return DJN_ERR_LIMIT;
    }
    s_scan_t s = {buf, (const uint8_t *)buf + len, buf, 0, err, errlen};
    if (len == 0) {
        s_err(err, errlen, "empty header frame");
        return DJN_ERR_PROTO;
    }
    if (!s_scan_one(&s, 0))
        return DJN_ERR_PROTO;
    if (s.p != s.end) {
        s_err(err, errlen, "%zu trailing bytes after the msgpack header",
              (size_t)(s.end - s.p));
        return DJN_ERR_PROTO;
    }
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    djn_status_t st = DJN_OK;
    if (msgpack_unpack_next(&up, buf, len, &off) != MSGPACK_UNPACK_SUCCESS) {
        s_err(err, errlen, "msgpack decoding failed");
        st = DJN_ERR_PROTO;
    } else {
        djn_value_t *v = djn_arena_alloc(a, sizeof(*v));
        if (!v || !s_convert(&up.data, a, v)) {
            s_err(err, errlen, "out of memory decoding the header");
            st = DJN_ERR_NOMEM;
        } else {
            *out = v;
        }
    }
    msgpack_unpacked_destroy(&up);
    return st;
}

const djn_value_t *djn_value_get(const djn_value_t *map, const char *key) {
    if (!map || map->kind != DJN_V_MAP)
        return NULL;
    size_t kl = strlen(key);
    for (uint32_t i = 0; i < map->len; i++) {
        const djn_value_t *k = &map->u.items[2 * i];
        if (k->kind == DJN_V_STR && k->len == kl && memcmp(k->u.s, key, kl) == 0)
            return &map->u.items[2 * i + 1];
    }
    return NULL;
}

/* ------------------------------------------------------------------ protocol checks */

typedef struct {
    djn_arena_t *a;
    uint32_t nframes;
    char *err;
    size_t errlen;
} s_parse_t;

static bool s_uint(const djn_value_t *v, uint64_t *out) {
    if (!v || v->kind != DJN_V_INT)
        return false;
    *out = (uint64_t)v->u.i;
    return true;
}

static bool s_list(const djn_value_t *v) { return v && v->kind == DJN_V_LIST; }

static djn_status_t s_bad(s_parse_t *p, const char *what);

static djn_status_t s_bad(s_parse_t *p, const char *what) {
    s_err(p->err, p->errlen, "GRAPH: %s", what);
    return DJN_ERR_PROTO;
}

/* Check every tensor reference inside a value (recursively): well-formed, and its slot
 * number below *max_slot's bound. Nodes carry slots, not handles ("binds" maps slots to
 * handles), so that the bytes of a fragment (and so its fingerprint) do not depend on
 * handle values and a cached fragment can run again with other bindings. */
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
    if (v->kind == DJN_V_LIST)
        for (uint32_t i = 0; i < v->len; i++)
            if (!s_check_refs(&v->u.items[i], nbinds, max_slot, depth + 1))
                return false;
    return true;
}

static djn_status_t s_parse_graph(s_parse_t *p, djn_value_t *body, djn_graph_req_t *g) {
    uint64_t u;
    const djn_value_t *v = djn_value_get(body, "dev");
    g->device = 0;
    if (v) {
        if (!s_uint(v, &u) || u > 1024)
            return s_bad(p, "'dev' must be a small unsigned integer");
        g->device = (uint32_t)u;
    }
    g->seed = -1;
    if ((v = djn_value_get(body, "seed")) != NULL && v->kind != DJN_V_NONE) {
        if (v->kind != DJN_V_INT)
            return s_bad(p, "'seed' must be an integer");
        g->seed = v->u.i & INT64_MAX;
    }
    uint64_t *binds = NULL;
    uint32_t nbinds = 0;
    if ((v = djn_value_get(body, "binds")) != NULL) {
        if (!s_list(v))
            return s_bad(p, "'binds' must be an array");
        nbinds = v->len;
        binds = djn_arena_alloc(p->a, sizeof(uint64_t) * (v->len + 1));
        if (!binds)
            return DJN_ERR_NOMEM;
        for (uint32_t i = 0; i < v->len; i++)
            if (!s_uint(&v->u.items[i], &binds[i]) || binds[i] == 0)
                return s_bad(p, "'binds' must hold non-zero handles");
    }
    g->binds = binds;
    g->nbinds = nbinds;
    if ((v = djn_value_get(body, "fp")) != NULL && v->kind == DJN_V_LIST && v->len == 2 &&
        v->u.items[0].kind == DJN_V_INT && v->u.items[1].kind == DJN_V_INT) {
        g->fp[0] = (uint64_t)v->u.items[0].u.i;
        g->fp[1] = (uint64_t)v->u.items[1].u.i;
    }
    if ((v = djn_value_get(body, "allocs")) != NULL) {
        if (!s_list(v))
            return s_bad(p, "'allocs' must be an array");
        g->nallocs = v->len;
        g->allocs = djn_arena_alloc(p->a, sizeof(djn_alloc_t) * (v->len + 1));
        if (!g->allocs)
            return DJN_ERR_NOMEM;
        for (uint32_t i = 0; i < v->len; i++) {
            const djn_value_t *e = &v->u.items[i];
            if (!s_list(e) || e->len != 2 || !s_uint(&e->u.items[0], &g->allocs[i].handle) ||
                !s_uint(&e->u.items[1], &g->allocs[i].nbytes))
                return s_bad(p, "each alloc must be [handle, nbytes]");
            if (!g->allocs[i].handle || g->allocs[i].handle >= (1ull << 62))
                return s_bad(p, "client handles must be in [1, 2^62)");
        }
    }
    if ((v = djn_value_get(body, "uploads")) != NULL) {
        if (!s_list(v))
            return s_bad(p, "'uploads' must be an array");
        g->nuploads = v->len;
        g->uploads = djn_arena_alloc(p->a, sizeof(djn_upload_t) * (v->len + 1));
        if (!g->uploads)
            return DJN_ERR_NOMEM;
        for (uint32_t i = 0; i < v->len; i++) {
            const djn_value_t *e = &v->u.items[i];
            if (!s_list(e) || (e->len != 2 && e->len != 3) ||
                !s_uint(&e->u.items[0], &g->uploads[i].handle) || !s_uint(&e->u.items[1], &u))
                return s_bad(p, "each upload must be [handle, frame] or [handle, frame, text]");
            g->uploads[i].text = e->len == 3 && e->u.items[2].kind == DJN_V_BOOL && e->u.items[2].u.b;
            if (!g->uploads[i].handle || g->uploads[i].handle >= (1ull << 62))
                return s_bad(p, "client handles must be in [1, 2^62)");
            if (u < 1 || u > p->nframes) {
                s_err(p->err, p->errlen, "GRAPH: upload names frame %llu but the message has %u",
                      (unsigned long long)u, p->nframes);
                return DJN_ERR_PROTO;
            }
            g->uploads[i].frame = (uint32_t)u;
        }
    }
    if ((v = djn_value_get(body, "nodes")) != NULL) {
        if (!s_list(v))
            return s_bad(p, "'nodes' must be an array");
        if (v->len > DJN_MAX_NODES)
            return DJN_ERR_LIMIT;
        g->nnodes = v->len;
        g->nodes = djn_arena_alloc(p->a, sizeof(djn_node_t) * (v->len + 1));
        if (!g->nodes)
            return DJN_ERR_NOMEM;
        for (uint32_t i = 0; i < v->len; i++) {
            djn_value_t *e = &v->u.items[i];
            djn_node_t *n = &g->nodes[i];
            if (!s_list(e) || e->len != 5 || e->u.items[0].kind != DJN_V_STR ||
                e->u.items[1].kind != DJN_V_STR || !s_list(&e->u.items[2]) ||
                !s_list(&e->u.items[3]) || !s_uint(&e->u.items[4], &u)) {
                s_err(p->err, p->errlen,
                      "GRAPH: node %u must be [op, overload, [args], [outs], flags]", i);
                return DJN_ERR_PROTO;
            }
            if (e->u.items[0].len == 0 || e->u.items[0].len > DJN_MAX_NAME ||
                memchr(e->u.items[0].u.s, 0, e->u.items[0].len) || memchr(e->u.items[1].u.s, 0, e->u.items[1].len) ||
                e->u.items[1].len > DJN_MAX_NAME) {
                s_err(p->err, p->errlen, "GRAPH: node %u has a bad operator name", i);
                return DJN_ERR_PROTO;
            }
            n->op = e->u.items[0].u.s; /* arena strings are NUL-terminated */
            n->overload = e->u.items[1].u.s;
            n->nargs = e->u.items[2].len;
            n->args = e->u.items[2].u.items;
            n->nouts = e->u.items[3].len;
            n->outs = e->u.items[3].u.items;
            n->flags = (uint32_t)u;
            if (!s_check_refs(&e->u.items[2], nbinds, &g->nslots, 0) ||
                !s_check_refs(&e->u.items[3], nbinds, &g->nslots, 0)) {
                s_err(p->err, p->errlen,
                      "GRAPH: node %u (%s) has a malformed tensor reference or unbound slot", i,
                      n->op);
                return DJN_ERR_PROTO;
            }
        }
    }
    if ((v = djn_value_get(body, "frees")) != NULL) {
        if (!s_list(v))
            return s_bad(p, "'frees' must be an array");
        g->nfrees = v->len;
        g->frees = djn_arena_alloc(p->a, sizeof(uint64_t) * (v->len + 1));
        if (!g->frees)
            return DJN_ERR_NOMEM;
        for (uint32_t i = 0; i < v->len; i++)
            if (!s_uint(&v->u.items[i], &g->frees[i]))
                return s_bad(p, "'frees' must hold handles");
    }
    if ((v = djn_value_get(body, "fetch")) != NULL) {
        if (!s_list(v))
            return s_bad(p, "'fetch' must be an array");
        g->nfetches = v->len;
        g->fetches = djn_arena_alloc(p->a, sizeof(djn_fetch_t) * (v->len + 1));
        if (!g->fetches)
            return DJN_ERR_NOMEM;
        for (uint32_t i = 0; i < v->len; i++) {
            const djn_value_t *e = &v->u.items[i];
            djn_fetch_t *f = &g->fetches[i];
            if (!s_list(e) || e->len != 3 || !s_uint(&e->u.items[0], &f->handle) ||
                !s_uint(&e->u.items[1], &f->offset) || !s_uint(&e->u.items[2], &f->nbytes))
                return s_bad(p, "each fetch must be [handle, offset, nbytes]");
        }
    }
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
    if (!a) { s_err(err, errlen, "out of host memory decoding the message"); return DJN_ERR_NOMEM; }
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
        s_err(err, errlen, "out of host memory decoding the message");
        st = DJN_ERR_NOMEM;
        goto fail;
    }
    m->type = (uint8_t)type;
    m->sid = sid;
    m->seq = seq;
    m->body = (djn_value_t *)body;
    m->arena = a;
    s_parse_t p = {a, nframes, err, errlen};
    switch (type) {
    case DJN_MSG_HELLO: {
        uint64_t ver;
        if (!s_uint(djn_value_get(body, "version"), &ver)) {
            s_err(err, errlen, "HELLO needs an integer 'version'");
            st = DJN_ERR_PROTO;
            goto fail;
        }
        if (ver > UINT32_MAX) { s_err(err, errlen, "HELLO version too large"); st = DJN_ERR_PROTO; goto fail; }
        m->u.hello.version = (uint32_t)ver;
        const djn_value_t *c = djn_value_get(body, "client");
        m->u.hello.client = c && c->kind == DJN_V_STR ? c->u.s : "";
        break;
    }
    case DJN_MSG_GRAPH:
    case DJN_MSG_GRAPH_CACHED:
    case DJN_MSG_FETCH:
        st = s_parse_graph(&p, (djn_value_t *)body, &m->u.graph);
        if (st == DJN_ERR_NOMEM) s_err(err, errlen, "out of host memory decoding the message");
        if (st != DJN_OK)
            goto fail;
        break;
    case DJN_MSG_HEARTBEAT:
    case DJN_MSG_STATS:
    case DJN_MSG_CLOSE:
    case DJN_MSG_HAVE: /* body checked by the server as it walks it */
        break;
    default:
        s_err(err, errlen, "unknown message type %llu", (unsigned long long)type);
        st = DJN_ERR_PROTO;
        goto fail;
    }
    *out = m;
    return DJN_OK;
fail:
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

/* ------------------------------------------------------------------ encoding */

static int s_write(void *data, const char *buf, size_t len) {
    djn_buf_raw((djn_buf_t *)data, buf, len);
    return ((djn_buf_t *)data)->failed ? -1 : 0;
}

#define S_PK(b) msgpack_packer pk = {(b), s_write}

void djn_buf_reset(djn_buf_t *b) {
    b->len = 0;
    b->failed = false;
}

void djn_buf_release(djn_buf_t *b) {
    djn_free(b->data, b->cap);
    memset(b, 0, sizeof(*b));
}

void djn_buf_raw(djn_buf_t *b, const void *p, size_t n) {
    if (b->failed || n == 0)
        return;
    if (b->cap - b->len < n) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap - b->len < n)
            cap *= 2;
        uint8_t *d = djn_realloc(b->data, b->cap, cap);
        if (!d) {
            b->failed = true;
            return;
        }
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

void djn_enc_map(djn_buf_t *b, uint32_t n) { S_PK(b); msgpack_pack_map(&pk, n); }
void djn_enc_array(djn_buf_t *b, uint32_t n) { S_PK(b); msgpack_pack_array(&pk, n); }
void djn_enc_nil(djn_buf_t *b) { S_PK(b); msgpack_pack_nil(&pk); }
void djn_enc_bool(djn_buf_t *b, bool v) {
    S_PK(b);
    if (v)
        msgpack_pack_true(&pk);
    else
        msgpack_pack_false(&pk);
}
void djn_enc_int(djn_buf_t *b, int64_t v) { S_PK(b); msgpack_pack_int64(&pk, v); }
void djn_enc_uint(djn_buf_t *b, uint64_t v) { S_PK(b); msgpack_pack_uint64(&pk, v); }
void djn_enc_float(djn_buf_t *b, double v) { S_PK(b); msgpack_pack_double(&pk, v); }
void djn_enc_str(djn_buf_t *b, const char *s, size_t n) {
    S_PK(b);
    msgpack_pack_str(&pk, n);
    msgpack_pack_str_body(&pk, s, n);
}
void djn_enc_cstr(djn_buf_t *b, const char *s) { djn_enc_str(b, s, strlen(s)); }
void djn_enc_bin(djn_buf_t *b, const void *p, size_t n) {
    S_PK(b);
    msgpack_pack_bin(&pk, n);
    msgpack_pack_bin_body(&pk, p, n);
}

static void s_put_le(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

void djn_enc_complex(djn_buf_t *b, double re, double im) {
    S_PK(b);
    uint8_t p[16];
    uint64_t r, i;
    memcpy(&r, &re, 8);
    memcpy(&i, &im, 8);
    s_put_le(p, r);
    s_put_le(p + 8, i);
    msgpack_pack_ext(&pk, 16, DJN_EXT_COMPLEX);
    msgpack_pack_ext_body(&pk, p, 16);
}

void djn_enc_tref(djn_buf_t *b, const djn_tref_t *t) {
    S_PK(b);
    uint8_t p[18 + 16 * DJN_MAX_DIMS];
    unsigned nd = t->ndim <= DJN_MAX_DIMS ? t->ndim : DJN_MAX_DIMS;
    s_put_le(p, t->handle);
    s_put_le(p + 8, (uint64_t)t->offset);
    p[16] = t->dtype;
    p[17] = (uint8_t)nd;
    for (unsigned d = 0; d < nd; d++) {
        s_put_le(p + 18 + 8 * d, (uint64_t)t->sizes[d]);
        s_put_le(p + 18 + 8 * (nd + d), (uint64_t)t->strides[d]);
    }
    size_t n = 18 + 16 * nd;
    msgpack_pack_ext(&pk, n, DJN_EXT_TENSOR);
    msgpack_pack_ext_body(&pk, p, n);
}

void djn_enc_value(djn_buf_t *b, const djn_value_t *v) {
    switch (v->kind) {
    case DJN_V_NONE: djn_enc_nil(b); break;
    case DJN_V_BOOL: djn_enc_bool(b, v->u.b); break;
    case DJN_V_INT: djn_enc_int(b, v->u.i); break;
    case DJN_V_FLOAT: djn_enc_float(b, v->u.f); break;
    case DJN_V_COMPLEX: djn_enc_complex(b, v->u.c[0], v->u.c[1]); break;
    case DJN_V_STR: djn_enc_str(b, v->u.s, v->len); break;
    case DJN_V_BIN: djn_enc_bin(b, v->u.s, v->len); break;
    case DJN_V_TENSOR: djn_enc_tref(b, v->u.t); break;
    case DJN_V_LIST:
        djn_enc_array(b, v->len);
        for (uint32_t i = 0; i < v->len; i++)
            djn_enc_value(b, &v->u.items[i]);
        break;
    case DJN_V_MAP:
        djn_enc_map(b, v->len);
        for (uint32_t i = 0; i < 2 * v->len; i++)
            djn_enc_value(b, &v->u.items[i]);
        break;
    }
}

void djn_enc_header(djn_buf_t *b, uint8_t type, uint64_t sid, uint64_t seq) {
    djn_enc_map(b, 4);
    djn_enc_cstr(b, "type");
    djn_enc_uint(b, type);
    djn_enc_cstr(b, "sid");
    djn_enc_uint(b, sid);
    djn_enc_cstr(b, "seq");
    djn_enc_uint(b, seq);
    djn_enc_cstr(b, "body");
}

void djn_enc_error(djn_buf_t *b, uint64_t sid, uint64_t seq, djn_status_t st, const char *msg) {
    djn_enc_header(b, DJN_MSG_ERROR, sid, seq);
    djn_enc_map(b, 2);
    djn_enc_cstr(b, "code");
    djn_enc_uint(b, (uint64_t)st);
    djn_enc_cstr(b, "msg");
    djn_enc_cstr(b, msg ? msg : djn_status_str(st));
}
