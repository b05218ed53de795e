/* djn_slab.c: bump allocator over offsets with watermark resets (see djn_slab.h).
 *
 * alloc(n):
 *   1. off = round_up(top, align), computed without overflow (top <= capacity).
 *   2. If max(n, 1) > capacity - off: DJN_ERR_OOM, nothing changed.
 *   3. top = off + max(n, 1); high_water = max(high_water, top).
 * reserve_at(off, n):
 *   1. off not a multiple of align: DJN_ERR_ARGS. n > capacity or off > capacity - n:
 *      DJN_ERR_OOM.
 *   2. top = max(top, off + n); high_water likewise.
 * reset(mark): top = mark (assert mark <= top).
 *
 * Invariants: top <= high_water <= capacity; every block handed out since the last reset
 * to a mark below it lies in [0, top); bump offsets are multiples of align and strictly
 * increase between resets. */
#include "djn_slab.h"

#include <assert.h>
#include <string.h>

#include "djn_mem.h"

struct djn_slab {
    uint64_t capacity, align;
    uint64_t top, high_water, resets, allocs;
};

static void s_raise_top(djn_slab_t *s, uint64_t end) {
    if (end > s->top)
        s->top = end;
    if (s->top > s->high_water)
        s->high_water = s->top;
}

djn_slab_t *djn_slab_new(uint64_t capacity, uint32_t align) {
    if (align == 0 || (align & (align - 1)) != 0)
        return NULL;
    djn_slab_t *s = djn_calloc(1, sizeof(*s));
    if (!s)
        goto fail;
    s->capacity = capacity;
    s->align = align;
    return s;
fail:
    djn_slab_destroy(&s);
    return NULL;
}

void djn_slab_destroy(djn_slab_t **self_p) {
    if (!self_p || !*self_p)
        return;
    djn_free(*self_p, sizeof(djn_slab_t));
    *self_p = NULL;
}

djn_status_t djn_slab_alloc(djn_slab_t *s, uint64_t nbytes, uint64_t *offset_out) {
    assert(s && offset_out);
    uint64_t pad = (s->align - (s->top & (s->align - 1))) & (s->align - 1);
    if (pad > s->capacity - s->top)
        return DJN_ERR_OOM;
    uint64_t off = s->top + pad, n = nbytes ? nbytes : 1;
    if (n > s->capacity - off)
        return DJN_ERR_OOM;
    s_raise_top(s, off + n);
    s->allocs++;
    *offset_out = off;
    return DJN_OK;
}

djn_status_t djn_slab_reserve_at(djn_slab_t *s, uint64_t offset, uint64_t nbytes) {
    assert(s);
    if ((offset & (s->align - 1)) != 0)
        return DJN_ERR_ARGS;
    if (nbytes > s->capacity || offset > s->capacity - nbytes)
        return DJN_ERR_OOM;
    s_raise_top(s, offset + nbytes);
    return DJN_OK;
}

uint64_t djn_slab_mark(const djn_slab_t *s) {
    assert(s);
    return s->top;
}

void djn_slab_reset(djn_slab_t *s, uint64_t mark) {
    assert(s && mark <= s->top);
    s->top = mark;
    s->resets++;
}

void djn_slab_stats(const djn_slab_t *s, djn_slab_stats_t *out) {
    assert(s && out);
    memset(out, 0, sizeof(*out));
    out->capacity = s->capacity;
    out->top = s->top;
    out->high_water = s->high_water;
    out->resets = s->resets;
    out->allocs = s->allocs;
}
