/* djn_heartbeat.h: a C thread that calls a function every period (no Python, no GIL).
 *
 * The client renews its session's lease from it while the user's thread is elsewhere
 * (a notebook cell, a long CPU computation). What a tick does is the owner's business
 * (djn_client.c sends a HEARTBEAT on its connection when it is free); this module owns
 * only the thread, its period and a prompt stop. */
#ifndef DJN_HEARTBEAT_H
#define DJN_HEARTBEAT_H

#ifdef __cplusplus
extern "C" {
#endif

typedef struct djn_heartbeat djn_heartbeat_t;
typedef void (*djn_heartbeat_fn)(void *arg);

/* NULL if period_ms <= 0 or the thread cannot start. */
djn_heartbeat_t *djn_heartbeat_start(int period_ms, djn_heartbeat_fn tick_fn, void *arg);
/* Stop and join; accepts NULL. */
void djn_heartbeat_stop(djn_heartbeat_t **hb_p);
/* After fork, in the child: the thread does not exist there; free without joining. */
void djn_heartbeat_forget(djn_heartbeat_t **hb_p);

#ifdef __cplusplus
}
#endif
#endif
