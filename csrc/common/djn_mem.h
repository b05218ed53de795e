/* djn_mem.h: counted host memory.
 *
 * Every host allocation of the C core goes through these wrappers so tests can assert
 * that the byte counter returns to where it started, and can make the Nth allocation
 * fail (djn_mem_fail_after) to exercise every error path, SQLite-style. The counter
 * and the fault countdown are process-wide atomics; the cost is one relaxed add. */
#ifndef DJN_MEM_H
#define DJN_MEM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

void *djn_malloc(size_t n);
void *djn_calloc(size_t count, size_t n);
void *djn_realloc(void *p, size_t old_n, size_t new_n);
void djn_free(void *p, size_t n);
char *djn_strdup(const char *s);
void djn_strfree(char *s);

/* Bytes currently held through the wrappers. */
int64_t djn_mem_in_use(void);
/* Make the allocation after the next `n` succeed-ones fail; n < 0 disables. */
void djn_mem_fail_after(int64_t n);

#ifdef __cplusplus
}
#endif
#endif
