/* djn_fcache.h: the client's fetch cache.
 *
 * Printing a tensor reads it element by element (item() per element, summaries); each
 * read of a storage the client already fetched is served from here instead of a round
 * trip. Entries are keyed by handle and hold a byte range of the storage; the client
 * drops a handle's entry whenever a node writes to it, an upload replaces it, or it is
 * freed. Capacity is bounded: past it, everything is dropped (the working set of a
 * print refills in one fetch). */
#ifndef DJN_FCACHE_H
#define DJN_FCACHE_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct djn_fcache djn_fcache_t;

djn_fcache_t *djn_fcache_new(uint64_t capacity);
void djn_fcache_destroy(djn_fcache_t **self_p);
/* Copy [off, off+n) of the handle's storage into dst if cached. */
bool djn_fcache_read(djn_fcache_t *fc, uint64_t handle, uint64_t off, uint64_t n, void *dst);
/* Keep a copy of bytes [off, off+n) of the handle's storage (no-op past capacity or on
 * OOM: caching is an optimisation). */
void djn_fcache_put(djn_fcache_t *fc, uint64_t handle, uint64_t off, const void *bytes, uint64_t n);
void djn_fcache_drop(djn_fcache_t *fc, uint64_t handle);
void djn_fcache_clear(djn_fcache_t *fc);
uint64_t djn_fcache_bytes(const djn_fcache_t *fc);

#ifdef __cplusplus
}
#endif
#endif
