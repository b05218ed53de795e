/* djn_vec.h: a growable array of fixed-size items on counted host memory.
 *
 * Push reports failure (false) and leaves the vector unchanged, so a caller can undo
 * what it did before; capacity doubles from 64 items. Header-only: a handful of lines. */
#ifndef DJN_VEC_H
#define DJN_VEC_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

#include "djn_mem.h"

typedef struct djn_vec {
    void *data;
    size_t len, cap, isz;
} djn_vec_t;

#define DJN_VEC(type) ((djn_vec_t){NULL, 0, 0, sizeof(type)})
#define DJN_VEC_AT(v, type, i) (((type *)(v)->data)[i])

static inline bool djn_vec_reserve(djn_vec_t *v, size_t n) {
    if (n <= v->cap)
        return true;
    size_t cap = v->cap ? v->cap : 64;
    while (cap < n)
        cap *= 2;
    void *d = djn_realloc(v->data, v->cap * v->isz, cap * v->isz);
    if (!d)
        return false;
    v->data = d;
    v->cap = cap;
    return true;
}

static inline bool djn_vec_push(djn_vec_t *v, const void *item) {
    if (!djn_vec_reserve(v, v->len + 1))
        return false;
    memcpy((char *)v->data + v->len * v->isz, item, v->isz);
    v->len++;
    return true;
}

static inline void djn_vec_release(djn_vec_t *v) {
    djn_free(v->data, v->cap * v->isz);
    v->data = NULL;
    v->len = v->cap = 0;
}

#endif
