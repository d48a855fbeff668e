/* gst-moshi CUDA emulator: state shared by the runtime, scheduler and cuBLAS sources. */
#pragma once

#include <cuda_runtime_api.h>

#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>

#include "moshi-cuda-emu.h"

/* A node of a graph captured from a stream (cudaGraphNode_t): the work of one call, with
 * everything it needs copied at capture time. Nodes do not change once captured, so a graph and
 * the execs instantiated from it share them (a graph destroyed after cudaGraphInstantiate leaves
 * its execs intact, as in CUDA). */
struct CUgraphNode_st {
  CUgraphNode_st (cudaGraphNodeType type, std::string what);
  virtual ~CUgraphNode_st ();
  CUgraphNode_st (const CUgraphNode_st &) = delete;
  CUgraphNode_st &operator= (const CUgraphNode_st &) = delete;

  /* Runs the work on stream (the stream the graph is launched into) through the same path as
   * an eager call, with its checks; the error is that of the eager call. */
  virtual cudaError_t replay (cudaStream_t stream) = 0;

  const cudaGraphNodeType type;
  const std::string what;       /* the call that captured it, for messages */
};

namespace moshi_emu {

/* One lock for all emulator state. API calls take it; a launch holds it while its blocks run,
 * so the allocation registry cannot change under a kernel (the fault handler reads it). */
extern std::recursive_mutex g_lock;

/* A device allocation. The mapping is [guard page][front slack][user bytes][back slack]
 * [guard page]: the user bytes end at most 15 bytes before the second guard page (the start is
 * 16-byte aligned) and both slacks hold a canary, so that an access past either end faults or
 * breaks the canary. */
struct Alloc {
  char *map;
  size_t map_len;
  char *ptr;
  size_t size;
  char *data_begin;     /* first byte after the front guard page */
  char *data_end;       /* the back guard page */
};

/* The allocation whose user bytes contain p (or that starts at p), or NULL. */
const Alloc *find_alloc (const void *p);
/* The allocation whose guard pages or slack bytes contain p, or NULL. */
const Alloc *find_alloc_near (const void *p);
/* True when [p, p + bytes) lies in one allocation's user bytes. */
bool range_is_device (const void *p, size_t bytes);
/* Checks both canaries; on damage writes a description into msg and returns false. */
bool check_canaries (const Alloc *a, char *msg, size_t len);

/* Records a diagnostic: last message, stderr. */
void report (const char *fmt, ...) __attribute__ ((format (printf, 1, 2)));
void vreport (const char *fmt, va_list ap);

/* The error a call returns: also becomes the calling thread's last error; the sticky kinds
 * (an illegal address, a failed launch) stay until cudaDeviceReset, as on a GPU. */
cudaError_t fail (cudaError_t err);
cudaError_t sticky_error ();

bool stream_is_valid (cudaStream_t stream);

/* Stream capture, for a call that queues work on stream (after checking that the stream is
 * live): sets *capturing when the stream is capturing, in which case the caller validates the
 * work as it would eagerly and hands a node to capture_add instead of running it. Fails (and
 * reports) when the stream's capture was invalidated, and when stream is the legacy default
 * stream while a blocking stream is capturing (the implicit dependency a GPU refuses). */
cudaError_t capture_state (const char *call, cudaStream_t stream, bool *capturing);
/* Appends node (owned from then on) to the capture of stream. */
void capture_add (cudaStream_t stream, CUgraphNode_st *node);
/* Work queued on stream failed its checks: invalidates the stream's capture, if any (a GPU
 * invalidates a capture on any error in it). Returns err. */
cudaError_t capture_fail (cudaStream_t stream, cudaError_t err);

/* True when [p, p + bytes) lies in one live pinned host allocation (cudaMallocHost,
 * cudaHostAlloc). */
bool range_is_pinned (const void *p, size_t bytes);

int max_dynamic_smem (const void *func);

extern MoshiEmuStats g_stats;

/* Launches left before the injected fault (moshi_emu_inject_fault), 0 when none is pending. */
extern uint64_t g_fault_countdown;

/* cuBLAS uses these to run its products "on" a stream. */
struct StreamScope {
  std::lock_guard<std::recursive_mutex> guard { g_lock };
};

}  // namespace moshi_emu
