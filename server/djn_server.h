/* djn_server.h: the djinn-server process: one transport thread on a ZeroMQ ROUTER and
 * one worker thread per device. */
#ifndef DJN_SERVER_H
#define DJN_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "djn_status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DJN_SERVER_MAX_DEVICES 16

typedef struct djn_server_cfg {
    const char *listen;                          /* ZeroMQ endpoint to bind */
    const char *devices[DJN_SERVER_MAX_DEVICES]; /* "cpu", "cuda:0", ... */
    int ndevices;
    uint64_t lease_ms;                    /* 0: sessions never expire */
    uint64_t heartbeat_ms;                /* advised to clients */
    uint64_t max_tensor_bytes;            /* largest frame accepted or sent */
    int announce_fd;                      /* >= 0: write "DJINN_ENDPOINT <ep>\n" there once bound */
    int parent_pid;                       /* > 0: exit when that process is gone */
    uint64_t session_quota_bytes;         /* private bytes per session, 0 = unlimited */
    uint32_t session_max_queued;          /* fragments waiting per session, 0 = unlimited */
    uint32_t session_max_handles;         /* handles per session, 0 = unlimited */
    uint32_t max_sessions;                /* open sessions on the server, 0 = unlimited */
    uint32_t max_sessions_per_connection; /* 0 = unlimited */
    uint32_t plan_cache_entries;          /* fragments kept in the plan cache, 0 = off */
    uint64_t data_bytes;                  /* CPU VMU: Data segment capacity (0: no VMU) */
    uint64_t slab_bytes;                  /* CPU VMU: stack slab capacity */
    bool inline_small;                    /* run tiny cached fragments on the transport thread */
    bool remove_ipc_dir;                  /* embedded: remove the ipc socket's directory at exit */
    const char *keys_dir;                 /* CURVE keys (djn_auth.h); NULL: none */
    const char *models_dir;               /* the model store (djn_models.h); NULL: none */
    uint64_t text_cache_bytes;            /* unreferenced Text kept for reuse (LRU); 0: none */
    const char *text_cache_dir;           /* Text uploads also kept on disk (djn_tcache.h); NULL */
    uint64_t drain_timeout_ms;            /* djn_server_drain: longest wait; 0 = stop at once */
    const char *realtime_tenants;         /* "alice,bob": may claim realtime; NULL: none */
    uint32_t qos_age_passes;              /* djn_sched_set_aging */
    uint64_t qos_age_ns;
    uint32_t qos_batch_share; /* djn_sched_set_share, percent (0: none) */
    uint32_t lanes;           /* per CPU device, threads for realtime/interactive work */
    uint32_t threads;         /* ATen intra-op threads (0: ATen's default) */
} djn_server_cfg_t;

typedef struct djn_server djn_server_t;

djn_server_t *djn_server_new(const djn_server_cfg_t *cfg, char *err, size_t errlen);
/* Serve until djn_server_stop, the end of a drain, or the parent's death. */
djn_status_t djn_server_run(djn_server_t *srv);
/* Async-signal-safe. stop: return at once (fragments queued get no answer). drain
 * (SIGTERM): refuse new sessions (HELLO answers DJN_ERR_CLOSED), keep serving the open
 * ones, and return once no fragment is queued or running, or after drain_timeout_ms (the
 * fragments still queued then get DJN_ERR_CLOSED); a second drain is a stop. */
void djn_server_stop(void);
void djn_server_drain(void);
void djn_server_destroy(djn_server_t **self_p);

/* Command-line tools (djn_cli.c); keys_dir may be NULL. Return the exit status. */
int djn_server_print_stats(const char *endpoint, const char *keys_dir, int timeout_ms);
int djn_server_check(const char *endpoint, const char *keys_dir, int timeout_ms);
int djn_server_keygen(const char *dir, const char *name, bool is_operator, bool realtime);

#ifdef __cplusplus
}
#endif
#endif
