/* djn_hostmem.c: usable host memory (see djn_hostmem.h).
 *
 * Rejected: sysinfo()'s freeram (ignores the page cache the kernel would drop, and every
 * cgroup limit: a container would be told the host's memory); mallinfo (says what the
 * process holds, not what it may still take). The cgroup path comes from
 * /proc/self/cgroup, so a nested cgroup reads its own limit, not its parent's. */
#include "djn_hostmem.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The first number of a file, or false ("max" and unreadable files are false). */
static bool s_read_u64(const char *path, uint64_t *out) {
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    char buf[64] = {0};
    bool ok = fgets(buf, sizeof buf, f) != NULL;
    fclose(f);
    if (!ok || buf[0] < '0' || buf[0] > '9')
        return false;
    *out = strtoull(buf, NULL, 10);
    return true;
}

/* The path of this process's cgroup in the given hierarchy ("" for v2, or a v1
 * controller name such as "memory"), as "/sys/fs/cgroup[/controller]<path>". */
static bool s_cgroup_dir(const char *controller, char *dir, size_t len) {
    FILE *f = fopen("/proc/self/cgroup", "r");
    if (!f)
        return false;
    char line[1024];
    bool found = false;
    while (!found && fgets(line, sizeof line, f)) {
        char *a = strchr(line, ':'), *b = a ? strchr(a + 1, ':') : NULL;
        if (!b)
            continue;
        *b = 0;
        char *path = b + 1;
        path[strcspn(path, "\n")] = 0;
        const char *ctl = a + 1;
        if (!*controller ? !*ctl && !strncmp(line, "0", 1) : strstr(ctl, controller) != NULL) {
            snprintf(dir, len, "/sys/fs/cgroup%s%s%s", *controller ? "/" : "", controller,
                     strcmp(path, "/") ? path : "");
            found = true;
        }
    }
    fclose(f);
    return found;
}

static void s_bound(uint64_t v, const char *name, uint64_t *best, const char **what) {
    if (v < *best) {
        *best = v;
        *what = name;
    }
}

uint64_t djn_hostmem_usable(const char **what) {
    uint64_t best = UINT64_MAX, limit, used;
    const char *why = "nothing";
    char dir[900], path[1024];
    if (s_cgroup_dir("", dir, sizeof dir)) {
        snprintf(path, sizeof path, "%s/memory.max", dir);
        if (s_read_u64(path, &limit)) {
            snprintf(path, sizeof path, "%s/memory.current", dir);
            if (!s_read_u64(path, &used))
                used = 0;
            s_bound(limit > used ? limit - used : 0, "cgroup v2 memory.max", &best, &why);
        }
    }
    if (s_cgroup_dir("memory", dir, sizeof dir)) {
        snprintf(path, sizeof path, "%s/memory.limit_in_bytes", dir);
        if (s_read_u64(path, &limit) && limit < (1ull << 62)) { /* unlimited: ~2^63 */
            snprintf(path, sizeof path, "%s/memory.usage_in_bytes", dir);
            if (!s_read_u64(path, &used))
                used = 0;
            s_bound(limit > used ? limit - used : 0, "cgroup v1 memory.limit_in_bytes", &best,
                    &why);
        }
    }
    FILE *f = fopen("/proc/meminfo", "r");
    if (f) {
        char line[256];
        unsigned long long kb;
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) {
                s_bound((uint64_t)kb * 1024, "MemAvailable", &best, &why);
                break;
            }
        fclose(f);
    }
    const char *fake = getenv("DJINN_TEST_USABLE_BYTES");
    if (fake && *fake >= '0' && *fake <= '9')
        s_bound(strtoull(fake, NULL, 10), "DJINN_TEST_USABLE_BYTES", &best, &why);
    if (what)
        *what = why;
    return best;
}
