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

#ifdef __cplusplus
}
#endif
