/* exec_stub.c: djn_exec.h without ATen, for fuzzing the server's C core.
 *
 * Storages are refcounted byte buffers, in the VMU when the executor has one (Data, or
 * the slab at a planned offset), so the fuzzer drives the real heap, slab, scrubbing and
 * copy-out. A node "runs" by resolving every tensor reference exactly as the real
 * executor does (outputs and arguments marked written with write=1, so copy-on-write,
 * quotas and lazy materialisation all happen), checking each reference's extent against
 * its storage, then writing a pattern over the bytes every output reaches. Ops named
 * "fail*" fail (the poisoning path); a DYNAMIC node binds a fresh server handle and
 * describes it. That is everything the fragment runtime can observe of an executor. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "djn_codec.h"
#include "djn_exec.h"
#include "djn_mem.h"

typedef struct {
    int refs;
    uint8_t *p;
    uint64_t n;
    djn_vmu_t *vmu; /* NULL: djn_malloc */
} s_buf_t;

struct djn_stor {
    s_buf_t *b;
};

struct djn_exec {
    djn_vmu_t *vmu;
    bool slab; /* allocations of the running node go to the slab */
};

static s_buf_t *s_buf(djn_exec_t *x, uint64_t n, uint64_t slab_off) {
    s_buf_t *b = djn_calloc(1, sizeof(*b));
    if (!b)
        return NULL;
    b->refs = 1;
    b->n = n;
    if (x->vmu) {
        b->vmu = x->vmu;
        b->p = slab_off != UINT64_MAX ? djn_vmu_slab_at(x->vmu, slab_off, n)
                                      : djn_vmu_data_alloc(x->vmu, n);
    } else {
        b->p = djn_calloc(1, n ? n : 1);
    }
    if (!b->p) {
        djn_free(b, sizeof(*b));
        return NULL;
    }
    return b;
}

static void s_unref(s_buf_t *b) {
    if (--b->refs)
        return;
    if (b->vmu)
        djn_vmu_release(b->vmu, b->p);
    else
        djn_free(b->p, b->n ? b->n : 1);
    djn_free(b, sizeof(*b));
}

static djn_stor_t *s_wrap(s_buf_t *b) {
    djn_stor_t *s = djn_malloc(sizeof(*s));
    if (s)
        s->b = b;
    else
        s_unref(b);
    return s;
}

int djn_exec_cuda_count(void) { return 0; }

djn_exec_t *djn_exec_new(const char *device, char *err, size_t errlen) {
    (void)device;
    djn_exec_t *x = djn_calloc(1, sizeof(*x));
    if (!x)
        snprintf(err, errlen, "out of memory");
    return x;
}

void djn_exec_destroy(djn_exec_t **self_p) {
    if (self_p && *self_p) {
        djn_free(*self_p, sizeof(djn_exec_t));
        *self_p = NULL;
    }
}

const char *djn_exec_device(const djn_exec_t *x) {
    (void)x;
    return "cpu";
}

djn_stor_t *djn_stor_retain(djn_stor_t *s) {
    s->b->refs++;
    return s_wrap(s->b);
}

void djn_stor_release(djn_stor_t *s) {
    if (!s)
        return;
    s_unref(s->b);
    djn_free(s, sizeof(*s));
}

uint64_t djn_stor_nbytes(const djn_stor_t *s) { return s->b->n; }
uint64_t djn_stor_id(const djn_stor_t *s) { return (uint64_t)(uintptr_t)s->b; }
void djn_exec_install_allocator(void) {}
void djn_exec_set_threads(int n) { (void)n; }
void djn_exec_use_vmu(djn_exec_t *x, djn_vmu_t *v) { x->vmu = v; }

int djn_exec_in_slab(const djn_exec_t *x, const djn_stor_t *s) {
    return x->vmu && djn_vmu_in_slab(x->vmu, s->b->p);
}

int djn_stor_in_slab(const djn_stor_t *s) {
    djn_vmu_t *v = djn_vmu_find(s->b->p);
    return v && djn_vmu_in_slab(v, s->b->p);
}

djn_status_t djn_exec_alloc(djn_exec_t *x, uint64_t nbytes, uint64_t slab_off, djn_stor_t **out,
                            char *err, size_t errlen) {
    s_buf_t *b = s_buf(x, nbytes, slab_off);
    *out = b ? s_wrap(b) : NULL;
    if (!*out)
        snprintf(err, errlen, "cannot allocate %llu bytes", (unsigned long long)nbytes);
    return *out ? DJN_OK : DJN_ERR_OOM;
}

djn_status_t djn_exec_upload(djn_exec_t *x, const void *bytes, uint64_t n, djn_stor_t **out,
                             char *err, size_t errlen) {
    djn_status_t st = djn_exec_alloc(x, n, UINT64_MAX, out, err, errlen);
    if (st == DJN_OK && n)
        memcpy((*out)->b->p, bytes, n);
    return st;
}

djn_status_t djn_exec_zero(djn_exec_t *x, djn_stor_t *s, char *err, size_t errlen) {
    (void)x, (void)err, (void)errlen;
    memset(s->b->p, 0, s->b->n);
    return DJN_OK;
}

djn_status_t djn_exec_copy(djn_exec_t *x, djn_stor_t *dst, djn_stor_t *src, uint64_t n, char *err,
                           size_t errlen) {
    (void)x;
    if (n > dst->b->n || n > src->b->n) {
        snprintf(err, errlen, "copy beyond a storage");
        return DJN_ERR_ARGS;
    }
    memmove(dst->b->p, src->b->p, n);
    return DJN_OK;
}

