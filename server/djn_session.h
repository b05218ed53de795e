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
#include "djn_status.h"
#include "djn_text.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct djn_session djn_session_t;
typedef struct djn_sessions djn_sessions_t;

/* Who sent a message: the authenticated tenant ("" on a server without keys) and the
 * connection (ZeroMQ routing id). A session belongs to the peer that opened it; any
 * other peer naming its id gets exactly the answer an unknown id gets. */
typedef struct djn_peer {
    char tenant[64];
    uint8_t rid[255];
    uint8_t rid_len;
    bool is_operator; /* may read server-wide STATS */
    bool realtime;    /* may claim the realtime class */
    int fd;           /* the connection's socket (ZeroMQ's ZMQ_SRCFD), -1 if unknown */
} djn_peer_t;

typedef struct djn_sessions_stats {
    uint64_t open, opened_total, closed_total, expired_total, refused_total, handles, bytes;
} djn_sessions_stats_t;

/* What one session, one connection and the whole server may hold (0: unlimited). */
typedef struct djn_sessions_limits {
    uint64_t lease_ms;     /* 0: sessions never expire */
    uint64_t quota_bytes;  /* private bytes per session, plan-cache and handle bytes included */
    uint32_t max_queued;   /* fragments waiting per session */
    uint32_t max_sessions; /* open sessions on the server */
    uint32_t max_per_peer; /* open sessions per connection (tenant + routing id) */
    uint32_t max_handles;  /* handles per session */
} djn_sessions_limits_t;

/* Host bytes a handle costs its session's quota (its table entry and map slot). */
#define DJN_HANDLE_COST 128u

djn_sessions_t *djn_sessions_new(const djn_sessions_limits_t *limits, djn_text_t *text);
void djn_sessions_destroy(djn_sessions_t **self_p);
/* Free released sessions on a thread of their own (the server does; unit tests need not). */
bool djn_sessions_start_reaper(djn_sessions_t *t);
/* A new session with a random id, owned by peer; returns a reference. NULL with *st
 * DJN_ERR_LIMIT past max_sessions or max_per_peer (err says which), DJN_ERR_NOMEM. */
djn_session_t *djn_sessions_open(djn_sessions_t *t, int64_t now_ms, const djn_peer_t *peer,
                                 djn_status_t *st, char *err, size_t errlen);
/* The session `sid` if peer owns it (+ ref, renews its lease, and notes the connection
 * it was heard on as up), else NULL. */
djn_session_t *djn_sessions_get(djn_sessions_t *t, uint64_t sid, int64_t now_ms,
                                const djn_peer_t *peer);
bool djn_sessions_close(djn_sessions_t *t, uint64_t sid, const djn_peer_t *peer);
/* Reclaim sessions whose lease ran out, at most cap per call (one pass over the table);
 * returns how many, their ids in gone[0..n). The lease (djn_session.c, "Leases") runs
 * from the later of the last message heard and the moment a queued message of the
 * session last finished, and does not run at all while the session has messages queued or
 * running on a connection that is still up: waiting in a queue is the server's doing.
 * An expired session is marked (djn_session_expired): its queued messages are to be
 * dropped and a running fragment stops at its next node. */
uint32_t djn_sessions_expire(djn_sessions_t *t, int64_t now_ms, uint64_t *gone, uint32_t cap);
/* The connection with socket `fd` is gone (ZeroMQ reported it closed or timed out): the
 * sessions last heard on it no longer hold their lease while their messages wait.
 * Returns how many sessions were marked. */
uint32_t djn_sessions_conn_lost(djn_sessions_t *t, int fd);
/* Sessions in the table per device they use (djn_session_use_device): counts[d] for
 * d < ndev, leaving out `except` (0: none). */
void djn_sessions_per_device(djn_sessions_t *t, uint64_t except, uint32_t ndev, uint32_t *counts);
void djn_sessions_stats(djn_sessions_t *t, djn_sessions_stats_t *out);
uint64_t djn_sessions_lease_ms(const djn_sessions_t *t);

uint64_t djn_session_id(const djn_session_t *s);
/* False once the session is closed or expired: nothing may be filed for it any more. */
bool djn_session_live(const djn_session_t *s);
/* True once its lease ran out: its client is gone, so its queued messages are dropped
 * unrun and a fragment of it that is running stops between two nodes. (A CLOSE is not
 * an expiry: what the client queued before it still runs.) */
bool djn_session_expired(const djn_session_t *s);
/* The fragment chain (7.4), read and written by the transport thread only: the seq of a
 * fragment of this session answered E_EVICTED (0: none). While set, the session's later
 * fragments are refused unless one is marked `resume`: they may use its results. */
uint64_t djn_session_evicted(const djn_session_t *s);
void djn_session_set_evicted(djn_session_t *s, uint64_t seq);
/* The session uses device `dev` (PLACE chose it, or it declared or uploaded storage
 * there): it counts among the device's sessions (djn_sessions_per_device). */
void djn_session_use_device(djn_session_t *s, uint32_t dev);
djn_session_t *djn_session_retain(djn_session_t *s); /* + ref, returns s */
void djn_session_release(djn_session_t **s_p);
void djn_session_lock(djn_session_t *s);
bool djn_session_trylock(djn_session_t *s);
void djn_session_unlock(djn_session_t *s);

/* Handle operations (caller holds the session lock). */
djn_status_t djn_session_declare(djn_session_t *s, uint64_t handle, uint64_t nbytes);
djn_status_t djn_session_bind(djn_session_t *s, uint64_t handle, djn_stor_t *stor); /* retains */
void djn_session_free(djn_session_t *s, uint64_t handle);
/* Bind a handle to shared Text content; the caller already holds a Text reference for
 * it (djn_text_acquire/insert), which the session now owns. */
