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
 * djn_msgs.c then checks the tree against the protocol (field presence and types,
 * frame indexes, handle ranges) and fills the typed message structs.
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
    size_t bytes; /* host bytes of every chunk */
};

#define S_CHUNK_HDR ((sizeof(s_chunk_t) + 15) & ~(size_t)15)

djn_arena_t *djn_arena_new(void) {
    return djn_calloc(1, sizeof(djn_arena_t));
}

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
    if (n > SIZE_MAX - S_CHUNK_HDR - 16)
        return NULL;
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
        a->bytes += S_CHUNK_HDR + size;
    }
    void *p = (uint8_t *)c + S_CHUNK_HDR + c->used;
    c->used += n;
    memset(p, 0, n);
    return p;
}

size_t djn_arena_bytes(const djn_arena_t *a) {
    return a ? a->bytes + sizeof(*a) : 0;
}

/* ------------------------------------------------------------------ helpers */

size_t djn_dtype_size(uint32_t dtype) {
    switch (dtype) {
    case DJN_DTYPE_U8:
    case DJN_DTYPE_I8:
    case DJN_DTYPE_BOOL:
    case DJN_DTYPE_F8_E5M2:
    case DJN_DTYPE_F8_E4M3FN:
    case DJN_DTYPE_F8_E5M2FNUZ:
    case DJN_DTYPE_F8_E4M3FNUZ:
    case DJN_DTYPE_F8_E8M0FNU:
        return 1;
    case DJN_DTYPE_I16:
    case DJN_DTYPE_F16:
    case DJN_DTYPE_BF16:
    case DJN_DTYPE_U16:
        return 2;
    case DJN_DTYPE_I32:
    case DJN_DTYPE_F32:
    case DJN_DTYPE_C32:
    case DJN_DTYPE_U32:
        return 4;
    case DJN_DTYPE_I64:
    case DJN_DTYPE_F64:
    case DJN_DTYPE_C64:
    case DJN_DTYPE_U64:
        return 8;
    case DJN_DTYPE_C128:
        return 16;
    default:
        return 0;
    }
}

