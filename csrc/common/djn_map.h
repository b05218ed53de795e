/* djn_map.h: an open-addressing hash map from non-zero u64 keys to u64 values.
 *
 * Used for handle tables (handle -> storage), the recorder's slot table (handle ->
 * fragment slot) and the fetch cache index. Linear probing over a power-of-two table
 * kept at most 1/2 full; deletion by backward shift (no tombstones), so lookups stay
 * short after churn. Key 0 is reserved as "empty": handles are never 0. */
#ifndef DJN_MAP_H
#define DJN_MAP_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct djn_map {
    uint64_t *keys, *vals;
    uint32_t cap, len; /* cap is 0 or a power of two */
} djn_map_t;

/* All functions accept a zero-initialised map. */
bool djn_map_put(djn_map_t *m, uint64_t key, uint64_t val); /* false on OOM */
bool djn_map_get(const djn_map_t *m, uint64_t key, uint64_t *val);
bool djn_map_del(djn_map_t *m, uint64_t key, uint64_t *val); /* false if absent */
void djn_map_clear(djn_map_t *m);                            /* keeps capacity */
void djn_map_release(djn_map_t *m);                          /* frees memory */
/* Iterate: for (uint32_t i = 0; djn_map_next(m, &i, &k, &v);) ... (no mutation inside) */
bool djn_map_next(const djn_map_t *m, uint32_t *it, uint64_t *key, uint64_t *val);

#ifdef __cplusplus
}
#endif
#endif
