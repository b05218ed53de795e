/* djn_map.c: open addressing with linear probing and backward-shift deletion. */
#include "djn_map.h"

#include <string.h>

#include "djn_mem.h"

static inline uint32_t s_hash(uint64_t k, uint32_t mask) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return (uint32_t)k & mask;
}

static bool s_grow(djn_map_t *m) {
    uint32_t ncap = m->cap ? m->cap * 2 : 64;
    uint64_t *nk = djn_calloc(ncap, sizeof(uint64_t));
    uint64_t *nv = djn_calloc(ncap, sizeof(uint64_t));
    if (!nk || !nv) {
        djn_free(nk, ncap * sizeof(uint64_t));
        djn_free(nv, ncap * sizeof(uint64_t));
        return false;
    }
    for (uint32_t i = 0; i < m->cap; i++) {
        if (!m->keys[i])
            continue;
        uint32_t j = s_hash(m->keys[i], ncap - 1);
        while (nk[j])
            j = (j + 1) & (ncap - 1);
        nk[j] = m->keys[i];
        nv[j] = m->vals[i];
    }
    djn_free(m->keys, m->cap * sizeof(uint64_t));
    djn_free(m->vals, m->cap * sizeof(uint64_t));
    m->keys = nk;
    m->vals = nv;
    m->cap = ncap;
    return true;
}

bool djn_map_put(djn_map_t *m, uint64_t key, uint64_t val) {
    if (!key)
        return false;
    if ((m->len + 1) * 2 > m->cap && !s_grow(m))
        return false;
    uint32_t mask = m->cap - 1, i = s_hash(key, mask);
    while (m->keys[i] && m->keys[i] != key)
        i = (i + 1) & mask;
    if (!m->keys[i]) {
        m->keys[i] = key;
        m->len++;
    }
    m->vals[i] = val;
    return true;
}

bool djn_map_get(const djn_map_t *m, uint64_t key, uint64_t *val) {
    if (!m->cap || !key)
        return false;
    uint32_t mask = m->cap - 1, i = s_hash(key, mask);
    while (m->keys[i]) {
        if (m->keys[i] == key) {
            if (val)
                *val = m->vals[i];
            return true;
        }
        i = (i + 1) & mask;
    }
    return false;
}

bool djn_map_del(djn_map_t *m, uint64_t key, uint64_t *val) {
    if (!m->cap || !key)
        return false;
    uint32_t mask = m->cap - 1, i = s_hash(key, mask);
    while (m->keys[i] && m->keys[i] != key)
        i = (i + 1) & mask;
    if (!m->keys[i])
        return false;
    if (val)
        *val = m->vals[i];
    /* backward shift: pull later members of the probe run into the hole */
    uint32_t hole = i, j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (!m->keys[j])
            break;
        uint32_t home = s_hash(m->keys[j], mask);
        /* can the entry at j move to hole? only if home is not in (hole, j] cyclically */
        bool between = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (!between) {
            m->keys[hole] = m->keys[j];
            m->vals[hole] = m->vals[j];
            hole = j;
        }
    }
    m->keys[hole] = 0;
    m->vals[hole] = 0;
    m->len--;
    return true;
}

void djn_map_clear(djn_map_t *m) {
    if (m->cap && m->len) {
        memset(m->keys, 0, m->cap * sizeof(uint64_t));
        memset(m->vals, 0, m->cap * sizeof(uint64_t));
    }
    m->len = 0;
}

void djn_map_release(djn_map_t *m) {
    djn_free(m->keys, m->cap * sizeof(uint64_t));
    djn_free(m->vals, m->cap * sizeof(uint64_t));
    memset(m, 0, sizeof(*m));
}

bool djn_map_next(const djn_map_t *m, uint32_t *it, uint64_t *key, uint64_t *val) {
    while (*it < m->cap) {
        uint32_t i = (*it)++;
        if (m->keys[i]) {
            *key = m->keys[i];
            if (val)
                *val = m->vals[i];
            return true;
        }
    }
    return false;
}
