/* gst-moshi CUDA emulator: the extensions to the CUDA runtime API that only the emulator has.
 *
 * The emulator implements a subset of the CUDA runtime and cuBLAS APIs on the CPU, declared by
 * the toolkit's own headers (cuda_runtime_api.h, cublas_v2.h), so that the unchanged kernel and
 * host sources run in tests on machines without a GPU. These functions let tests look inside:
 * the last diagnostic, the schedule of the threads of a block, counters. C and C++. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Order in which the scheduler resumes the threads of a block between barriers. Forward runs
 * thread 0 first, reverse the last thread first, random a seeded shuffle on every pass. Every
 * order is a legal GPU schedule; a kernel whose result depends on it has a race. The initial
 * order comes from $MOSHI_CUDA_EMU_SCHEDULE ("forward", "reverse", "random" or "random:SEED"). */
typedef enum {
  MOSHI_EMU_SCHEDULE_FORWARD,
  MOSHI_EMU_SCHEDULE_REVERSE,
  MOSHI_EMU_SCHEDULE_RANDOM,
} MoshiEmuSchedule;

void moshi_emu_set_schedule (MoshiEmuSchedule schedule, uint64_t seed);
MoshiEmuSchedule moshi_emu_get_schedule (void);

/* The text of the last error the emulator diagnosed (a wrong pointer, an out-of-bounds access,
 * a barrier deadlock, ...), or "" when there was none since moshi_emu_clear_message. Every
 * diagnostic is also printed on stderr unless $MOSHI_CUDA_EMU_QUIET is set. */
const char *moshi_emu_last_message (void);
void moshi_emu_clear_message (void);

/* Non-zero when [ptr, ptr + bytes) lies inside one live device allocation. */
int moshi_emu_is_device_range (const void *ptr, size_t bytes);

/* Number of live device allocations and their total size in bytes. */
size_t moshi_emu_live_allocations (size_t *bytes);

/* Caps the emulated device memory at bytes (0: the default 16 GiB; a cap above it is the
 * default), as a smaller GPU: cudaMalloc fails with cudaErrorMemoryAllocation past it, and
 * cudaMemGetInfo and cudaGetDeviceProperties report it. Live allocations stay; a cap below
 * what they use leaves no memory free. The initial cap comes from
 * $MOSHI_CUDA_EMU_MEMORY_LIMIT=BYTES. */
void moshi_emu_set_memory_limit (size_t bytes);
/* The size of the emulated device memory in bytes. */
size_t moshi_emu_get_memory_limit (void);

/* Number of live pinned host allocations (cudaMallocHost, cudaHostAlloc) and their size. */
size_t moshi_emu_live_host_allocations (size_t *bytes);

/* Work that ran: a kernel or GEMM captured into a graph counts when the graph runs it (once per
 * cudaGraphLaunch), not when it is captured. */
typedef struct {
  uint64_t launches;        /* kernel launches that ran */
  uint64_t blocks;          /* blocks run */
  uint64_t threads;         /* threads run */
  uint64_t barriers;        /* __syncthreads completed (per block) */
  uint64_t warp_syncs;      /* warp-synchronous operations (per lane) */
  uint64_t switches;        /* fiber switches */
  uint64_t gemms;           /* cuBLAS GEMM calls (a batched call counts once) */
  uint64_t graph_launches;  /* cudaGraphLaunch calls that ran their graph */
  uint64_t graph_nodes;     /* graph nodes replayed (a failing node counts, the rest do not) */
} MoshiEmuStats;

void moshi_emu_get_stats (MoshiEmuStats *stats);

/* A device fault on demand, as a GPU raises one mid-stream (an Xid, an ECC error): the
 * after_launches-th kernel launch from now (1: the next one), eager or replayed from a graph,
 * fails with cudaErrorIllegalAddress instead of running. As after a real fault the error is
 * sticky: every later runtime call returns it, and cuBLAS calls fail, until cudaDeviceReset
 * (which also cancels an injection still pending). Launches refused by their checks and
 * launches captured into a graph do not count. 0 cancels a pending injection. One injection
 * for the whole process: the tests that use it run in a process of their own. The initial one
 * comes from $MOSHI_CUDA_EMU_FAULT_AFTER=N, read at the first launch. */
void moshi_emu_inject_fault (uint64_t after_launches);
/* The launches left before the injected fault (1: the next one faults), 0 when none is
 * pending. */
uint64_t moshi_emu_fault_pending (void);

#ifdef __cplusplus
}
#endif
