/* djn_sync.h: shadow sync: the weights of a local checkpoint uploaded in the background,
 * only what the server lacks, while the user's code goes on.
 *
 * The caller (djinn/models.py) has built the model over fresh remote handles, declared
 * but holding nothing yet, and hands over, for each handle, where its bytes lie in the
 * local safetensors files. A C thread (no Python, no GIL) then reads each tensor, hashes
 * it (XXH3-128) and stages it as an upload in the client's pending fragment under the
 * client's lock, between the user's own messages, and flushes: the client offers the
 * hashes of large uploads first (HAVE), so content this tenant uploaded before (kept by
 * the server's Text cache: a rerun, a reconnect) is bound without sending a byte.
 *
 * An op that names a handle whose upload is still pending must not run before it: the
 * client calls djn_sync_need for every tensor a node names (and for every read), which
 * stages that one upload at once, into the same fragment as the node, so the server
 * (uploads before nodes, one queue per device) binds it before the node runs. Progress
 * is a few counters the Python progress bar polls. */
#ifndef DJN_SYNC_H
#define DJN_SYNC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "djn_status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct djn_client djn_client_t;
typedef struct djn_sync djn_sync_t;

typedef struct djn_sync_item {
    uint64_t handle;
    uint32_t file;          /* index into the files given to djn_sync_start */
    uint64_t offset, bytes; /* the tensor's bytes in that file */
} djn_sync_item_t;

typedef struct djn_sync_progress {
    uint64_t items, items_done, bytes, bytes_done;
    bool finished;   /* every item staged and flushed, or stopped by an error */
    djn_status_t st; /* the error that stopped it, DJN_OK otherwise */
    char msg[512];
} djn_sync_progress_t;

/* Start syncing; the items' handles must be declared on `device`. NULL with err set on
 * a file that cannot be opened or an item outside its file. */
djn_sync_t *djn_sync_start(djn_client_t *c, int device, const char *const *files, uint32_t nfiles,
                           const djn_sync_item_t *items, uint32_t n, char *err, size_t errlen);
void djn_sync_progress(djn_sync_t *s, djn_sync_progress_t *out);
/* Wait until finished (timeout_ms < 0: no bound); the error that stopped it, if any;
 * DJN_ERR_TIMEOUT if still running. */
djn_status_t djn_sync_wait(djn_sync_t *s, int timeout_ms);
/* Stop the thread (pending items are left unsent) and free everything. */
void djn_sync_destroy(djn_sync_t **self_p);

/* The client's hook (lock held): if `handle` is pending in a sync of this client, stage
 * its upload now. Costs one atomic load when nothing is syncing. */
void djn_sync_need(djn_client_t *c, uint64_t handle);

#ifdef __cplusplus
}
#endif
#endif
