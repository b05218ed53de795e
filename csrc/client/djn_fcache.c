/* djn_fcache.c: fetch cache (see djn_fcache.h): a djn_map from handle to an entry. */
#include "djn_fcache.h"

#include <string.h>

#include "djn_map.h"
#include "djn_mem.h"

typedef struct {
    uint64_t off, n;
    uint8_t *bytes;
} s_entry_t;

struct djn_fcache {
    djn_map_t map; /* handle -> s_entry_t* */
    uint64_t bytes, capacity;
};

djn_fcache_t *djn_fcache_new(uint64_t capacity) {
    djn_fcache_t *fc = djn_calloc(1, sizeof(*fc));
    if (fc)
        fc->capacity = capacity;
    return fc;
}

void djn_fcache_destroy(djn_fcache_t **self_p) {
    if (!self_p || !*self_p)
        return;
    djn_fcache_clear(*self_p);
    djn_map_release(&(*self_p)->map);
    djn_free(*self_p, sizeof(djn_fcache_t));
    *self_p = NULL;
}

static void s_entry_free(djn_fcache_t *fc, s_entry_t *e) {
    fc->bytes -= e->n;
    djn_free(e->bytes, e->n);
    djn_free(e, sizeof(*e));
}

bool djn_fcache_read(djn_fcache_t *fc, uint64_t handle, uint64_t off, uint64_t n, void *dst) {
    uint64_t p;
    if (!djn_map_get(&fc->map, handle, &p))
        return false;
    s_entry_t *e = (s_entry_t *)(uintptr_t)p;
    if (off < e->off || off - e->off > e->n || n > e->n - (off - e->off))
        return false;
    if (n)
        memcpy(dst, e->bytes + (off - e->off), n);
    return true;
}

void djn_fcache_put(djn_fcache_t *fc, uint64_t handle, uint64_t off, const void *bytes,
                    uint64_t n) {
    if (n > fc->capacity)
        return;
    djn_fcache_drop(fc, handle);
    if (fc->bytes + n > fc->capacity)
        djn_fcache_clear(fc);
    s_entry_t *e = djn_malloc(sizeof(*e));
    uint8_t *copy = djn_malloc(n);
    if (!e || !copy || !djn_map_put(&fc->map, handle, (uint64_t)(uintptr_t)e)) {
        djn_free(e, sizeof(*e));
        djn_free(copy, n);
        return;
    }
    if (n)
        memcpy(copy, bytes, n);
    *e = (s_entry_t){off, n, copy};
    fc->bytes += n;
}

void djn_fcache_drop(djn_fcache_t *fc, uint64_t handle) {
    uint64_t p;
    if (djn_map_del(&fc->map, handle, &p))
        s_entry_free(fc, (s_entry_t *)(uintptr_t)p);
}

void djn_fcache_clear(djn_fcache_t *fc) {
    uint64_t k, v;
    for (uint32_t it = 0; djn_map_next(&fc->map, &it, &k, &v);)
        s_entry_free(fc, (s_entry_t *)(uintptr_t)v);
    djn_map_clear(&fc->map);
}

uint64_t djn_fcache_bytes(const djn_fcache_t *fc) {
    return fc->bytes;
}
