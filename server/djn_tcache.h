/* djn_tcache.h: the Text cache on disk (`djinn-server --text-cache DIR`).
 *
 * Content a tenant uploads as Text (shadow sync's weights, any upload of 64 KiB or
 * more) is written to DIR, content-addressed by its plain XXH3-128, with the names of
 * the tenants that uploaded it; after a restart the server answers a HAVE for content
 * the asking tenant uploaded before by reading it back (and checking its hash), so a
 * client whose upload was cut by a server restart sends only the rest. It plugs into
 * djn_text as its store (djn_text_store_t). Files are written whole and renamed into
 * place, so a crash leaves no half file under a real name. */
#ifndef DJN_TCACHE_H
#define DJN_TCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "djn_exec.h"
#include "djn_text.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct djn_tcache djn_tcache_t;

/* DIR is created (0700) if missing. */
djn_tcache_t *djn_tcache_new(const char *dir, char *err, size_t errlen);
void djn_tcache_destroy(djn_tcache_t **self_p);
/* The executor of device dev (its worker thread is the one that saves and loads). */
void djn_tcache_set_exec(djn_tcache_t *tc, uint32_t dev, djn_exec_t *x);
/* The store to hand to djn_text_set_store. */
djn_text_store_t djn_tcache_store(djn_tcache_t *tc);

#ifdef __cplusplus
}
#endif
#endif
