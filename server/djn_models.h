/* djn_models.h: the server's model store (`djinn-server --models DIR`), for ghost loading.
 *
 * DIR holds Hugging Face model folders: DIR/NAME/config.json with model.safetensors, or
 * shards named by model.safetensors.index.json, or any *.safetensors; NAME may be one
 * level deeper too (DIR/org/name, named "org/name"). The server reads the files itself
 * (memory-mapped) into the shared Text segment of the device that asks, once for every
 * tenant: each tensor is filed under the keyed hash of its bytes (djn_text_hash), so a
 * client upload of identical bytes shares the same storage, and vice versa. The store
 * keeps no reference of its own: it remembers each tensor's Text key, and the Text
 * cache (djn_text_set_cache, --text-cache-bytes) keeps the tensors of models no session
 * uses any more, least recently released out first; a tensor evicted from it is read
 * from its file again on the next load.
 *
 * Access: each load names the tenant's allowed models ("*" or "a,b"); the store answers
 * an unknown name with the names the tenant may load, and a refused one with
 * DJN_ERR_DENIED naming the model. Model content is filed with no owner, so HAVE never
 * answers for it (it is reached by name, under the access list, only). */
#ifndef DJN_MODELS_H
#define DJN_MODELS_H

#include <stdbool.h>
#include <stdint.h>

#include "djn_codec.h"
#include "djn_exec.h"
#include "djn_proto.h"
#include "djn_session.h"
#include "djn_status.h"
#include "djn_text.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct djn_models djn_models_t;

/* Scan dir (NULL or "": a store with no models). NULL with err on a dir that cannot be
 * read. Model files are parsed when a model is first asked for. */
djn_models_t *djn_models_new(const char *dir, djn_text_t *text, char *err, size_t errlen);
void djn_models_destroy(djn_models_t **self_p);
uint32_t djn_models_count(const djn_models_t *m);

/* Whether an access list ("*", "a,b", "" for none) names a model. */
bool djn_models_allowed(const char *acl, const char *name);

/* LOAD_MODEL without binds: the model's config and tensors into *rep, allocated in `a`
 * (the reply's arena). With binds: each handle of the session bound (under its lock) to
 * the named tensor's Text storage on device dev, read from the files when Text does not
 * hold it; rep->bound and rep->read_bytes say how it went. `tenant` names the asker in
 * errors. Errors: DJN_ERR_ARGS (unknown model or tensor; err lists what exists),
 * DJN_ERR_DENIED (not allowed), DJN_ERR_IO (a file went missing or changed),
 * DJN_ERR_PROTO (a malformed file), DJN_ERR_QUOTA, DJN_ERR_OOM. */
djn_status_t djn_models_load(djn_models_t *m, djn_exec_t *x, uint32_t dev, djn_session_t *s,
                             const djn_load_req_t *req, const char *acl, const char *tenant,
                             djn_arena_t *a, djn_load_rep_t *rep, char *err, size_t errlen);

/* Placement (PLACE): the bytes of model `name` on device dev if the access list allows
 * it and a bind of it succeeded there (its tensors may since have left the Text cache:
 * then they are read again on the next load), else 0. Never waits for a load. */
uint64_t djn_models_held(djn_models_t *m, const char *name, const char *acl, uint32_t dev);

#ifdef __cplusplus
}
#endif
#endif