bool djn_exec_same(djn_exec_t *x, djn_stor_t *s, const void *bytes, uint64_t n) {
    (void)x;
    return n == s->b->n && (!n || memcmp(s->b->p, bytes, n) == 0);
}

djn_status_t djn_exec_read(djn_exec_t *x, djn_stor_t *s, uint64_t off, uint64_t n, void *dst,
                           char *err, size_t errlen) {
    (void)x;
    if (off > s->b->n || n > s->b->n - off) {
        snprintf(err, errlen, "fetch beyond a storage");
        return DJN_ERR_ARGS;
    }
    if (n)
        memcpy(dst, s->b->p + off, n);
    return DJN_OK;
}

djn_status_t djn_exec_write(djn_exec_t *x, djn_stor_t *s, uint64_t off, const void *bytes,
                            uint64_t n, char *err, size_t errlen) {
    (void)x;
    if (off > s->b->n || n > s->b->n - off) {
        snprintf(err, errlen, "write beyond a storage");
        return DJN_ERR_ARGS;
    }
    if (n)
        memcpy(s->b->p + off, bytes, n);
    return DJN_OK;
}

bool djn_exec_equal(djn_exec_t *x, djn_stor_t *a, djn_stor_t *b) {
    (void)x;
    return a->b->n == b->b->n && (!a->b->n || memcmp(a->b->p, b->b->p, a->b->n) == 0);
}

/* Never lends: the fuzzer's fetches take the copying path. */
bool djn_exec_lend(djn_exec_t *x, djn_stor_t *s, uint64_t off, uint64_t n, const void **data,
                   void **hold) {
    (void)x, (void)s, (void)off, (void)n;
    *data = NULL;
    *hold = NULL;
    return false;
}

void djn_exec_unlend(void *hold) { (void)hold; }

/* Resolve every reference in a value; write a pattern over outputs' extents. */
static djn_status_t s_touch(djn_exec_env_t *env, const djn_value_t *v, int write, int depth,
                            char *err, size_t errlen) {
    if (depth > DJN_MAX_DEPTH + 2)
        return DJN_OK;
    if (v->kind == DJN_V_LIST || v->kind == DJN_V_MAP) {
        uint32_t n = v->kind == DJN_V_MAP ? 2 * v->len : v->len;
        for (uint32_t i = 0; i < n; i++) {
            djn_status_t st = s_touch(env, &v->u.items[i], write, depth + 1, err, errlen);
            if (st != DJN_OK)
                return st;
        }
        return DJN_OK;
    }
    if (v->kind != DJN_V_TENSOR)
        return DJN_OK;
    if (v->u.t->handle >= env->nbinds) {
        snprintf(err, errlen, "unbound slot");
        return DJN_ERR_ARGS;
    }
    uint64_t h = env->binds[v->u.t->handle], b, e;
    djn_stor_t *s = NULL;
    djn_status_t st = env->resolve_fn(env->ctx, h, write, &s, err, errlen);
    if (st != DJN_OK)
        return st;
    if (!djn_tref_extent(v->u.t, &b, &e) || e > s->b->n) {
        snprintf(err, errlen, "reference beyond its storage");
        return DJN_ERR_ARGS;
    }
    if (write && e > b)
        memset(s->b->p + b, 0x5a, e - b);
    return write ? env->written_fn(env->ctx, h, err, errlen) : DJN_OK;
}

djn_status_t djn_exec_node(djn_exec_t *x, const djn_node_t *n, djn_exec_env_t *env, djn_buf_t *dyn,
                           char *err, size_t errlen) {
    if (!strncmp(n->op, "fail", 4)) {
        snprintf(err, errlen, "%s failed on purpose", n->op);
        return DJN_ERR_OP;
    }
    x->slab = env->slab;
    djn_status_t st = DJN_OK;
    for (uint32_t i = 0; st == DJN_OK && i < n->nargs; i++)
        st = s_touch(env, &n->args[i], 0, 0, err, errlen);
    for (uint32_t i = 0; st == DJN_OK && i < n->nouts; i++)
        st = s_touch(env, &n->outs[i], 1, 0, err, errlen);
    if (st == DJN_OK && (n->flags & DJN_NODE_DYNAMIC)) {
        if (!dyn) {
            snprintf(err, errlen, "a DYNAMIC node must be the last node of its fragment");
            st = DJN_ERR_PROTO;
        } else {
            djn_dyn_tensor_t d = {{0}, 16};
            djn_stor_t *s = NULL;
            if ((st = env->new_handle_fn(env->ctx, 16, &d.ref.handle)) == DJN_OK &&
                (st = djn_exec_alloc(x, 16, UINT64_MAX, &s, err, errlen)) == DJN_OK) {
                st = env->bind_fn(env->ctx, d.ref.handle, s);
                djn_stor_release(s);
            }
            d.ref.dtype = DJN_DTYPE_I64;
            d.ref.ndim = 1;
            d.ref.sizes[0] = 2;
            d.ref.strides[0] = 1;
            djn_enc_array(dyn, 1);
            djn_dyn_tensor_encode(dyn, &d);
        }
    }
    x->slab = false;
    return st;
}

void djn_exec_reseed(djn_exec_t *x, djn_exec_env_t *env) { (void)x, (void)env; }
void djn_exec_rng_enter(djn_exec_t *x, djn_exec_env_t *env) { (void)x, (void)env; }
bool djn_exec_rng_exit(djn_exec_t *x, djn_exec_env_t *env) {
    (void)x, (void)env;
    return false;
}
void djn_exec_gen_release(void *gen) { (void)gen; }
void djn_exec_sync(djn_exec_t *x) { (void)x; }
