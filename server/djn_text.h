/* djn_text.h: the Text segment's index: content-addressed, read-only, reference-counted
 * storages shared by every session on a device.
 *
 * Weights uploaded by N sessions (N notebooks, N torchrun ranks, N tenants) are stored
 * once. Sharing must leak nothing, so an entry is found three ways, each for one use:
 *   - by its key, a keyed hash of the bytes (XXH3-128 with a random secret drawn when
 *     the server starts, which no client knows): an upload of identical bytes finds the
 *     entry, and the bytes are compared before they are shared (djn_text_same_fn), so
 *     not even a crafted collision can make one tenant's upload read another's content;
 *   - by the plain XXH3-128 a client offers in HAVE, *and* the tenant: an entry answers
 *     only the tenants that uploaded its bytes before (its owners), so HAVE is no oracle
 *     for what others hold;
 *   - by storage: a handle bound to a shared storage by any path (an alias, a view a
 *     kernel returned) is recognised as shared, so writes to it copy first.
 * An entry whose last reference goes is kept, unreferenced, in a cache of at most
 * djn_text_set_cache bytes (least recently released first out), so that a rerun, a
 * reconnecting client or a model the store loaded finds it again; with a budget of 0
 * entries die with their last reference. A session that writes to a Text tensor first
 * receives a private copy (copy-on-write, done by the session layer). */
#ifndef DJN_TEXT_H
#define DJN_TEXT_H

#include <stdbool.h>
#include <stdint.h>

#include "djn_exec.h"
#include "djn_status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct djn_text djn_text_t;
typedef struct djn_text_key {
    uint64_t hi, lo; /* keyed hash of the content */
    uint32_t dev;
    uint32_t serial; /* tells apart entries whose keys collide (content differs) */
} djn_text_key_t;

typedef struct djn_text_stats {
    uint64_t entries, bytes, refs, hits, inserts, verified_bytes;
    uint64_t cached_entries, cached_bytes, evictions; /* unreferenced, kept by the cache */
} djn_text_stats_t;

/* Does the filed storage hold the same bytes as the caller's? */
typedef bool (*djn_text_same_fn)(void *ctx, djn_stor_t *filed);

djn_text_t *djn_text_new(void); /* draws the secret */
void djn_text_destroy(djn_text_t **self_p);

/* The keyed hash of some bytes (key->dev is left alone), and their plain XXH3-128 (the
 * hash a client offers in HAVE). */
void djn_text_hash(const djn_text_t *t, const void *bytes, uint64_t n, djn_text_key_t *key,
                   uint64_t plain[2]);
/* The same two hashes over bytes that arrive in pieces (an upload in chunks): update
 * with each piece in order, then final. Equal to djn_text_hash of the concatenation. The
 * hasher reads the secret of t, which must outlive it. */
typedef struct djn_text_hasher djn_text_hasher_t;
djn_text_hasher_t *djn_text_hasher_new(const djn_text_t *t);
void djn_text_hasher_update(djn_text_hasher_t *h, const void *bytes, uint64_t n);
void djn_text_hasher_final(djn_text_hasher_t *h, djn_text_key_t *key, uint64_t plain[2]);
void djn_text_hasher_destroy(djn_text_hasher_t **h_p);
/* Share an upload's bytes: an entry under key whose content `same` confirms gains a
 * reference and the tenant as an owner; *key gets its serial.
 * NULL: none holds these bytes. The storage is borrowed: valid while the reference is
 * held. */
djn_stor_t *djn_text_share(djn_text_t *t, djn_text_key_t *key, uint32_t tenant,
                           djn_text_same_fn same, void *ctx);
/* File a new storage (retained) under key, owned by tenant; *key gets its serial.
 * Returns the storage filed (borrowed) with one reference for the caller, NULL on OOM.
 * With `same`, an entry that another thread filed under key since the caller's
 * djn_text_share missed, and whose content `same` confirms, is shared instead (as
 * djn_text_share would: stor is not filed), so that two uploads of the same bytes at
 * once still make one copy. */
djn_stor_t *djn_text_insert(djn_text_t *t, djn_text_key_t *key, const uint64_t plain[2],
                            uint32_t tenant, djn_stor_t *stor, djn_text_same_fn same, void *ctx);
/* HAVE: a new reference to content of this plain hash on dev that `tenant` uploaded
 * before, or NULL (whether or not another tenant holds it). */
djn_stor_t *djn_text_acquire_owned(djn_text_t *t, uint32_t dev, const uint64_t plain[2],
                                   uint32_t tenant, djn_text_key_t *key_out);
/* Placement: the size of content of this plain hash and size on dev that `tenant`
 * uploaded before (the rule HAVE answers by), or 0. Takes no reference. */
uint64_t djn_text_held(djn_text_t *t, uint32_t dev, const uint64_t plain[2], uint64_t nbytes,
                       uint32_t tenant);
/* A new reference to the entry holding this very storage, or NULL if it is not shared. */
djn_stor_t *djn_text_acquire_storage(djn_text_t *t, const djn_stor_t *stor,
                                     djn_text_key_t *key_out);
void djn_text_release(djn_text_t *t, const djn_text_key_t *key);
/* A new reference to the entry filed under exactly this key (serial included), cached or
 * referenced, or NULL if it is gone (the model store finds its tensors again this way). */
djn_stor_t *djn_text_acquire_key(djn_text_t *t, const djn_text_key_t *key);
/* Bytes of unreferenced entries kept for reuse (LRU); 0: none (the default). */
void djn_text_set_cache(djn_text_t *t, uint64_t bytes);

/* A store that outlives the process (djn_tcache.h, --text-cache DIR): every entry a
 * tenant uploads is saved (save_fn, after it is filed, outside the lock, on the worker
 * of its device), and a HAVE that finds nothing in memory asks load_fn for content this
 * tenant uploaded before: a new storage on dev with its keyed hash in *key (computed
 * with djn_text_hash), or NULL. Model store content (no owner) is never saved. */
typedef struct djn_text_store {
    void *ctx;
    void (*save_fn)(void *ctx, const djn_text_key_t *key, const uint64_t plain[2],
                    const char *tenant, djn_stor_t *stor);
    djn_stor_t *(*load_fn)(void *ctx, djn_text_t *t, uint32_t dev, const uint64_t plain[2],
                           const char *tenant, djn_text_key_t *key);
} djn_text_store_t;
void djn_text_set_store(djn_text_t *t, const djn_text_store_t *store);
/* A small id for a tenant name ("" is the one tenant of a server without keys). */
uint32_t djn_text_tenant(djn_text_t *t, const char *name);
void djn_text_stats(djn_text_t *t, djn_text_stats_t *out);

#ifdef __cplusplus
}
#endif
#endif
