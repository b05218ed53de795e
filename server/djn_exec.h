/* djn_exec.h: the thin C++ executor behind a C interface.
 *
 * It owns everything that needs ATen: device storages, running one node through the
 * boxed dispatcher by name, and per-session random generators. The C server core keeps
 * the handle tables and calls in here with a djn_exec_env_t that resolves handles for
 * the session whose fragment is running. One executor per device, used by one worker
 * thread only, so the executor itself takes no locks. */
#ifndef DJN_EXEC_H
#define DJN_EXEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "djn_codec.h"
#include "djn_proto.h"
#include "djn_status.h"
#include "djn_vmu.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct djn_exec djn_exec_t;
typedef struct djn_stor djn_stor_t; /* a device storage (refcounted) */

/* Number of CUDA devices torch sees (0 without CUDA). */
int djn_exec_cuda_count(void);
/* device: "cpu" or "cuda:N". */
djn_exec_t *djn_exec_new(const char *device, char *err, size_t errlen);
void djn_exec_destroy(djn_exec_t **self_p);
const char *djn_exec_device(const djn_exec_t *x);

djn_stor_t *djn_stor_retain(djn_stor_t *s);
void djn_stor_release(djn_stor_t *s);
uint64_t djn_stor_nbytes(const djn_stor_t *s);
/* The identity of the device storage (equal for every djn_stor_t of one storage). */
uint64_t djn_stor_id(const djn_stor_t *s);

/* Install the c10 CPU allocator that routes worker allocations through their VMU and, in
 * CUDA builds (-DDJN_CUDA), torch's pluggable CUDA allocator over each CUDA device's
 * arena (djn_dvmu, created by djn_exec_new("cuda:N")). Call once, before the first CUDA
 * allocation and before the workers start. */
void djn_exec_install_allocator(void);
/* ATen's intra-op threads for every thread of the process (each applies it at its first
 * parallel kernel); call before any runs one. */
void djn_exec_set_threads(int n);
/* Give a CPU executor its VMU (NULL: plain allocations); call on the worker thread,
 * which it binds for allocations (in Data mode; djn_exec_node switches to the slab for
 * the nodes of a planned fragment). */
void djn_exec_use_vmu(djn_exec_t *x, djn_vmu_t *v);
int djn_exec_in_slab(const djn_exec_t *x, const djn_stor_t *s);
/* Let another thread run this executor's nodes for a while (the transport runs a tiny
 * cached fragment in place of an idle worker): its allocations go to the executor's VMU
 * until djn_exec_leave. The caller guarantees no other thread uses x meanwhile. */
void djn_exec_enter(djn_exec_t *x);
void djn_exec_leave(djn_exec_t *x);
/* Whether a storage lives in any device's stack slab (transient: not charged to quotas). */
int djn_stor_in_slab(const djn_stor_t *s);

/* A storage of nbytes: in the Data segment, or at a planned slab offset when
 * slab_off != UINT64_MAX. */
djn_status_t djn_exec_alloc(djn_exec_t *x, uint64_t nbytes, uint64_t slab_off, djn_stor_t **out,
                            char *err, size_t errlen);
djn_status_t djn_exec_upload(djn_exec_t *x, const void *bytes, uint64_t n, djn_stor_t **out,
                             char *err, size_t errlen);
/* Fill a storage with zeros: memory a session reads before anything wrote it must not
 * show bytes another session left behind. */
djn_status_t djn_exec_zero(djn_exec_t *x, djn_stor_t *s, char *err, size_t errlen);
djn_status_t djn_exec_copy(djn_exec_t *x, djn_stor_t *dst, djn_stor_t *src, uint64_t n, char *err,
                           size_t errlen);
/* Whether the storage's first n bytes equal `bytes` (n must not exceed its size). */
bool djn_exec_same(djn_exec_t *x, djn_stor_t *s, const void *bytes, uint64_t n);
djn_status_t djn_exec_read(djn_exec_t *x, djn_stor_t *s, uint64_t off, uint64_t n, void *dst,
                           char *err, size_t errlen);

/* Write n bytes at byte off of a storage (an upload arriving in chunks). */
djn_status_t djn_exec_write(djn_exec_t *x, djn_stor_t *s, uint64_t off, const void *bytes,
                            uint64_t n, char *err, size_t errlen);
/* Whether two storages hold the same bytes (and size). */
bool djn_exec_equal(djn_exec_t *x, djn_stor_t *a, djn_stor_t *b);
/* Bytes [off, off + n) of a storage for a reply frame, without a copy: true with *data
 * pointing at them and *hold keeping them valid and unchanged (a copy-on-write snapshot:
 * a later write, resize or free of the storage leaves them as they were) until
 * djn_exec_unlend(*hold), on any thread. false: not lendable here (a device storage, a
 * slab storage, a data pointer c10 cannot share): read a copy with djn_exec_read. */
bool djn_exec_lend(djn_exec_t *x, djn_stor_t *s, uint64_t off, uint64_t n, const void **data,
                   void **hold);
void djn_exec_unlend(void *hold);

/* What a node needs from the fragment that runs it (djn_frag.c fills it). */
typedef struct djn_exec_env {
    void *ctx;
    /* The storage for a handle (materialising a declared allocation on this device, at
     * its planned slab offset if it has one). Borrowed reference. `write`: the op will
     * write to it, so a shared (Text) storage is first copied into the session's own. */
    djn_status_t (*resolve_fn)(void *ctx, uint64_t handle, int write, djn_stor_t **out, char *err,
                               size_t errlen);
    /* Whether a handle is declared but has no storage yet (a fresh output). */
    int (*is_lazy_fn)(void *ctx, uint64_t handle);
    /* Bind a handle to a storage (takes its own reference). */
    djn_status_t (*bind_fn)(void *ctx, uint64_t handle, djn_stor_t *s);
    /* After a node wrote to a handle: its storage may have grown (an out= kernel
     * resizes), so the session's accounting and quota follow the real size. */
    djn_status_t (*written_fn)(void *ctx, uint64_t handle, char *err, size_t errlen);
    /* A new server-issued handle for a result of a data-dependent op. */
    djn_status_t (*new_handle_fn)(void *ctx, uint64_t nbytes, uint64_t *out);
    const uint64_t *binds; /* slot -> handle for the message being run */
    uint32_t nbinds;
    void **gen_slot; /* the session's generator on this device, created on first use */
    int64_t seed;    /* >= 0: reseed before running */
    bool slab;       /* ATen allocations of the nodes go to the stack slab */
} djn_exec_env_t;

/* Run one node. For a DJN_NODE_DYNAMIC node, the results' description is encoded into
 * dyn (one msgpack value). On failure err names the op and the cause. */
djn_status_t djn_exec_node(djn_exec_t *x, const djn_node_t *node, djn_exec_env_t *env,
                           djn_buf_t *dyn, char *err, size_t errlen);
void djn_exec_reseed(djn_exec_t *x, djn_exec_env_t *env);
/* Around the nodes of a fragment: the device's default generator holds the session's
 * random state (see executor.cpp). */
void djn_exec_rng_enter(djn_exec_t *x, djn_exec_env_t *env);
/* Returns whether the session's state was swapped in (some node drew random numbers). */
bool djn_exec_rng_exit(djn_exec_t *x, djn_exec_env_t *env);
void djn_exec_gen_release(void *gen);
/* Wait for the device to finish queued work. */
void djn_exec_sync(djn_exec_t *x);

#ifdef __cplusplus
}
#endif
#endif