djn_status_t djn_session_bind_text(djn_session_t *s, uint64_t handle, const djn_text_key_t *k,
                                   djn_stor_t *shared);
/* A message of the session enters its device's queue holding `frame_bytes` bytes of data
 * frames: refused (DJN_ERR_QUOTA, err says why) past --session-max-queued messages, or
 * when the frames of its queued messages would pass the session's quota (ZeroMQ has
 * received them already; queued, they are the session's host memory). */
djn_status_t djn_session_queue_enter(djn_session_t *s, uint64_t frame_bytes, char *err,
                                     size_t errlen);
/* ... and leaves it (it ran, or was dropped) at now_ms: the lease starts again from
 * now_ms (the client has a whole lease to answer a reply). */
void djn_session_queue_leave(djn_session_t *s, uint64_t frame_bytes, int64_t now_ms);
uint64_t djn_session_bytes(const djn_session_t *s); /* private bytes held */
uint64_t djn_session_peak(const djn_session_t *s);  /* their high-water mark */
uint64_t djn_session_quota(const djn_session_t *s);
const djn_peer_t *djn_session_peer(const djn_session_t *s);
/* Host bytes the plan cache keeps for this session count against its quota: false (and
 * nothing charged) if they do not fit. */
bool djn_session_charge_cache(djn_session_t *s, uint64_t bytes);
/* Host bytes of fetched data on their way to the client (allocated, not yet sent): at
 * most the session's quota at a time (besides what it holds), else DJN_ERR_QUOTA with err
 * saying so. Uncharged as each buffer is freed, on whatever thread. */
djn_status_t djn_session_charge_reply(djn_session_t *s, uint64_t bytes, char *err, size_t errlen);
void djn_session_uncharge_reply(djn_session_t *s, uint64_t bytes);
void djn_session_uncharge_cache(djn_session_t *s, uint64_t bytes);
uint64_t djn_session_cache_bytes(const djn_session_t *s);
/* The session's generator slot for a device (created by the executor on first use). */
void **djn_session_gen_slot(djn_session_t *s, uint32_t device);
/* A new server-issued handle for a result of nbytes whose size only the server knew. */
djn_status_t djn_session_new_handle(djn_session_t *s, uint64_t nbytes, uint64_t *out);
/* Bound to shared Text content (its bytes belong to every session that holds it). */
bool djn_session_shared(djn_session_t *s, uint64_t handle);

/* An upload arriving in chunks (PROTOCOL.md 7.7): the storage being filled in order,
 * the next byte expected and, for Text content, the running hashes. The handle keeps
 * what it held until the last chunk arrives. At most DJN_MAX_OPEN_UPLOADS per session;
 * the whole size counts against the session's quota (and in its bytes) from the first
 * chunk, and an upload still open when the session ends is freed with it. */
typedef struct djn_chunked {
    uint64_t handle, total, next;
    bool text;
    djn_stor_t *stor;
    djn_text_hasher_t *hasher; /* Text uploads only */
} djn_chunked_t;
/* The upload open for handle, or NULL (caller holds the session lock). */
djn_chunked_t *djn_session_chunked(djn_session_t *s, uint64_t handle);
/* Open one: the session takes c's storage and hasher. DJN_ERR_QUOTA (err says so), or
 * DJN_ERR_ARGS when DJN_MAX_OPEN_UPLOADS are open already; on failure they stay the
 * caller's. */
djn_status_t djn_session_chunked_open(djn_session_t *s, const djn_chunked_t *c, char *err,
                                      size_t errlen);
/* Close the upload open for handle: its bytes leave the session's count and its storage
 * and hasher become the caller's (false: none is open). */
bool djn_session_chunked_take(djn_session_t *s, uint64_t handle, djn_chunked_t *out);

/* Declared but not materialised (a fresh output). */
bool djn_session_is_lazy(djn_session_t *s, uint64_t handle);
/* The same, with the declared size in *nbytes (poisoned handles are not lazy). */
bool djn_session_lazy_size(djn_session_t *s, uint64_t handle, uint64_t *nbytes);
/* A declared output of a node that did not run (an earlier node failed), or (force)
 * any output of the node that failed, which may have written part of it: reading it
 * later is an error naming `why`, never zeros or half-written bytes. */
void djn_session_poison(djn_session_t *s, uint64_t handle, const char *why, bool force);
/* After a node wrote to a handle: take its storage's real size (a kernel may have grown
 * it) into the session's bytes; DJN_ERR_QUOTA if that passes the quota. */
djn_status_t djn_session_recheck(djn_session_t *s, uint64_t handle, char *err, size_t errlen);
/* A handle whose storage sits in the stack slab gets a Data copy (the slab is about to
 * be reset). Adds the bytes moved to *bytes. Past the quota (DJN_ERR_QUOTA) or with the
 * Data segment full (DJN_ERR_OOM) the handle is poisoned and err says why. */
djn_status_t djn_session_copy_out(djn_session_t *s, djn_exec_t *x, uint64_t handle, uint64_t *bytes,
                                  char *err, size_t errlen);
/* The storage of a handle, materialising a declared one on x's device (at the planned
 * slab offset when slab_off != UINT64_MAX, else in Data, zero-filled); `write`: a write
 * to shared Text content first copies it into the session's own memory. Errors:
 * DJN_ERR_HANDLE (not this session's), DJN_ERR_OP (poisoned: never computed),
 * DJN_ERR_QUOTA, DJN_ERR_OOM, DJN_ERR_DEVICE; err says which. Borrowed reference. */
djn_status_t djn_session_resolve(djn_session_t *s, djn_exec_t *x, uint64_t handle, int write,
                                 uint64_t slab_off, djn_stor_t **out, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
