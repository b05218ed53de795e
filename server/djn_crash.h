/* djn_crash.h: a line in the log when a kernel takes the server down.
 *
 * A fault inside an ATen kernel (a bug in PyTorch, a kernel fed something its checks
 * missed) kills the process and every tenant's session with it. What the server can do
 * is say which op of which session did it: each worker notes what it is running
 * (djn_crash_note) and a handler for SIGSEGV, SIGBUS, SIGFPE, SIGILL and SIGABRT writes
 * "djinn-server: fatal signal 11 (SIGSEGV) in aten::x of session 0x.. (tenant 'alice')"
 * with write(2) (async-signal-safe), then lets the signal kill the process as before.
 * Clients notice at once (a dropped connection, or their embedded server's exit status).
 *
 * Chosen over running untrusted kernels in a sacrificial process: every tensor would
 * have to live in shared memory and every node pay an IPC round trip (tens of µs, the
 * whole budget of a decode step), and a GPU context cannot be shared that way. A
 * supervisor (systemd Restart=always, a Kubernetes DaemonSet) restarts the server. */
#ifndef DJN_CRASH_H
#define DJN_CRASH_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Install the handlers (once, at start-up) and an alternate signal stack for the
 * calling thread; workers call djn_crash_thread() for theirs. */
void djn_crash_install(void);
void djn_crash_thread(void);
/* What this thread runs now (NULL op: nothing). The strings are not copied: they must
 * stay valid until the next note. */
void djn_crash_note(const char *op, const char *overload, uint64_t sid, const char *tenant);

#ifdef __cplusplus
}
#endif
#endif
