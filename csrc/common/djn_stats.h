/* djn_stats.h: every counter Djinn reports, in one descriptor table.
 *
 * Each row names a counter once: the identifier is the C struct field and the STATS
 * wire key; the string is the key of torch.remote.memory_stats() (and of
 * djinn.bytes_moved() for client counters); the last column documents it (PROTOCOL.md
 * and the Python docstrings show the same words). The server fills the structs below,
 * djn_codec encodes and decodes them by walking the table, and djinn._C hands the table
 * to Python, so a counter added here appears on the wire, in `djinn-server --stats`,
 * in memory_stats() and in the exporter without another edit.
 *
 * Scopes: SERVER rows describe the whole server and go only to operators (and to every
 * client of a server without keys, whose clients are all its owner); SESSION rows the
 * session that asks; DEVICE rows one device each, in the "devices" array. */
#ifndef DJN_STATS_H
#define DJN_STATS_H

#include <stdint.h>

#include "djn_proto.h"

#ifdef __cplusplus
extern "C" {
#endif

/* X(field, type U64|F64, python key, doc) */
#define DJN_STATS_SERVER(X)                                                                        \
    X(uptime_ms, U64, "server.uptime_ms", "milliseconds since the server started")                 \
    X(lease_ms, U64, "server.lease_ms", "idle time after which a session is reclaimed (0: never)") \
    X(sessions_open, U64, "server.sessions", "sessions open now")                                  \
    X(sessions_opened, U64, "server.sessions_opened", "sessions ever opened")                      \
    X(sessions_closed, U64, "server.sessions_closed", "sessions closed by CLOSE")                  \
    X(sessions_expired, U64, "server.sessions_expired", "sessions reclaimed by their lease")       \
    X(sessions_refused, U64, "server.sessions_refused",                                            \
      "HELLOs refused by --max-sessions or --max-sessions-per-connection")                         \
    X(handles, U64, "server.handles", "handle-table entries over all sessions")                    \
    X(bytes_in_use, U64, "server.private_bytes",                                                   \
      "bytes of private materialised storages over all sessions")                                  \
    X(requests, U64, "server.requests", "messages received, rejected ones included")               \
    X(errors, U64, "server.errors", "ERROR replies sent")                                          \
    X(errors_proto, U64, "server.errors_proto",                                                    \
      "ERROR replies, E_PROTO, E_VERSION: malformed messages")                                     \
    X(errors_limit, U64, "server.errors_limit", "ERROR replies, E_LIMIT: a size limit exceeded")   \
    X(errors_session, U64, "server.errors_session",                                                \
      "ERROR replies, E_SESSION: unknown or expired sessions")                                     \
    X(errors_handle, U64, "server.errors_handle",                                                  \
      "ERROR replies, E_HANDLE: handles the session does not own")                                 \
    X(errors_op, U64, "server.errors_op", "ERROR replies, E_OP: operators that failed")            \
    X(errors_args, U64, "server.errors_args", "ERROR replies, E_ARGS: arguments refused")          \
    X(errors_device, U64, "server.errors_device",                                                  \
      "ERROR replies, E_DEVICE: no such device, or it failed")                                     \
    X(errors_memory, U64, "server.errors_memory",                                                  \
      "ERROR replies, E_OOM, E_NOMEM: device or host memory full")                                 \
    X(errors_quota, U64, "server.errors_quota",                                                    \
      "ERROR replies, E_QUOTA: per-session quotas exceeded")                                       \
    X(errors_evicted, U64, "server.errors_evicted",                                                \
      "ERROR replies, E_EVICTED: plan-cache entries gone")                                         \
    X(errors_denied, U64, "server.errors_denied", "ERROR replies, E_DENIED: refused by policy")    \
    X(errors_other, U64, "server.errors_other",                                                    \
      "ERROR replies, E_TIMEOUT, E_IO, E_CLOSED, E_INTERNAL")                                      \
    X(bytes_received, U64, "server.bytes_received", "bytes of every frame received")               \
    X(bytes_sent, U64, "server.bytes_sent", "bytes of every reply sent")                           \
    X(text_entries, U64, "text.entries", "distinct contents in the shared Text segment")           \
    X(text_bytes, U64, "text.bytes", "bytes of Text content, each content once")                   \
    X(text_refs, U64, "text.refs", "references to Text content held by session handles")           \
    X(text_hits, U64, "text.hits", "uploads and HAVE items that found their content filed")        \
    X(plan_cache_entries, U64, "plan_cache.entries", "fragments in the plan cache")                \
    X(plan_cache_capacity, U64, "plan_cache.capacity", "plan-cache capacity (0: off)")             \
    X(plan_cache_hits, U64, "plan_cache.hits", "GRAPH_CACHED messages whose fragment was found")   \
    X(plan_cache_misses, U64, "plan_cache.misses", "GRAPH_CACHED messages answered 'evicted'")     \
    X(plan_cache_evictions, U64, "plan_cache.evictions", "entries dropped by the LRU bound")       \
    X(plan_cache_bytes, U64, "plan_cache.bytes", "host bytes the plan cache holds")                \
    X(sched_us_hit_avg, U64, "sched.us_hit_avg",                                                   \
      "mean scheduling time per fragment run from the plan cache, us")                             \
    X(sched_us_miss_avg, U64, "sched.us_miss_avg",                                                 \
      "mean scheduling time per fragment that carried its nodes, us")                              \
    X(inline_runs, U64, "sched.inline_runs",                                                       \
      "tiny cached fragments the transport ran itself on an idle device")                          \
    X(session_max_queued, U64, "server.session_max_queued",                                        \
      "fragments one session may have waiting (0: no bound)")

#define DJN_STATS_SESSION(X)                                                                       \
    X(session_bytes, U64, "session.allocated_bytes",                                               \
      "bytes this session is charged for: its private storages and the Text it pins")              \
    X(session_peak_bytes, U64, "session.peak_bytes", "high-water mark of session_bytes")           \
    X(session_quota_bytes, U64, "session.quota_bytes", "this session's byte quota (0: none)")      \
    X(session_plan_entries, U64, "session.plan_cache_entries",                                     \
      "this session's fragments in the plan cache")                                                \
    X(session_plan_bytes, U64, "session.plan_cache_bytes",                                         \
      "host bytes the plan cache keeps for this session (counted against its quota)")

#define DJN_STATS_DEVICE(X)                                                                        \
    X(nodes, U64, "device.nodes", "nodes run successfully")                                        \
    X(fragments, U64, "device.fragments", "fragments its worker processed")                        \
    X(errors, U64, "device.errors", "fragments that failed")                                       \
    X(data_capacity, U64, "data.capacity_bytes", "usable bytes of the Data segment")               \
    X(data_used, U64, "data.used_bytes", "bytes in live Data blocks")                              \
    X(data_peak, U64, "data.peak_bytes", "highest data_used so far")                               \
    X(data_free_blocks, U64, "data.free_blocks", "free blocks of the Data segment")                \
    X(data_largest_free, U64, "data.largest_free_bytes", "largest free Data block")                \
    X(data_fragmentation, F64, "data.fragmentation",                                               \
      "external fragmentation: 1 - largest free block / free bytes")                               \
    X(slab_capacity, U64, "slab.capacity_bytes", "bytes of the stack slab")                        \
    X(slab_high_water, U64, "slab.high_water_bytes", "highest slab watermark so far")              \
    X(slab_in_use, U64, "slab.in_use_bytes", "slab watermark now (0 after a reset)")               \
    X(slab_resets, U64, "slab.resets", "times the slab was reset to empty")                        \
    X(slab_resets_deferred, U64, "slab.resets_deferred",                                           \
      "fragments after which something still referenced the slab")                                 \
    X(planned_fragments, U64, "plan.fragments", "fragments planned into the slab")                 \
    X(plan_peak_last, U64, "plan.peak_bytes", "planned slab peak of the last planned fragment")    \
    X(plan_lower_bound_last, U64, "plan.lower_bound_bytes",                                        \
      "most bytes live at once in the last planned fragment")                                      \
    X(plan_bump_last, U64, "plan.bump_bytes",                                                      \
      "what a bump allocator would have needed for the last planned fragment")                     \
    X(plan_high_water_last, U64, "plan.high_water_bytes",                                          \
      "slab bytes the last planned fragment really reached (measured)")                            \
    X(plan_peak_sum, U64, "plan.peak_bytes_total", "sum of planned peaks")                         \
    X(plan_lower_bound_sum, U64, "plan.lower_bound_bytes_total", "sum of lower bounds")            \
    X(plan_bump_sum, U64, "plan.bump_bytes_total", "sum of bump-allocator sizes")                  \
    X(plan_high_water_sum, U64, "plan.high_water_bytes_total", "sum of measured high-water marks") \
    X(plan_reserved_sum, U64, "plan.reserved_bytes_total",                                         \
      "sum of the planned peaks of the fragments in plan.high_water_bytes_total")                  \
    X(planned_runs, U64, "plan.runs", "fragments run with a slab plan (plan-cache hits included)") \
    X(copied_out_bytes, U64, "plan.copied_out_bytes",                                              \
      "bytes copied from the slab to the Data segment (results that outlive a fragment)")          \
    X(scrub_bytes, U64, "scrub.bytes",                                                             \
      "bytes zeroed before they changed hands (tenant isolation)")                                 \
    X(scrub_ns, U64, "scrub.ns", "time spent zeroing them, ns")                                    \
    X(queued, U64, "qos.queued", "fragments waiting in the device's queues now")                   \
    X(rt_fragments, U64, "qos.realtime.fragments", "realtime fragments run (HAVE included)")       \
    X(rt_wait_p50_us, U64, "qos.realtime.wait_p50_us",                                             \
      "realtime: median queue wait, us (recent 1024)")                                             \
    X(rt_wait_p99_us, U64, "qos.realtime.wait_p99_us",                                             \
      "realtime: p99 queue wait, us (recent 1024)")                                                \
    X(rt_run_p50_us, U64, "qos.realtime.run_p50_us",                                               \
      "realtime: median run time, us (recent 1024)")                                               \
    X(rt_run_p99_us, U64, "qos.realtime.run_p99_us", "realtime: p99 run time, us (recent 1024)")   \
    X(ia_fragments, U64, "qos.interactive.fragments", "interactive fragments run (HAVE included)") \
    X(ia_wait_p50_us, U64, "qos.interactive.wait_p50_us",                                          \
      "interactive: median queue wait, us (recent 1024)")                                          \
    X(ia_wait_p99_us, U64, "qos.interactive.wait_p99_us",                                          \
      "interactive: p99 queue wait, us (recent 1024)")                                             \
    X(ia_run_p50_us, U64, "qos.interactive.run_p50_us",                                            \
      "interactive: median run time, us (recent 1024)")                                            \
    X(ia_run_p99_us, U64, "qos.interactive.run_p99_us",                                            \
      "interactive: p99 run time, us (recent 1024)")                                               \
    X(bt_fragments, U64, "qos.batch.fragments", "batch fragments run (HAVE included)")             \
    X(bt_wait_p50_us, U64, "qos.batch.wait_p50_us", "batch: median queue wait, us (recent 1024)")  \
    X(bt_wait_p99_us, U64, "qos.batch.wait_p99_us", "batch: p99 queue wait, us (recent 1024)")     \
    X(bt_run_p50_us, U64, "qos.batch.run_p50_us", "batch: median run time, us (recent 1024)")      \
    X(bt_run_p99_us, U64, "qos.batch.run_p99_us", "batch: p99 run time, us (recent 1024)")         \
    X(preemptions, U64, "qos.preemptions",                                                         \
      "better-class fragments run nested between two nodes of a paused one")                       \
    X(lane_runs, U64, "qos.lane_runs",                                                             \
      "realtime and interactive fragments run on a lane, beside the worker")

/* Client-side counters (djinn.bytes_moved()); the field is also the Python key. */
#define DJN_STATS_CLIENT(X)                                                                        \
    X(bytes_sent, U64, "bytes_sent", "bytes sent to the server, headers and data frames")          \
    X(bytes_received, U64, "bytes_received", "bytes received from the server")                     \
    X(messages, U64, "messages", "requests sent")                                                  \
    X(flushes, U64, "flushes", "fragments sent")                                                   \
    X(nodes, U64, "nodes", "nodes captured")                                                       \
    X(uploads, U64, "uploads", "uploads sent with their bytes")                                    \
    X(upload_bytes, U64, "upload_bytes", "bytes of those uploads")                                 \
    X(fetches, U64, "fetches", "fetches answered by the server")                                   \
    X(fetch_bytes, U64, "fetch_bytes", "bytes of those fetches")                                   \
    X(fetch_cache_hits, U64, "fetch_cache_hits", "reads served from the client's fetch cache")     \
    X(dynamic_syncs, U64, "dynamic_syncs", "flushes for data-dependent ops")                       \
    X(dedup_bytes, U64, "dedup_bytes", "upload bytes not sent: the server held the content")       \
    X(plan_cache_sends, U64, "plan_cache_sends", "fragments sent as GRAPH_CACHED")                 \
    X(plan_cache_resends, U64, "plan_cache_resends", "GRAPH_CACHED answered 'evicted', resent")

#define DJN_STATS_U64 uint64_t
#define DJN_STATS_F64 double
#define DJN_STATS_FIELD_(name, type, py, doc) DJN_STATS_##type name;

typedef struct djn_stats_server {
    DJN_STATS_SERVER(DJN_STATS_FIELD_)
} djn_stats_server_t;
typedef struct djn_stats_session {
    DJN_STATS_SESSION(DJN_STATS_FIELD_)
} djn_stats_session_t;
typedef struct djn_stats_device {
    char name[32];
    DJN_STATS_DEVICE(DJN_STATS_FIELD_)
} djn_stats_device_t;
typedef struct djn_stats_client {
    DJN_STATS_CLIENT(DJN_STATS_FIELD_)
} djn_stats_client_t;

/* A STATS reply. `server` is present only for operators (has_server). */
typedef struct djn_stats_rep {
    bool has_server;
    djn_stats_server_t server;
    djn_stats_session_t session;
    uint32_t ndevices;
    djn_stats_device_t devices[DJN_MAX_DEVICES];
} djn_stats_rep_t;

/* The table, for tools: one entry per row of every scope, in order. */
typedef enum {
    DJN_STATS_SCOPE_SERVER,
    DJN_STATS_SCOPE_SESSION,
    DJN_STATS_SCOPE_DEVICE,
    DJN_STATS_SCOPE_CLIENT
} djn_stats_scope_t;
typedef struct djn_stats_field {
    djn_stats_scope_t scope;
    const char *name; /* C field and wire key */
    const char *py;   /* Python key */
    const char *doc;
    bool is_float;
    size_t offset; /* of the field in its scope's struct */
} djn_stats_field_t;
const djn_stats_field_t *djn_stats_fields(uint32_t *n);

#ifdef __cplusplus
}
#endif
#endif
