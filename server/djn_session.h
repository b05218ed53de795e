/* djn_session.h: sessions and their handle tables.
 *
 * A session is what one client process holds on the server: its handles (each naming a
 * device storage, or a declared size not yet materialised), its random generators, its
 * byte count and its lease. A session can name only its own handles: every lookup goes
 * through its own table, so a guessed or replayed handle of another session is simply
 * "unknown". Sessions are reference-counted: the table holds one reference, each queued
 * job one more; closing removes the session from the table and the last release frees
 * every storage it held. */
#ifndef DJN_SESSION_H
#define DJN_SESSION_H

#include <stdbool.h>
#include <stdint.h>

#include "djn_exec.h"
#include "djn_text.h"
#include "djn_status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct djn_session djn_session_t;
typedef struct djn_sessions djn_sessions_t;

typedef struct djn_sessions_stats {
    uint64_t open, opened_total, closed_total, expired_total, handles, bytes;
} djn_sessions_stats_t;

djn_sessions_t *djn_sessions_new(uint64_t lease_ms, uint64_t quota_bytes, uint32_t max_queued,
                                 djn_text_t *text);
void djn_sessions_destroy(djn_sessions_t **self_p);
djn_session_t *djn_sessions_open(djn_sessions_t *t, int64_t now_ms); /* returns a reference */
djn_session_t *djn_sessions_get(djn_sessions_t *t, uint64_t sid, int64_t now_ms); /* + ref, renews */
bool djn_sessions_close(djn_sessions_t *t, uint64_t sid);
uint32_t djn_sessions_expire(djn_sessions_t *t, int64_t now_ms); /* returns number reclaimed */
void djn_sessions_stats(djn_sessions_t *t, djn_sessions_stats_t *out);
uint64_t djn_sessions_lease_ms(const djn_sessions_t *t);

uint64_t djn_session_id(const djn_session_t *s);
void djn_session_release(djn_session_t **s_p);
void djn_session_lock(djn_session_t *s);
void djn_session_unlock(djn_session_t *s);

/* Handle operations (caller holds the session lock). */
djn_status_t djn_session_declare(djn_session_t *s, uint64_t handle, uint64_t nbytes);
djn_status_t djn_session_bind(djn_session_t *s, uint64_t handle, djn_stor_t *stor); /* retains */
void djn_session_free(djn_session_t *s, uint64_t handle);
/* Bind a handle to shared Text content; the caller already holds a Text reference for
 * it (djn_text_acquire/insert), which the session now owns. */
djn_status_t djn_session_bind_text(djn_session_t *s, uint64_t handle, const djn_text_key_t *k,
                                   djn_stor_t *shared);
/* Per-session bound on fragments waiting for a worker. */
bool djn_session_queue_enter(djn_session_t *s);
void djn_session_queue_leave(djn_session_t *s);
uint64_t djn_session_bytes(const djn_session_t *s); /* private bytes held */
uint64_t djn_session_peak(const djn_session_t *s);  /* their high-water mark */
/* An env for running this session's nodes on executor x. */
void djn_session_env(djn_session_t *s, djn_exec_t *x, uint32_t device, djn_exec_env_t *env);
/* A declared output of a node that did not run (an earlier node failed), or (force)
 * any output of the node that failed, which may have written part of it: reading it
 * later is an error naming `why`, never zeros or half-written bytes. */
void djn_session_poison(djn_session_t *s, uint64_t handle, const char *why, bool force);
/* Planned slab offsets (+1) by handle for the fragment this thread runs, or NULL. */
struct djn_map;
void djn_session_set_placements(const struct djn_map *place);
/* A handle whose storage sits in the stack slab gets a Data copy (the slab is about to
 * be reset); false if the Data segment is full. Adds the bytes moved to *bytes. */
bool djn_session_copy_out(djn_session_t *s, djn_exec_t *x, uint64_t handle, uint64_t *bytes);
djn_stor_t *djn_session_resolve(djn_session_t *s, djn_exec_t *x, uint64_t handle, int write,
                                char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
