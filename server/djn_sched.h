/* djn_sched.h: the work queues of the devices.
 *
 * The transport thread pushes each fragment a session sends onto the queue of the
 * device it names; the device's worker pops them in order. A session's fragments for one
 * device run in the order sent, which is what lets a client pipeline fragments without
 * waiting. A device is also "busy" while its worker runs an item, so another thread (the
 * transport, for a tiny cached fragment) can run one in its place only when nothing is
 * queued or running, which keeps the order. Items are intrusive (embed djn_sched_item_t first in
 * your job struct), so a push never allocates and never fails. No ZeroMQ, no torch: unit-tested
 * alone. */
#ifndef DJN_SCHED_H
#define DJN_SCHED_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct djn_sched_item {
    struct djn_sched_item *next;
    uint64_t enq_ns; /* set by push: when the item entered its queue */
} djn_sched_item_t;

typedef struct djn_sched djn_sched_t;

djn_sched_t *djn_sched_new(uint32_t ndevices);
void djn_sched_destroy(djn_sched_t **self_p); /* the queues must be empty */
void djn_sched_push(djn_sched_t *s, uint32_t dev, djn_sched_item_t *it);
/* The next item of a device, waiting for one (and for a claim to end); the device is
 * busy until djn_sched_done. NULL once stopped (items left are taken with
 * djn_sched_take). */
djn_sched_item_t *djn_sched_pop(djn_sched_t *s, uint32_t dev);
void djn_sched_done(djn_sched_t *s, uint32_t dev);
/* Run something on the device now, from another thread, if it is idle: nothing queued,
 * nothing running, not claimed. True: the caller owns the device until djn_sched_release
 * (the worker waits). Never blocks. */
bool djn_sched_try_claim(djn_sched_t *s, uint32_t dev);
void djn_sched_release(djn_sched_t *s, uint32_t dev);
/* The next item without waiting, or NULL. */
djn_sched_item_t *djn_sched_take(djn_sched_t *s, uint32_t dev);
uint32_t djn_sched_depth(djn_sched_t *s, uint32_t dev);
void djn_sched_stop(djn_sched_t *s);

#ifdef __cplusplus
}
#endif
#endif
