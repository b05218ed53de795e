/* djn_sched.h: the work queues of the devices, by QoS class.
 *
 * The transport thread pushes each fragment a session sends onto the queue of the
 * device it names, in the fragment's class (realtime, interactive, batch); the device's
 * worker pops them. The algorithm, its invariants and the alternatives rejected are in
 * djn_sched.c. What callers rely on:
 *   - a session's items for one device run in the order sent, whatever their classes
 *     (an item carries its owner; an item never overtakes an older item of its owner),
 *     which is what lets a client pipeline fragments without waiting;
 *   - among owners, a better class goes first; a batch item passed over too often or
 *     waiting too long goes next anyway (aging: batch never starves);
 *   - a worker running a long item asks djn_sched_pop_urgent between its nodes for a
 *     better-class item of another owner to run nested (preemption at node boundaries);
 *   - while batch work waits, interactive work (chosen first, or nested) takes at most
 *     its share of the device's time (the batch share): beyond it, batch goes first;
 *   - a device's lanes (extra threads of a CPU device) take realtime and interactive
 *     items beside the worker, so that they need not wait for a batch node to end;
 *   - a device is "busy" while its worker or a lane runs an item, so another thread (the
 *     transport, for a tiny cached fragment) can run one in its place only when nothing
 *     is queued or running, which keeps the order.
 * Items are intrusive (embed djn_sched_item_t first in your job struct), so a push never
 * allocates and never fails. The scheduler also keeps the queue-wait and run-time
 * samples of each (device, class) for STATS' p50/p99. No ZeroMQ, no torch: unit-tested
 * alone. */
#ifndef DJN_SCHED_H
#define DJN_SCHED_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Classes, best first (the wire's `qos` minus one, djn_proto.h DJN_QOS_*). */
enum { DJN_SCHED_REALTIME = 0, DJN_SCHED_INTERACTIVE = 1, DJN_SCHED_BATCH = 2, DJN_SCHED_NCLASS };

/* Aging defaults: a waiting batch (or interactive) head goes first once better-class
 * items were chosen over it this many times, or once it has waited this long. */
#define DJN_SCHED_AGE_PASSES 32u
#define DJN_SCHED_AGE_NS (200ull * 1000000ull)
/* The batch share (djn_sched_set_share): while batch work waits on a device (queued, or
 * paused for nested runs), interactive work may take at most 100 - share percent of the
 * device's time (as the worker measures it: djn_sched_ran, pop_urgent's progress), by a
 * bucket that batch work's progress fills and that holds at most DJN_SCHED_BURST_NS (so
 * a quiet interactive tenant gets a burst at once). */
#define DJN_SCHED_BATCH_SHARE 75u
#define DJN_SCHED_BURST_NS (50ull * 1000000ull)
/* Latency samples kept per (device, class): the most recent ones. */
#define DJN_SCHED_SAMPLES 1024u
/* Lanes one device may have (djn_sched_pop_lane). */
#define DJN_SCHED_MAX_LANES 4u

typedef struct djn_sched_item {
    struct djn_sched_item *next;
    uint64_t enq_ns; /* set by push: when the item entered its queue */
    uint64_t seq;    /* set by push: order of pushes on the device */
    uint64_t owner;  /* set by the caller: items of one owner keep their order (0: none) */
    uint32_t passed; /* times a better class was chosen while this item headed its queue */
    uint8_t cls;     /* set by the caller: DJN_SCHED_REALTIME .. DJN_SCHED_BATCH */
    bool charged;    /* set by pop: batch work waited while it was chosen (djn_sched_ran) */
} djn_sched_item_t;

typedef struct djn_sched djn_sched_t;

/* p50/p99 of the recent samples of one (device, class), microseconds. */
typedef struct djn_sched_lat {
    uint64_t count; /* items run since start (samples kept: at most DJN_SCHED_SAMPLES) */
    uint64_t wait_p50_us, wait_p99_us, run_p50_us, run_p99_us;
} djn_sched_lat_t;

djn_sched_t *djn_sched_new(uint32_t ndevices);
void djn_sched_destroy(djn_sched_t **self_p); /* the queues must be empty */
/* Aging bounds (0 passes / 0 ns: that rule never fires); before the workers start. */
void djn_sched_set_aging(djn_sched_t *s, uint32_t passes, uint64_t ns);
/* The batch share, percent (0: none, interactive work always goes first; at most 95),
 * and the bucket's burst in ns; before the workers start. */
void djn_sched_set_share(djn_sched_t *s, uint32_t batch_pct, uint64_t burst_ns);
void djn_sched_push(djn_sched_t *s, uint32_t dev, djn_sched_item_t *it);
/* The next item of a device, waiting for one (and for a claim to end); the device is
 * busy until djn_sched_done. NULL once stopped (items left are taken with
 * djn_sched_take). */
