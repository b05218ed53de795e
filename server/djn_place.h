/* djn_place.h: which device a session should use by default (PLACE, PROTOCOL.md 5.6).
 *
 * Pure data: the transport gathers, per device, the bytes of the client's hinted content
 * held there for its tenant and the device's load, and this module picks one. No
 * ZeroMQ, no torch, no locks: unit-tested alone (test/c/test_place.c). */
#ifndef DJN_PLACE_H
#define DJN_PLACE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct djn_place_dev {
    uint64_t held;     /* bytes of the hinted content (hashes, a model) this tenant may use */
    uint64_t sessions; /* other sessions placed on it or that sent it work */
    uint64_t backlog;  /* its messages queued or running */
    uint64_t used;     /* Data-segment bytes in use (0 where unknown) */
} djn_place_dev_t;

/* The device to use, of n >= 1: the most held; among equals the least sessions +
 * backlog, then the least used; then the lowest index. */
uint32_t djn_place_choose(const djn_place_dev_t *devs, uint32_t n);

#ifdef __cplusplus
}
#endif
#endif
