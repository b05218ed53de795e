/* djn_spawn.h: start and stop the embedded djinn-server child (POSIX, no Python).
 *
 * The child is started with posix_spawn, listens on an ipc socket in a fresh 0700
 * directory (only this user can connect; no port for other local users to find) and
 * writes "DJINN_ENDPOINT <endpoint>\n" to an inherited pipe; it watches our pid and exits
 * when we are gone, so even a SIGKILLed client leaves no server behind. */
#ifndef DJN_SPAWN_H
#define DJN_SPAWN_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "djn_status.h"

#ifdef __cplusplus
extern "C" {
#endif

djn_status_t djn_spawn_server(const char *bin, int timeout_ms, pid_t *pid_out, char *endpoint,
                              size_t endpoint_len, char *err, size_t errlen);
void djn_spawn_stop(pid_t pid, int timeout_ms);
/* Remove the ipc socket and its private directory (no-op for other endpoints). */
void djn_spawn_cleanup(const char *endpoint);
/* Whether the child has exited; why says how ("was killed by signal 11 (...)"). */
bool djn_spawn_exited(pid_t pid, char *why, size_t len);

#ifdef __cplusplus
}
#endif
#endif
