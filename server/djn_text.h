/* djn_text.h: the Text segment's index: content-addressed, read-only, reference-counted
 * storages shared by every session on a device.
 *
 * Weights uploaded by N sessions (N notebooks, N torchrun ranks) are stored once. The
 * key is the XXH3-128 of the bytes plus the device; the server computes the hash of
 * every upload itself before an entry is created, so a client cannot file bytes under
 * another content's name. A session that writes to a Text tensor first receives a
 * private copy (copy-on-write, done by the session layer); entries die with their last
 * reference. */
#ifndef DJN_TEXT_H
#define DJN_TEXT_H

#include <stdint.h>

#include "djn_exec.h"
#include "djn_status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct djn_text djn_text_t;
typedef struct djn_text_key {
    uint64_t hi, lo;
    uint32_t dev;
} djn_text_key_t;

typedef struct djn_text_stats {
    uint64_t entries, bytes, refs, hits, inserts;
} djn_text_stats_t;

djn_text_t *djn_text_new(void);
void djn_text_destroy(djn_text_t **self_p);
/* A new reference to the content, or NULL if absent. The storage is borrowed: valid
 * while the reference is held. */
djn_stor_t *djn_text_acquire(djn_text_t *t, const djn_text_key_t *k);
/* File a storage under its content (retained); if the content is already there the
 * existing entry gains a reference instead. Returns the storage now filed, borrowed. */
djn_stor_t *djn_text_insert(djn_text_t *t, const djn_text_key_t *k, djn_stor_t *stor);
void djn_text_release(djn_text_t *t, const djn_text_key_t *k);
void djn_text_stats(djn_text_t *t, djn_text_stats_t *out);
/* XXH3-128 of bytes (what clients and the server both compute). */
void djn_text_hash(const void *bytes, uint64_t n, uint64_t *hi, uint64_t *lo);

#ifdef __cplusplus
}
#endif
#endif
