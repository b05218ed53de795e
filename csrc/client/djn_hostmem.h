/* djn_hostmem.h: how many more bytes this process can use on its host.
 *
 * The capability interlock: before the client materialises a remote tensor in host
 * memory (.cpu(), printing, tolist(), item()), it asks here and refuses with a typed
 * error naming the bytes, instead of letting the kernel's OOM killer end the process.
 * The answer is the smallest of: the cgroup v2 limit (memory.max - memory.current of this
 * process's cgroup), the cgroup v1 limit (memory.limit_in_bytes - memory.usage_in_bytes),
 * the kernel's MemAvailable, and DJINN_TEST_USABLE_BYTES when set (a fake limit for
 * tests). Plain file reads, no allocation beyond the stack. */
#ifndef DJN_HOSTMEM_H
#define DJN_HOSTMEM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Usable bytes (UINT64_MAX: nothing known limits it); *what names the bound that
 * decided ("cgroup v2 memory.max", "MemAvailable", "DJINN_TEST_USABLE_BYTES", ...). */
uint64_t djn_hostmem_usable(const char **what);

#ifdef __cplusplus
}
#endif
#endif