bool djn_tref_extent(const djn_tref_t *t, uint64_t *begin, uint64_t *end) {
    size_t isz = djn_dtype_size(t->dtype);
    const int64_t lim = (int64_t)1 << 62;
    if (!isz || t->offset < 0 || t->offset > lim || t->ndim > DJN_MAX_DIMS)
        return false;
    bool empty = false;
    for (unsigned d = 0; d < t->ndim; d++) {
        /* no negative strides: ATen stores strides as given but PyTorch never makes a
         * negative one, and kernels that assume otherwise would walk off the storage */
        if (t->sizes[d] < 0 || t->sizes[d] > lim || t->strides[d] < 0 || t->strides[d] > lim)
            return false;
        empty |= t->sizes[d] == 0;
    }
    if ((uint64_t)t->offset > UINT64_MAX / isz - 1)
        return false;
    if (empty) {
        *begin = *end = (uint64_t)t->offset * isz;
        return true;
    }
    int64_t hi = t->offset;
    for (unsigned d = 0; d < t->ndim; d++) {
        int64_t sz = t->sizes[d], st = t->strides[d];
        if (sz > 1 && st != 0 && (sz - 1) > (lim - hi) / st)
            return false;
        hi += (sz - 1) * st;
    }
    if ((uint64_t)hi + 1 > UINT64_MAX / isz)
        return false;
    *begin = (uint64_t)t->offset * isz;
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
    case 0xc4:
    case 0xd9: /* bin8 / str8 */
        if (!s_need(s, 1))
            return false;
        s->p += 1;
        return s_skip(s, s->p[-1]);
    case 0xc5:
    case 0xda:
        if (!s_need(s, 2))
            return false;
        s->p += 2;
        return s_skip(s, s_be(s->p - 2, 2));
    case 0xc6:
    case 0xdb:
        if (!s_need(s, 4))
            return false;
        s->p += 4;
        return s_skip(s, s_be(s->p - 4, 4));
    case 0xc7:
    case 0xc8:
    case 0xc9: { /* ext 8/16/32 */
        int w = c == 0xc7 ? 1 : c == 0xc8 ? 2 : 4;
        if (!s_need(s, (size_t)w + 1))
            return false;
        uint64_t n = s_be(s->p, w);
        int8_t t = (int8_t)s->p[w];
        s->p += w + 1;
        return s_scan_ext(s, t, n);
    }
    case 0xca:
        return s_skip(s, 4);
    case 0xcb:
        return s_skip(s, 8);
    case 0xcc:
    case 0xd0:
        return s_skip(s, 1);
    case 0xcd:
    case 0xd1:
        return s_skip(s, 2);
    case 0xce:
    case 0xd2:
        return s_skip(s, 4);
    case 0xcf:
    case 0xd3:
        return s_skip(s, 8);
    case 0xd4:
    case 0xd5:
    case 0xd6:
    case 0xd7:
    case 0xd8: { /* fixext 1..16 */
        uint64_t n = 1ull << (c - 0xd4);
        if (!s_need(s, 1))
            return false;
        int8_t t = (int8_t)*s->p++;
        return s_scan_ext(s, t, n);
    }
    case 0xdc:
        if (!s_need(s, 2))
            return false;
        s->p += 2;
        return s_scan_items(s, s_be(s->p - 2, 2), depth);
    case 0xdd:
        if (!s_need(s, 4))
            return false;
        s->p += 4;
        return s_scan_items(s, s_be(s->p - 4, 4), depth);
    case 0xde:
        if (!s_need(s, 2))
            return false;
        s->p += 2;
        return s_scan_items(s, 2 * s_be(s->p - 2, 2), depth);
    case 0xdf:
        if (!s_need(s, 4))
            return false;
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
    case MSGPACK_OBJECT_NIL:
        v->kind = DJN_V_NONE;
        return true;
    case MSGPACK_OBJECT_BOOLEAN:
        v->kind = DJN_V_BOOL;
        v->u.b = o->via.boolean;
        return true;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        v->kind = DJN_V_INT;
        v->u.i = (int64_t)o->via.u64; /* handles above 2^63 wrap; compared bitwise */
        return true;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        v->kind = DJN_V_INT;
        v->u.i = o->via.i64;
        return true;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        v->kind = DJN_V_FLOAT;
        v->u.f = o->via.f64;
        return true;
    case MSGPACK_OBJECT_STR:
    case MSGPACK_OBJECT_BIN: {
        v->kind = o->type == MSGPACK_OBJECT_STR ? DJN_V_STR : DJN_V_BIN;
        v->len = o->via.str.size;
        char *s = djn_arena_alloc(a, (size_t)v->len + 1);
        if (!s)
            return false;
        if (v->len)
            memcpy(s, o->via.str.ptr, v->len);
        v->u.s = s;
        return true;
    }
    case MSGPACK_OBJECT_ARRAY: {
        v->kind = DJN_V_LIST;
        v->len = o->via.array.size;
        v->u.items = djn_arena_alloc(a, sizeof(djn_value_t) * (v->len ? v->len : 1));
        if (!v->u.items)
            return false;
        for (uint32_t i = 0; i < v->len; i++)
            if (!s_convert(&o->via.array.ptr[i], a, &v->u.items[i]))
                return false;
        return true;
    }
    case MSGPACK_OBJECT_MAP: {
        v->kind = DJN_V_MAP;
        v->len = o->via.map.size;
        v->u.items = djn_arena_alloc(a, sizeof(djn_value_t) * 2 * (v->len ? v->len : 1));
        if (!v->u.items)
            return false;
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
        if (!t)
            return false;
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
    default:
        return false;
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
        s_err(err, errlen, "%zu trailing bytes after the msgpack header", (size_t)(s.end - s.p));
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

static bool s_clone_into(djn_arena_t *a, djn_value_t *dst, const djn_value_t *src, int depth) {
    *dst = *src;
    if (depth > DJN_MAX_DEPTH + 1)
        return false;
    switch (src->kind) {
    case DJN_V_STR:
    case DJN_V_BIN: {
        char *s = djn_arena_alloc(a, (size_t)src->len + 1);
        if (!s)
            return false;
        if (src->len)
            memcpy(s, src->u.s, src->len);
        dst->u.s = s;
        return true;
    }
    case DJN_V_TENSOR: {
        djn_tref_t *t = djn_arena_alloc(a, sizeof(*t));
        if (!t)
            return false;
        *t = *src->u.t;
        dst->u.t = t;
        return true;
    }
    case DJN_V_LIST:
    case DJN_V_MAP: {
        uint32_t n = src->kind == DJN_V_MAP ? 2 * src->len : src->len;
        djn_value_t *items = djn_arena_alloc(a, sizeof(djn_value_t) * (n ? n : 1));
        if (!items)
            return false;
        for (uint32_t i = 0; i < n; i++)
            if (!s_clone_into(a, &items[i], &src->u.items[i], depth + 1))
                return false;
        dst->u.items = items;
        return true;
    }
    default:
        return true;
    }
}

djn_value_t *djn_value_clone(djn_arena_t *a, const djn_value_t *v, uint32_t n) {
    djn_value_t *out = djn_arena_alloc(a, sizeof(djn_value_t) * (n ? n : 1));
    if (!out)
        return NULL;
    for (uint32_t i = 0; i < n; i++)
        if (!s_clone_into(a, &out[i], &v[i], 0))
            return NULL;
    return out;
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

bool djn_buf_reserve(djn_buf_t *b, size_t n) {
    if (b->failed)
        return false;
    if (b->cap - b->len < n) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap - b->len < n)
            cap *= 2;
        uint8_t *d = djn_realloc(b->data, b->cap, cap);
        if (!d) {
            b->failed = true;
            return false;
        }
        b->data = d;
        b->cap = cap;
    }
    return true;
}

void djn_buf_raw(djn_buf_t *b, const void *p, size_t n) {
    if (n == 0 || !djn_buf_reserve(b, n))
        return;
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

void djn_enc_map(djn_buf_t *b, uint32_t n) {
    S_PK(b);
    msgpack_pack_map(&pk, n);
}
void djn_enc_array(djn_buf_t *b, uint32_t n) {
    S_PK(b);
    msgpack_pack_array(&pk, n);
}
void djn_enc_nil(djn_buf_t *b) {
    S_PK(b);
    msgpack_pack_nil(&pk);
}
void djn_enc_bool(djn_buf_t *b, bool v) {
    S_PK(b);
    if (v)
        msgpack_pack_true(&pk);
    else
        msgpack_pack_false(&pk);
}
void djn_enc_int(djn_buf_t *b, int64_t v) {
    S_PK(b);
    msgpack_pack_int64(&pk, v);
}
void djn_enc_uint(djn_buf_t *b, uint64_t v) {
    S_PK(b);
    msgpack_pack_uint64(&pk, v);
}
void djn_enc_float(djn_buf_t *b, double v) {
    S_PK(b);
    msgpack_pack_double(&pk, v);
}
void djn_enc_str(djn_buf_t *b, const char *s, size_t n) {
    S_PK(b);
    msgpack_pack_str(&pk, n);
    msgpack_pack_str_body(&pk, s, n);
}
void djn_enc_cstr(djn_buf_t *b, const char *s) {
    djn_enc_str(b, s, strlen(s));
}
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
    case DJN_V_NONE:
        djn_enc_nil(b);
        break;
    case DJN_V_BOOL:
        djn_enc_bool(b, v->u.b);
        break;
    case DJN_V_INT:
        djn_enc_int(b, v->u.i);
        break;
    case DJN_V_FLOAT:
        djn_enc_float(b, v->u.f);
        break;
    case DJN_V_COMPLEX:
        djn_enc_complex(b, v->u.c[0], v->u.c[1]);
        break;
    case DJN_V_STR:
        djn_enc_str(b, v->u.s, v->len);
        break;
    case DJN_V_BIN:
        djn_enc_bin(b, v->u.s, v->len);
        break;
    case DJN_V_TENSOR:
        djn_enc_tref(b, v->u.t);
        break;
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
