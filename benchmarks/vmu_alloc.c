/* vmu_alloc.c: djinn's device VMU (server/djn_dvmu.c) as a shared library for
 * torch.cuda.memory.CUDAPluggableAllocator, so benchmarks/gpu_bench.py can run the same
 * allocation trace through it and through PyTorch's CUDA caching allocator, each in a
 * process of its own (a pluggable allocator must be chosen before CUDA's first use).
 *
 *   torch.cuda.memory.change_current_allocator(
 *       torch.cuda.memory.CUDAPluggableAllocator(so, "djn_vmu_alloc", "djn_vmu_free"))
 *
 * The arena of a device is created at its first allocation, sized by DJINN_CUDA_DATA_BYTES
 * and DJINN_CUDA_SLAB_BYTES (0 or unset: from the device's free memory), and lives until
 * the process exits. Built by gpu_bench.py and by scripts/check-cuda.sh (-DDJN_CUDA). */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/types.h>

#include "djn_dev.h"
#include "djn_dvmu.h"

static pthread_mutex_t s_mu = PTHREAD_MUTEX_INITIALIZER;

static uint64_t s_env(const char *name) {
    const char *v = getenv(name);
    return v && *v ? strtoull(v, NULL, 10) : 0;
}

static djn_dvmu_t *s_arena(int device) {
    djn_dvmu_t *v = djn_dvmu_of_device(device);
    if (v)
        return v;
    pthread_mutex_lock(&s_mu);
    char err[256] = "";
    if (!(v = djn_dvmu_of_device(device))) {
        djn_dev_t *d = djn_dev_cuda_new(device, err, sizeof err);
        v = d ? djn_dvmu_new(d, s_env("DJINN_CUDA_DATA_BYTES"), s_env("DJINN_CUDA_SLAB_BYTES"), err,
                             sizeof err)
              : NULL;
        if (v && !djn_dvmu_register(device, v)) {
            djn_dvmu_destroy(&v);
            snprintf(err, sizeof err, "device index %d out of range", device);
        }
        if (!v) {
            djn_dev_destroy(&d);
            fprintf(stderr, "vmu_alloc: no arena for cuda:%d: %s\n", device, err);
        }
    }
    pthread_mutex_unlock(&s_mu);
    return v;
}

void *djn_vmu_alloc(ssize_t size, int device, void *stream) {
    if (!s_arena(device))
        return NULL;
    void *p = djn_dvmu_alloc_fn((size_t)size, device, stream);
    if (!p)
        fprintf(stderr, "vmu_alloc: %s\n", djn_dvmu_oom_words());
    return p;
}

void djn_vmu_free(void *ptr, ssize_t size, int device, void *stream) {
    djn_dvmu_free_fn(ptr, (size_t)size, device, stream);
}

/* Bytes live in the Data segment, its capacity and its largest free block (ctypes). */
int djn_vmu_data_stats(int device, uint64_t out[3]) {
    djn_dvmu_t *v = djn_dvmu_of_device(device);
    if (!v)
        return -1;
    djn_dvmu_stats_t st;
    djn_dvmu_stats(v, &st);
    out[0] = st.data.used;
    out[1] = st.data.capacity;
    out[2] = st.data.largest_free;
    return 0;
}