djn_sched_item_t *djn_sched_pop(djn_sched_t *s, uint32_t dev);
void djn_sched_done(djn_sched_t *s, uint32_t dev);
/* For the worker between two nodes of an item of class `cls` and owner `owner`, which
 * has run for progress_ns of device time so far (nested runs excluded): a queued item
 * of a strictly better class, of another owner, with no older item of its owner queued,
 * within the batch share if it is interactive and the running item batch, for which
 * ok_fn(item, ctx) says yes (the worker try-locks its session: a nested run must never
 * wait for a lock). Unlinked and returned; NULL otherwise (at once, without the lock,
 * when nothing better may go). Never blocks. */
typedef bool (*djn_sched_ok_fn)(djn_sched_item_t *it, void *ctx);
djn_sched_item_t *djn_sched_pop_urgent(djn_sched_t *s, uint32_t dev, uint8_t cls, uint64_t owner,
                                       uint64_t progress_ns, djn_sched_ok_fn ok_fn, void *ctx);
/* Lanes: extra threads of a device that run realtime and interactive work beside its
 * worker (a CPU device's other cores), so that such work never waits for the node a
 * batch item is running. A lane waits, while the worker is busy (an idle worker takes
 * the work itself, planned into its slab), for a queued realtime or interactive item
 * whose owner has no older item queued and no item on the worker, for which
 * ok_fn(item, ctx) says yes (the lane try-locks its session, as for a nested run). The
 * batch share does not apply: a lane's run takes no time from the worker's batch item,
 * which runs on meanwhile (djn_sched.c). While a lane waits, the worker nests nothing
 * (djn_sched_urgent says no): the lane takes it with the batch item left running. NULL
 * once stopped.
 * djn_sched_lane_done when its run ended. */
djn_sched_item_t *djn_sched_pop_lane(djn_sched_t *s, uint32_t dev, djn_sched_ok_fn ok_fn,
                                     void *ctx);
void djn_sched_lane_done(djn_sched_t *s, uint32_t dev);
uint64_t djn_sched_lane_runs(djn_sched_t *s, uint32_t dev); /* items lanes took */
/* Whether an item of a class better than `cls` is queued and no lane waits to take it
 * (lock-free; a hint). When only interactive work waits beside a running batch item and
 * is over its share, *need_progress is the running item's progress at which it may go
 * (else 0): the worker reads its clock only then. */
bool djn_sched_urgent(djn_sched_t *s, uint32_t dev, uint8_t cls, uint64_t *need_progress);
/* An item pop or pop_urgent handed out ran for run_ns of device time (nested runs
 * excluded): a batch item's run earns interactive work its share, an interactive item
 * chosen while batch work waited is charged it. */
void djn_sched_ran(djn_sched_t *s, uint32_t dev, const djn_sched_item_t *it, uint64_t run_ns);
/* Remove every queued item of `owner` on a device (its session expired): returned as a
 * list linked by `next`, oldest first; NULL when it had none. */
djn_sched_item_t *djn_sched_remove_owner(djn_sched_t *s, uint32_t dev, uint64_t owner);
/* Queued items plus those running (the worker's and the lanes'): the device's backlog,
 * for placement. */
uint32_t djn_sched_load(djn_sched_t *s, uint32_t dev);
/* Run something on the device now, from another thread, if it is idle: nothing queued,
 * nothing running (on the worker or a lane), not claimed. True: the caller owns the device until
 * djn_sched_release (the worker waits). Never blocks. */
bool djn_sched_try_claim(djn_sched_t *s, uint32_t dev);
void djn_sched_release(djn_sched_t *s, uint32_t dev);
/* The next item without waiting (oldest push first), or NULL. */
djn_sched_item_t *djn_sched_take(djn_sched_t *s, uint32_t dev);
uint32_t djn_sched_depth(djn_sched_t *s, uint32_t dev);
/* Nothing queued, running or claimed on any device. */
bool djn_sched_idle(djn_sched_t *s);
void djn_sched_stop(djn_sched_t *s);

/* Latency bookkeeping: one item of class cls waited wait_ns in its queue and ran run_ns. */
void djn_sched_note(djn_sched_t *s, uint32_t dev, uint8_t cls, uint64_t wait_ns, uint64_t run_ns);
void djn_sched_latency(djn_sched_t *s, uint32_t dev, uint8_t cls, djn_sched_lat_t *out);
uint64_t djn_sched_preemptions(djn_sched_t *s, uint32_t dev); /* items pop_urgent handed out */

#ifdef __cplusplus
}
#endif
#endif
