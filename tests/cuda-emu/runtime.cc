/* gst-moshi CUDA emulator: the runtime API subset (device memory, pinned host memory, copies,
 * streams, events, stream capture and graphs, errors, device queries) on the CPU.
 *
 * Device memory is host memory from its own mapping with guard pages, kept in a registry so that
 * every call can tell a device pointer from a host pointer: a copy in the wrong direction, a host
 * pointer where a device pointer belongs, or a range that runs past an allocation fails with the
 * error a GPU gives and a message that says what was wrong. Pinned host memory (cudaMallocHost,
 * cudaHostAlloc) is ordinary heap memory in a registry of its own: it is host memory for copies
 * and kernels alike (a kernel given a pinned pointer fails as with any host pointer; mapped
 * pinned memory is not emulated), and it is what a captured copy may use on its host side.
 * Work is executed synchronously on the calling thread, in stream order; streams and events keep
 * their API and checks.
 *
 * Stream capture records instead of running: while a stream is capturing, the copies, memsets,
 * kernel launches (scheduler.cc) and cuBLAS GEMMs (cublas.cc) queued on it are checked as they
 * would be eagerly and become the nodes of a graph, in call order; cudaGraphLaunch runs them
 * synchronously on the stream it is given, through the same code and checks as eager calls, and
 * stops at the first node that fails. The rules of CUDA's capture are enforced, each with a
 * message: a captured copy's host side must be pinned (it is read or written when the graph
 * runs, not at capture); synchronizing or querying a capturing stream, cudaDeviceSynchronize,
 * and the potentially unsafe calls (cudaMalloc, cudaFree, cudaMallocHost/HostAlloc/FreeHost,
 * synchronous cudaMemcpy/cudaMemset) under the capture modes that forbid them fail with
 * cudaErrorStreamCaptureUnsupported; the legacy default stream cannot be used while a blocking
 * stream is capturing; an error in captured work invalidates the capture, and
 * cudaStreamEndCapture then returns cudaErrorStreamCaptureInvalidated and no graph. A plain
 * cudaEventRecord in a capture adds no node (as on a GPU): the event then orders work within the
 * capture only, and host waits on it fail with cudaErrorCapturedEvent until it is recorded
 * outside a capture; cudaEventRecordWithFlags (cudaEventRecordExternal) adds a node that records
 * it when the graph runs. Not emulated: captures that span several streams (an event recorded in
 * one capture waited on by another stream), graphs launched into a capture, graph editing. */
#include "emu-internal.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <sys/mman.h>
#include <thread>
#include <unistd.h>
#include <vector>

namespace moshi_emu {
struct Capture;
}

struct CUstream_st {
  unsigned flags;
  int priority;
  moshi_emu::Capture *capture;  /* the capture in progress on the stream, or NULL */
};

struct CUevent_st {
  unsigned flags;
  bool recorded;
  std::chrono::steady_clock::time_point when;
  unsigned long long capture_id;        /* last recorded in this capture; 0: outside captures */
};

struct CUgraph_st {
  std::vector<std::shared_ptr<CUgraphNode_st>> nodes;   /* in capture (= execution) order */
};

struct CUgraphExec_st {
  std::vector<std::shared_ptr<CUgraphNode_st>> nodes;
  unsigned long long flags;
};

namespace moshi_emu {

struct Capture {
  unsigned long long id;
  cudaStreamCaptureMode mode;
  std::thread::id thread;       /* the thread that began it */
  bool invalidated;
  std::string why;              /* the diagnostic that invalidated it */
  CUgraph_st graph;
};

/* A pinned host allocation. */
struct Pinned {
  size_t size;
  unsigned flags;
};

std::recursive_mutex g_lock;
MoshiEmuStats g_stats;
uint64_t g_fault_countdown;

static std::map<uintptr_t, Alloc> allocs;        /* by user pointer */
static std::map<uintptr_t, Pinned> pinned;       /* by pointer */
static std::set<cudaStream_t> streams;
static std::set<cudaEvent_t> events;
static std::set<cudaGraph_t> graphs;
static std::set<cudaGraphExec_t> graph_execs;
static std::set<const CUgraphNode_st *> graph_nodes;     /* live nodes, for handle checks */
static unsigned n_captures;                              /* streams with a capture */
static unsigned long long last_capture_id;
static thread_local cudaStreamCaptureMode thread_capture_mode = cudaStreamCaptureModeGlobal;
static std::map<const void *, int> func_smem;
static cudaError_t sticky = cudaSuccess;
static thread_local cudaError_t last_error = cudaSuccess;
static std::string last_message;
static int current_device = 0;

/* The slack around an allocation holds a per-allocation pattern whose 32-bit words are
 * signaling NaNs: arithmetic on a value read from it gives a different (quiet) NaN and a copy
 * from one allocation's slack into another's does not match the other's pattern, so a write
 * that went out of bounds changes the canary whatever it wrote. */
static unsigned char
canary_byte (const Alloc *a, const char *at)
{
  uint32_t h = (uint32_t) (((uintptr_t) a->ptr >> 4) * 2654435761u);
  uint32_t word = 0x7f800000u | ((h & 0x3fffffu) | 1u);
  return (unsigned char) (word >> (8 * ((uintptr_t) at & 3)));
}
static const unsigned char POISON = 0xff;         /* fresh device memory reads as NaN */
static const size_t TOTAL_MEMORY = (size_t) 16 << 30;
/* 0 until moshi_emu_set_memory_limit or $MOSHI_CUDA_EMU_MEMORY_LIMIT sets a smaller device */
static size_t memory_limit;
static bool memory_limit_from_env_done;

/* The size of the emulated device; caller holds g_lock. */
static size_t
total_memory ()
{
  if (!memory_limit_from_env_done) {
    memory_limit_from_env_done = true;
    const char *e = getenv ("MOSHI_CUDA_EMU_MEMORY_LIMIT");
    if (e != nullptr && *e != 0) {
      char *end;
      unsigned long long n = strtoull (e, &end, 10);
      if (*end != 0)
        fprintf (stderr, "moshi-cuda-emu: MOSHI_CUDA_EMU_MEMORY_LIMIT='%s' is not a number of "
            "bytes; the device keeps its %zu bytes\n", e, TOTAL_MEMORY);
      else
        memory_limit = (size_t) n;
    }
  }
  return memory_limit != 0 && memory_limit < TOTAL_MEMORY ? memory_limit : TOTAL_MEMORY;
}

static size_t
used_memory ()
{
  size_t used = 0;
  for (const auto &a : allocs)
    used += a.second.size;
  return used;
}

static size_t
page_size ()
{
  static size_t page = (size_t) sysconf (_SC_PAGESIZE);
  return page;
}

void
vreport (const char *fmt, va_list ap)
{
  char buf[2048];
  vsnprintf (buf, sizeof buf, fmt, ap);
  std::lock_guard<std::recursive_mutex> guard (g_lock);
  last_message = buf;
  if (getenv ("MOSHI_CUDA_EMU_QUIET") == nullptr)
    fprintf (stderr, "moshi-cuda-emu: %s\n", buf);
}

void
report (const char *fmt, ...)
{
  va_list ap;
  va_start (ap, fmt);
  vreport (fmt, ap);
  va_end (ap);
}

static bool
is_sticky (cudaError_t err)
{
  return err == cudaErrorIllegalAddress || err == cudaErrorLaunchFailure
      || err == cudaErrorAssert || err == cudaErrorIllegalInstruction
      || err == cudaErrorLaunchTimeout;
}

cudaError_t
fail (cudaError_t err)
{
  if (err == cudaSuccess)
    return err;
  if (is_sticky (err)) {
    std::lock_guard<std::recursive_mutex> guard (g_lock);
    if (sticky == cudaSuccess)
      sticky = err;
  }
  last_error = err;
  return err;
}

cudaError_t
sticky_error ()
{
  return sticky;
}

/* ------------------------------------------------------------------ registry */

const Alloc *
find_alloc (const void *p)
{
  uintptr_t a = (uintptr_t) p;
  auto it = allocs.upper_bound (a);
  if (it == allocs.begin ())
    return nullptr;
  --it;
  const Alloc &al = it->second;
  if (a < (uintptr_t) al.ptr + al.size || a == (uintptr_t) al.ptr)
    return &al;
  return nullptr;
}

const Alloc *
find_alloc_near (const void *p)
{
  const char *c = (const char *) p;
  uintptr_t a = (uintptr_t) p;
  auto it = allocs.upper_bound (a);
  if (it != allocs.end () && c >= it->second.map && c < it->second.map + it->second.map_len)
    return &it->second;
  if (it != allocs.begin ()) {
    --it;
    if (c >= it->second.map && c < it->second.map + it->second.map_len)
      return &it->second;
  }
  return nullptr;
}

bool
range_is_device (const void *p, size_t bytes)
{
  const Alloc *a = find_alloc (p);
  if (a == nullptr)
    return false;
  return (size_t) ((const char *) p - a->ptr) + bytes <= a->size;
}

/* The pinned allocation that contains p, or pinned.end (). */
static std::map<uintptr_t, Pinned>::const_iterator
find_pinned (const void *p)
{
  uintptr_t a = (uintptr_t) p;
  auto it = pinned.upper_bound (a);
  if (it == pinned.begin ())
    return pinned.end ();
  --it;
  if (a < it->first + it->second.size)
    return it;
  return pinned.end ();
}

bool
range_is_pinned (const void *p, size_t bytes)
{
  auto it = find_pinned (p);
  return it != pinned.end () && (uintptr_t) p - it->first + bytes <= it->second.size;
}

bool
check_canaries (const Alloc *a, char *msg, size_t len)
{
  for (const char *c = a->ptr - 1; c >= a->data_begin; c--)
    if ((unsigned char) *c != canary_byte (a, c)) {
      size_t before = (size_t) (a->ptr - c);
      /* find the furthest damaged byte for the message */
      for (const char *d = a->data_begin; d < c; d++)
        if ((unsigned char) *d != canary_byte (a, d)) {
          before = (size_t) (a->ptr - d);
          break;
        }
      snprintf (msg, len, "out-of-bounds write before the start of device allocation %p "
          "(%zu bytes): the canary changed %zu byte(s) before it", (void *) a->ptr, a->size,
          before);
      return false;
    }
  for (const char *c = a->ptr + a->size; c < a->data_end; c++)
    if ((unsigned char) *c != canary_byte (a, c)) {
      snprintf (msg, len, "out-of-bounds write past the end of device allocation %p (%zu "
          "bytes): the canary changed %zu byte(s) after its end", (void *) a->ptr, a->size,
          (size_t) (c - (a->ptr + a->size)));
      return false;
    }
  return true;
}

static cudaError_t
alloc_device (void **out, size_t size)
{
  size_t page = page_size ();
  size_t user = (size + 15) & ~(size_t) 15;
  size_t data = (user + page - 1) / page * page;
  size_t map_len = data + 2 * page;
  void *m = mmap (nullptr, map_len, PROT_READ | PROT_WRITE,
      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED)
    return cudaErrorMemoryAllocation;
  char *map = (char *) m;
  mprotect (map, page, PROT_NONE);
  mprotect (map + page + data, page, PROT_NONE);
  Alloc a;
  a.map = map;
  a.map_len = map_len;
  a.data_begin = map + page;
  a.data_end = map + page + data;
  a.ptr = a.data_end - user;
  a.size = size;
  for (char *c = a.data_begin; c < a.ptr; c++)
    *c = (char) canary_byte (&a, c);
  memset (a.ptr, POISON, size);
  for (char *c = a.ptr + size; c < a.data_end; c++)
    *c = (char) canary_byte (&a, c);
  allocs[(uintptr_t) a.ptr] = a;
  *out = a.ptr;
  return cudaSuccess;
}

static void
release (std::map<uintptr_t, Alloc>::iterator it)
{
  char msg[256];
  if (!check_canaries (&it->second, msg, sizeof msg)) {
    report ("cudaFree: %s", msg);
    fail (cudaErrorIllegalAddress);
  }
  munmap (it->second.map, it->second.map_len);
  allocs.erase (it);
}

/* Describes a pointer for messages: "device allocation 0x.. (N bytes) + off" or "host". */
static std::string
describe (const void *p)
{
  char buf[160];
  const Alloc *a = find_alloc (p);
  if (a != nullptr) {
    snprintf (buf, sizeof buf, "device pointer %p (offset %zu in a %zu-byte allocation)", p,
        (size_t) ((const char *) p - a->ptr), a->size);
  } else if ((a = find_alloc_near (p)) != nullptr) {
    snprintf (buf, sizeof buf, "pointer %p outside device allocation %p (%zu bytes)", p,
        (void *) a->ptr, a->size);
  } else if (find_pinned (p) != pinned.end ()) {
    auto it = find_pinned (p);
    snprintf (buf, sizeof buf, "pinned host pointer %p (offset %zu in a %zu-byte pinned "
        "allocation)", p, (size_t) ((uintptr_t) p - it->first), it->second.size);
  } else {
    snprintf (buf, sizeof buf, "host pointer %p", p);
  }
  return buf;
}

/* Checks that [p, p + bytes) is device memory (want_device) or not device memory at all. */
static bool
check_side (const char *call, const char *what, const void *p, size_t bytes, bool want_device)
{
  if (bytes == 0)
    return true;
  if (p == nullptr) {
    report ("%s: %s is NULL", call, what);
    return false;
  }
  const Alloc *a = find_alloc (p);
  if (want_device) {
    if (a == nullptr) {
      report ("%s: %s must be device memory but is a %s", call, what, describe (p).c_str ());
      return false;
    }
    size_t off = (size_t) ((const char *) p - a->ptr);
    if (off + bytes > a->size) {
      report ("%s: %s range of %zu bytes at offset %zu runs %zu bytes past the end of its "
          "%zu-byte device allocation", call, what, bytes, off, off + bytes - a->size, a->size);
      return false;
    }
    return true;
  }
  if (a != nullptr || range_is_device ((const char *) p + bytes - 1, 1)) {
    report ("%s: %s must be host memory but is a %s (wrong cudaMemcpyKind?)", call, what,
        describe (p).c_str ());
    return false;
  }
  /* the rest of a pageable range is the host's business; a pinned one has a known end */
  auto it = find_pinned (p);
  if (it != pinned.end () && (uintptr_t) p - it->first + bytes > it->second.size) {
    size_t off = (size_t) ((uintptr_t) p - it->first);
    report ("%s: %s range of %zu bytes at offset %zu runs %zu bytes past the end of its "
        "%zu-byte pinned host allocation", call, what, bytes, off,
        off + bytes - it->second.size, it->second.size);
    return false;
  }
  return true;
}

/* A captured copy reads or writes its host side when the graph runs, so the host side must
 * stay valid and unmoved: CUDA only captures copies from and to pinned memory. */
static bool
check_pinned (const char *call, const char *what, const void *p, size_t bytes)
{
  if (bytes == 0 || range_is_pinned (p, bytes))
    return true;
  report ("%s: %s is pageable host memory (%p): pageable host memory cannot be captured (a "
      "graph copies host memory when it runs, not at capture); allocate the host buffer with "
      "cudaMallocHost or cudaHostAlloc", call, what, p);
  return false;
}

int
max_dynamic_smem (const void *func)
{
  auto it = func_smem.find (func);
  return it == func_smem.end () ? 48 * 1024 : it->second;
}

bool
stream_is_valid (cudaStream_t stream)
{
  if (stream == nullptr || stream == cudaStreamLegacy || stream == cudaStreamPerThread)
    return true;
  return streams.count (stream) != 0;
}

/* ------------------------------------------------------------------ capture rules */

static bool
is_legacy (cudaStream_t stream)
{
  return stream == nullptr || stream == cudaStreamLegacy;
}

/* The capture on a live stream, or NULL (the default streams never capture). */
static Capture *
capture_of (cudaStream_t stream)
{
  if (is_legacy (stream) || stream == cudaStreamPerThread || streams.count (stream) == 0)
    return nullptr;
  return stream->capture;
}

/* The stream whose capture has this id, or NULL when that capture has ended. */
static cudaStream_t
capture_stream (unsigned long long id)
{
  if (id == 0 || n_captures == 0)
    return nullptr;
  for (cudaStream_t s : streams)
    if (s->capture != nullptr && s->capture->id == id)
      return s;
  return nullptr;
}

static const char *
mode_name (cudaStreamCaptureMode mode)
{
  switch (mode) {
    case cudaStreamCaptureModeGlobal: return "cudaStreamCaptureModeGlobal";
    case cudaStreamCaptureModeThreadLocal: return "cudaStreamCaptureModeThreadLocal";
    case cudaStreamCaptureModeRelaxed: return "cudaStreamCaptureModeRelaxed";
  }
  return "?";
}

/* Call after report (): the capture keeps the diagnostic for cudaStreamEndCapture. */
static void
invalidate (Capture *c)
{
  if (c->invalidated)
    return;
  c->invalidated = true;
  c->why = last_message;
}

/* Work on (or a wait for) the legacy default stream waits for every blocking stream, which a
 * capture cannot express: a GPU refuses it while a blocking stream is capturing. */
static cudaError_t
legacy_check (const char *call, bool invalidates)
{
  if (n_captures == 0)
    return cudaSuccess;
  cudaStream_t blocking = nullptr;
  for (cudaStream_t s : streams)
    if (s->capture != nullptr && !(s->flags & cudaStreamNonBlocking) && blocking == nullptr)
      blocking = s;
  if (blocking == nullptr)
    return cudaSuccess;
  report ("%s: the legacy default stream is used while blocking stream %p is capturing (an "
      "implicit dependency on the capture; capture on a stream created with "
      "cudaStreamNonBlocking, or use another stream)", call, (void *) blocking);
  if (invalidates)
    for (cudaStream_t s : streams)
      if (s->capture != nullptr && !(s->flags & cudaStreamNonBlocking))
        invalidate (s->capture);
  return fail (cudaErrorStreamCaptureImplicit);
}

/* The potentially unsafe calls (allocation, freeing, synchronous copies): forbidden to a thread
 * whose capture mode is not relaxed while it has a capture that is not relaxed, or, in global
 * mode, while another thread has a global capture. The captures concerned are invalidated. */
static cudaError_t
unsafe_check (const char *call)
{
  if (n_captures == 0 || thread_capture_mode == cudaStreamCaptureModeRelaxed)
    return cudaSuccess;
  std::thread::id self = std::this_thread::get_id ();
  auto forbids = [&] (const Capture *c) {
    if (c == nullptr)
      return false;
    if (c->thread == self)
      return c->mode != cudaStreamCaptureModeRelaxed;
    return c->mode == cudaStreamCaptureModeGlobal
        && thread_capture_mode == cudaStreamCaptureModeGlobal;
  };
  cudaStream_t culprit = nullptr;
  for (cudaStream_t s : streams)
    if (forbids (s->capture) && culprit == nullptr)
      culprit = s;
  if (culprit == nullptr)
    return cudaSuccess;
  report ("%s: not permitted while stream %p is capturing in %s (a potentially unsafe call "
      "during stream capture: make it before cudaStreamBeginCapture, or capture in "
      "cudaStreamCaptureModeRelaxed)", call, (void *) culprit,
      mode_name (culprit->capture->mode));
  for (cudaStream_t s : streams)
    if (forbids (s->capture))
      invalidate (s->capture);
  return fail (cudaErrorStreamCaptureUnsupported);
}

cudaError_t
capture_state (const char *call, cudaStream_t stream, bool *capturing)
{
  *capturing = false;
  if (n_captures == 0)
    return cudaSuccess;
  if (is_legacy (stream))
    return legacy_check (call, true);
  Capture *c = capture_of (stream);
  if (c == nullptr)
    return cudaSuccess;
  if (c->invalidated) {
    report ("%s: the capture on stream %p was invalidated by an earlier error (%s); end it with "
        "cudaStreamEndCapture", call, (void *) stream, c->why.c_str ());
    return fail (cudaErrorStreamCaptureInvalidated);
  }
  *capturing = true;
  return cudaSuccess;
}

void
capture_add (cudaStream_t stream, CUgraphNode_st *node)
{
  capture_of (stream)->graph.nodes.emplace_back (node);
}

cudaError_t
capture_fail (cudaStream_t stream, cudaError_t err)
{
  if (Capture *c = capture_of (stream))
    invalidate (c);
  return err;
}

/* A stream cannot be synchronized or queried while it is capturing: its work has not run. */
static cudaError_t
sync_check (const char *call, cudaStream_t stream)
{
  if (n_captures == 0)
    return cudaSuccess;
  if (is_legacy (stream))
    return legacy_check (call, true);
  Capture *c = capture_of (stream);
  if (c == nullptr)
    return cudaSuccess;
  report ("%s: stream %p is capturing (its work runs when the graph is launched; synchronize "
      "after cudaStreamEndCapture and cudaGraphLaunch)", call, (void *) stream);
  invalidate (c);
  return fail (cudaErrorStreamCaptureUnsupported);
}

static void
end_capture (cudaStream_t stream)
{
  delete stream->capture;
  stream->capture = nullptr;
  n_captures--;
}

}  // namespace moshi_emu

using namespace moshi_emu;

CUgraphNode_st::CUgraphNode_st (cudaGraphNodeType type_, std::string what_)
  : type (type_), what (std::move (what_))
{
  graph_nodes.insert (this);
}

CUgraphNode_st::~CUgraphNode_st ()
{
  graph_nodes.erase (this);
}

#define ENTER() \
  std::lock_guard<std::recursive_mutex> guard_ (g_lock); \
  if (sticky != cudaSuccess) \
    return sticky

/* The calls that release something (memory, a stream, an event, a graph) return the sticky
 * error as every call does after a fault, but release it all the same. On a GPU what a faulted
 * context holds goes with the context; here the release keeps leak checks meaningful: what is
 * still live at exit is what the caller never released, not what the fault stranded. A handle
 * that is not live is reported as such, fault or not (a double release is the caller's bug). */
#define ENTER_RELEASE() \
  std::lock_guard<std::recursive_mutex> guard_ (g_lock)

/* What a release returns when it did its part. */
#define RELEASED() (sticky != cudaSuccess ? sticky : cudaSuccess)

/* ------------------------------------------------------------------ errors */

cudaError_t
cudaGetLastError (void)
{
  std::lock_guard<std::recursive_mutex> guard (g_lock);
  if (sticky != cudaSuccess)
    return sticky;
  cudaError_t e = last_error;
  last_error = cudaSuccess;
  return e;
}

cudaError_t
cudaPeekAtLastError (void)
{
  std::lock_guard<std::recursive_mutex> guard (g_lock);
  return sticky != cudaSuccess ? sticky : last_error;
}

static const struct {
  cudaError_t code;
  const char *name, *text;
} error_table[] = {
  { cudaSuccess, "cudaSuccess", "no error" },
  { cudaErrorInvalidValue, "cudaErrorInvalidValue", "invalid argument" },
  { cudaErrorMemoryAllocation, "cudaErrorMemoryAllocation", "out of memory" },
  { cudaErrorInvalidConfiguration, "cudaErrorInvalidConfiguration", "invalid configuration argument" },
  { cudaErrorInvalidDevicePointer, "cudaErrorInvalidDevicePointer", "invalid device pointer" },
  { cudaErrorInvalidMemcpyDirection, "cudaErrorInvalidMemcpyDirection", "invalid copy direction for memcpy" },
  { cudaErrorInvalidDeviceFunction, "cudaErrorInvalidDeviceFunction", "invalid device function" },
  { cudaErrorNoDevice, "cudaErrorNoDevice", "no CUDA-capable device is detected" },
  { cudaErrorInvalidDevice, "cudaErrorInvalidDevice", "invalid device ordinal" },
  { cudaErrorInvalidResourceHandle, "cudaErrorInvalidResourceHandle", "invalid resource handle" },
  { cudaErrorNotReady, "cudaErrorNotReady", "device not ready" },
  { cudaErrorIllegalAddress, "cudaErrorIllegalAddress", "an illegal memory access was encountered" },
  { cudaErrorLaunchOutOfResources, "cudaErrorLaunchOutOfResources", "too many resources requested for launch" },
  { cudaErrorLaunchTimeout, "cudaErrorLaunchTimeout", "the launch timed out and was terminated" },
  { cudaErrorAssert, "cudaErrorAssert", "device-side assert triggered" },
  { cudaErrorIllegalInstruction, "cudaErrorIllegalInstruction", "an illegal instruction was encountered" },
  { cudaErrorLaunchFailure, "cudaErrorLaunchFailure", "unspecified launch failure" },
  { cudaErrorNotSupported, "cudaErrorNotSupported", "operation not supported" },
  { cudaErrorIllegalState, "cudaErrorIllegalState", "the resource is not in a valid state to "
    "perform the requested operation" },
  { cudaErrorStreamCaptureUnsupported, "cudaErrorStreamCaptureUnsupported",
    "operation not permitted when stream is capturing" },
  { cudaErrorStreamCaptureInvalidated, "cudaErrorStreamCaptureInvalidated",
    "operation failed due to a previous error during capture" },
  { cudaErrorStreamCaptureMerge, "cudaErrorStreamCaptureMerge",
    "operation would result in a merge of separate capture sequences" },
  { cudaErrorStreamCaptureUnmatched, "cudaErrorStreamCaptureUnmatched",
    "capture was not ended in the same stream as it began" },
  { cudaErrorStreamCaptureIsolation, "cudaErrorStreamCaptureIsolation",
    "dependency created on uncaptured work in another stream" },
  { cudaErrorStreamCaptureImplicit, "cudaErrorStreamCaptureImplicit",
    "operation would make the legacy stream depend on a capturing blocking stream" },
  { cudaErrorCapturedEvent, "cudaErrorCapturedEvent",
    "operation not permitted on an event last recorded in a capturing stream" },
  { cudaErrorStreamCaptureWrongThread, "cudaErrorStreamCaptureWrongThread",
    "attempt to terminate a thread-local capture sequence from another thread" },
};

const char *
cudaGetErrorName (cudaError_t error)
{
  for (const auto &e : error_table)
    if (e.code == error)
      return e.name;
  return "cudaErrorUnknown";
}

const char *
cudaGetErrorString (cudaError_t error)
{
  for (const auto &e : error_table)
    if (e.code == error)
      return e.text;
  return "unknown error";
}

/* ------------------------------------------------------------------ device */

cudaError_t
cudaGetDeviceCount (int *count)
{
  if (count == nullptr)
    return fail (cudaErrorInvalidValue);
  *count = 1;
  return cudaSuccess;
}

cudaError_t
cudaSetDevice (int device)
{
  if (device != 0)
    return fail (cudaErrorInvalidDevice);
  current_device = device;
  return cudaSuccess;
}

cudaError_t
cudaGetDevice (int *device)
{
  if (device == nullptr)
    return fail (cudaErrorInvalidValue);
  *device = current_device;
  return cudaSuccess;
}

cudaError_t
cudaGetDeviceProperties (struct cudaDeviceProp *prop, int device)
{
  if (prop == nullptr)
    return fail (cudaErrorInvalidValue);
  if (device != 0)
    return fail (cudaErrorInvalidDevice);
  memset (prop, 0, sizeof *prop);
  snprintf (prop->name, sizeof prop->name, "gst-moshi CUDA emulator (CPU)");
  {
    std::lock_guard<std::recursive_mutex> guard (g_lock);
    prop->totalGlobalMem = total_memory ();
  }
  prop->sharedMemPerBlock = 48 * 1024;
  prop->sharedMemPerBlockOptin = 227 * 1024;
  prop->regsPerBlock = 65536;
  prop->warpSize = 32;
  prop->maxThreadsPerBlock = 1024;
  prop->maxThreadsDim[0] = 1024;
  prop->maxThreadsDim[1] = 1024;
  prop->maxThreadsDim[2] = 64;
  prop->maxGridSize[0] = 0x7fffffff;
  prop->maxGridSize[1] = 65535;
  prop->maxGridSize[2] = 65535;
  prop->major = 9;
  prop->minor = 0;
  prop->multiProcessorCount = 1;
  return cudaSuccess;
}

cudaError_t
cudaDeviceGetAttribute (int *value, enum cudaDeviceAttr attr, int device)
{
  if (value == nullptr)
    return fail (cudaErrorInvalidValue);
  if (device != 0)
    return fail (cudaErrorInvalidDevice);
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; break;
    case cudaDevAttrWarpSize: *value = 32; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = 48 * 1024; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = 227 * 1024; break;
    case cudaDevAttrMultiProcessorCount: *value = 1; break;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; break;
    default:
      report ("cudaDeviceGetAttribute: attribute %d is not emulated", (int) attr);
      return fail (cudaErrorInvalidValue);
  }
  return cudaSuccess;
}

cudaError_t
cudaDriverGetVersion (int *version)
{
  if (version == nullptr)
    return fail (cudaErrorInvalidValue);
  *version = CUDART_VERSION;
  return cudaSuccess;
}

cudaError_t
cudaRuntimeGetVersion (int *version)
{
  if (version == nullptr)
    return fail (cudaErrorInvalidValue);
  *version = CUDART_VERSION;
  return cudaSuccess;
}

cudaError_t
cudaDeviceSynchronize (void)
{
  ENTER ();
  if (n_captures > 0) {
    cudaStream_t first = nullptr;
    for (cudaStream_t s : streams)
      if (s->capture != nullptr && first == nullptr)
        first = s;
    report ("cudaDeviceSynchronize: not permitted while stream %p is capturing (captured work "
        "runs when its graph is launched)", (void *) first);
    for (cudaStream_t s : streams)
      if (s->capture != nullptr)
        invalidate (s->capture);
    return fail (cudaErrorStreamCaptureUnsupported);
  }
  return cudaSuccess;
}

/* Everything a context owns goes with it: device and pinned memory, streams (and their
 * captures), events, graphs and their execs. */
cudaError_t
cudaDeviceReset (void)
{
  std::lock_guard<std::recursive_mutex> guard (g_lock);
  while (!allocs.empty ()) {
    munmap (allocs.begin ()->second.map, allocs.begin ()->second.map_len);
    allocs.erase (allocs.begin ());
  }
  for (const auto &p : pinned)
    free ((void *) p.first);
  pinned.clear ();
  for (cudaGraphExec_t e : graph_execs)
    delete e;
  graph_execs.clear ();
  for (cudaGraph_t g : graphs)
    delete g;
  graphs.clear ();
  for (cudaStream_t s : streams) {
    delete s->capture;
    delete s;
  }
  streams.clear ();
  n_captures = 0;
  for (cudaEvent_t e : events)
    delete e;
  events.clear ();
  func_smem.clear ();
  g_fault_countdown = 0;
  sticky = cudaSuccess;
  last_error = cudaSuccess;
  return cudaSuccess;
}

cudaError_t
cudaFuncSetAttribute (const void *func, enum cudaFuncAttribute attr, int value)
{
  ENTER ();
  if (func == nullptr)
    return fail (cudaErrorInvalidDeviceFunction);
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || value > 227 * 1024) {
      report ("cudaFuncSetAttribute: %d bytes of dynamic shared memory is more than the "
          "227 KiB a block can have", value);
      return fail (cudaErrorInvalidValue);
    }
    func_smem[func] = value;
    return cudaSuccess;
  }
  if (attr == cudaFuncAttributePreferredSharedMemoryCarveout)
    return cudaSuccess;
  report ("cudaFuncSetAttribute: attribute %d is not emulated", (int) attr);
  return fail (cudaErrorInvalidValue);
}

/* ------------------------------------------------------------------ memory */

cudaError_t
cudaMalloc (void **ptr, size_t size)
{
  ENTER ();
  if (cudaError_t err = unsafe_check ("cudaMalloc"))
    return err;
  if (ptr == nullptr)
    return fail (cudaErrorInvalidValue);
  *ptr = nullptr;
  if (size == 0)
    return cudaSuccess;
  size_t used = used_memory (), total = total_memory ();
  /* a limit set below what is in use leaves nothing free rather than wrapping */
  if (used > total || size > total - used) {
    report ("cudaMalloc: %zu bytes do not fit in the emulated %zu bytes of device memory "
        "(%zu in use)", size, total, used);
    return fail (cudaErrorMemoryAllocation);
  }
  cudaError_t err = alloc_device (ptr, size);
  return err == cudaSuccess ? err : fail (err);
}

cudaError_t
cudaFree (void *ptr)
{
  ENTER_RELEASE ();
  if (cudaError_t err = unsafe_check ("cudaFree"))
    return err;
  if (ptr == nullptr)
    return RELEASED ();
  auto it = allocs.find ((uintptr_t) ptr);
  if (it == allocs.end ()) {
    report ("cudaFree: %s is not the start of a live device allocation",
        describe (ptr).c_str ());
    return fail (cudaErrorInvalidValue);
  }
  release (it);
  return RELEASED ();
}

/* Pinned host memory is heap memory (so AddressSanitizer sees host-side overruns), page
 * aligned like the driver's, and reads as NaN bytes until written, as fresh device memory does. */
static cudaError_t
host_alloc (const char *call, void **ptr, size_t size, unsigned flags)
{
  if (cudaError_t err = unsafe_check (call))
    return err;
  if (ptr == nullptr)
    return fail (cudaErrorInvalidValue);
  *ptr = nullptr;
  if (flags & ~(unsigned) (cudaHostAllocPortable | cudaHostAllocMapped
      | cudaHostAllocWriteCombined)) {
    report ("%s: unknown flags 0x%x", call, flags);
    return fail (cudaErrorInvalidValue);
  }
  if (size == 0)
    return cudaSuccess;
  void *p = nullptr;
  if (posix_memalign (&p, page_size (), size) != 0) {
    report ("%s: cannot allocate %zu bytes of pinned host memory", call, size);
    return fail (cudaErrorMemoryAllocation);
  }
  memset (p, POISON, size);
  pinned[(uintptr_t) p] = Pinned { size, flags };
  *ptr = p;
  return cudaSuccess;
}

cudaError_t
cudaHostAlloc (void **ptr, size_t size, unsigned int flags)
{
  ENTER ();
  return host_alloc ("cudaHostAlloc", ptr, size, flags);
}

cudaError_t
cudaMallocHost (void **ptr, size_t size)
{
  ENTER ();
  return host_alloc ("cudaMallocHost", ptr, size, cudaHostAllocDefault);
}

cudaError_t
cudaFreeHost (void *ptr)
{
  ENTER_RELEASE ();
  if (cudaError_t err = unsafe_check ("cudaFreeHost"))
    return err;
  if (ptr == nullptr)
    return RELEASED ();
  auto it = pinned.find ((uintptr_t) ptr);
  if (it == pinned.end ()) {
    report ("cudaFreeHost: %s is not the start of a live pinned host allocation (from "
        "cudaMallocHost or cudaHostAlloc)", describe (ptr).c_str ());
    return fail (cudaErrorInvalidValue);
  }
  pinned.erase (it);
  free (ptr);
  return RELEASED ();
}

cudaError_t
cudaHostGetFlags (unsigned int *flags, void *ptr)
{
  ENTER ();
  if (flags == nullptr)
    return fail (cudaErrorInvalidValue);
  auto it = find_pinned (ptr);
  if (ptr == nullptr || it == pinned.end ()) {
    report ("cudaHostGetFlags: %s is not pinned host memory", describe (ptr).c_str ());
    return fail (cudaErrorInvalidValue);
  }
  *flags = it->second.flags;
  return cudaSuccess;
}

cudaError_t
cudaMemGetInfo (size_t *free_bytes, size_t *total)
{
  ENTER ();
  size_t used = used_memory (), all = total_memory ();
  if (free_bytes)
    *free_bytes = used < all ? all - used : 0;
  if (total)
    *total = all;
  return cudaSuccess;
}

cudaError_t
cudaPointerGetAttributes (struct cudaPointerAttributes *attr, const void *ptr)
{
  ENTER ();
  if (attr == nullptr)
    return fail (cudaErrorInvalidValue);
  memset (attr, 0, sizeof *attr);
  if (ptr != nullptr && find_alloc (ptr) != nullptr) {
    attr->type = cudaMemoryTypeDevice;
    attr->device = 0;
    attr->devicePointer = (void *) ptr;
  } else if (ptr != nullptr && find_pinned (ptr) != pinned.end ()) {
    attr->type = cudaMemoryTypeHost;
    attr->device = 0;
    attr->hostPointer = (void *) ptr;
  } else {
    attr->type = cudaMemoryTypeUnregistered;
    attr->device = -2;
    attr->hostPointer = (void *) ptr;
  }
  return cudaSuccess;
}

static const char *
kind_name (cudaMemcpyKind kind)
{
  switch (kind) {
    case cudaMemcpyHostToHost: return "cudaMemcpyHostToHost";
    case cudaMemcpyHostToDevice: return "cudaMemcpyHostToDevice";
    case cudaMemcpyDeviceToHost: return "cudaMemcpyDeviceToHost";
    case cudaMemcpyDeviceToDevice: return "cudaMemcpyDeviceToDevice";
    case cudaMemcpyDefault: return "cudaMemcpyDefault";
  }
  return "?";
}

/* Which sides of a copy of kind are device memory; false for an invalid kind. */
static bool
copy_sides (cudaMemcpyKind kind, const void *dst, const void *src, bool *dst_dev, bool *src_dev)
{
  switch (kind) {
    case cudaMemcpyHostToHost: *dst_dev = false; *src_dev = false; return true;
    case cudaMemcpyHostToDevice: *dst_dev = true; *src_dev = false; return true;
    case cudaMemcpyDeviceToHost: *dst_dev = false; *src_dev = true; return true;
    case cudaMemcpyDeviceToDevice: *dst_dev = true; *src_dev = true; return true;
    case cudaMemcpyDefault:
      *dst_dev = dst != nullptr && find_alloc (dst) != nullptr;
      *src_dev = src != nullptr && find_alloc (src) != nullptr;
      return true;
  }
  return false;
}

static cudaError_t copy_2d (const char *call, void *dst, size_t dpitch, const void *src,
    size_t spitch, size_t width, size_t height, cudaMemcpyKind kind, cudaStream_t stream);

namespace {

struct CopyNode : CUgraphNode_st {
  const char *call;
  void *dst;
  size_t dpitch;
  const void *src;
  size_t spitch, width, height;
  cudaMemcpyKind kind;

  CopyNode (const char *call_, void *dst_, size_t dpitch_, const void *src_, size_t spitch_,
      size_t width_, size_t height_, cudaMemcpyKind kind_)
    : CUgraphNode_st (cudaGraphNodeTypeMemcpy, call_), call (call_), dst (dst_),
      dpitch (dpitch_), src (src_), spitch (spitch_), width (width_), height (height_),
      kind (kind_)
  {
  }

  cudaError_t
  replay (cudaStream_t stream) override
  {
    /* the host side was pinned at capture; freeing it since is a use after free */
    bool dst_dev, src_dev;
    size_t dspan = (height - 1) * dpitch + width, sspan = (height - 1) * spitch + width;
    if (copy_sides (kind, dst, src, &dst_dev, &src_dev)
        && ((!dst_dev && !range_is_pinned (dst, dspan))
            || (!src_dev && !range_is_pinned (src, sspan)))) {
      report ("%s (in a graph): its host %s %p is no longer pinned host memory (freed with "
          "cudaFreeHost since the capture?)", call,
          !dst_dev && !range_is_pinned (dst, dspan) ? "destination" : "source",
          !dst_dev && !range_is_pinned (dst, dspan) ? dst : src);
      return fail (cudaErrorIllegalAddress);
    }
    return copy_2d (call, dst, dpitch, src, spitch, width, height, kind, stream);
  }
};

struct MemsetNode : CUgraphNode_st {
  const char *call;
  void *ptr;
  int value;
  size_t count;

  MemsetNode (const char *call_, void *ptr_, int value_, size_t count_)
    : CUgraphNode_st (cudaGraphNodeTypeMemset, call_), call (call_), ptr (ptr_),
      value (value_), count (count_)
  {
  }

  cudaError_t replay (cudaStream_t stream) override;
};

/* An event a graph node uses must outlive the graph's replays. */
static bool
event_alive_at_replay (cudaEvent_t event, const char *call)
{
  if (events.count (event) != 0)
    return true;
  report ("%s (in a graph): event %p was destroyed after the capture", call, (void *) event);
  return false;
}

/* cudaEventRecordWithFlags (cudaEventRecordExternal) in a capture: records at replay. */
struct EventRecordNode : CUgraphNode_st {
  cudaEvent_t event;

  explicit EventRecordNode (cudaEvent_t event_)
    : CUgraphNode_st (cudaGraphNodeTypeEventRecord, "cudaEventRecordWithFlags"), event (event_)
  {
  }

  cudaError_t
  replay (cudaStream_t) override
  {
    if (!event_alive_at_replay (event, "cudaEventRecordWithFlags"))
      return fail (cudaErrorInvalidResourceHandle);
    event->recorded = true;
    event->when = std::chrono::steady_clock::now ();
    event->capture_id = 0;
    return cudaSuccess;
  }
};

/* cudaStreamWaitEvent (cudaEventWaitExternal) in a capture: work runs in order, so there is
 * nothing to wait for beyond the event being alive. */
struct EventWaitNode : CUgraphNode_st {
  cudaEvent_t event;

  explicit EventWaitNode (cudaEvent_t event_)
    : CUgraphNode_st (cudaGraphNodeTypeWaitEvent, "cudaStreamWaitEvent"), event (event_)
  {
  }

  cudaError_t
  replay (cudaStream_t) override
  {
    if (!event_alive_at_replay (event, "cudaStreamWaitEvent"))
      return fail (cudaErrorInvalidResourceHandle);
    return cudaSuccess;
  }
};

}  // namespace

/* Validates a copy of height rows of width bytes (pitches dpitch/spitch) and runs it, or
 * captures it when the stream is capturing. */
static cudaError_t
copy_2d (const char *call, void *dst, size_t dpitch, const void *src, size_t spitch,
    size_t width, size_t height, cudaMemcpyKind kind, cudaStream_t stream)
{
  if (!stream_is_valid (stream)) {
    report ("%s: stream %p is not a live stream", call, (void *) stream);
    return fail (cudaErrorInvalidResourceHandle);
  }
  bool capturing;
  if (cudaError_t err = capture_state (call, stream, &capturing))
    return err;
  if (width == 0 || height == 0)
    return cudaSuccess;
  if (dpitch < width || spitch < width) {
    report ("%s: pitch smaller than the width (%zu, %zu < %zu)", call, dpitch, spitch, width);
    return capture_fail (stream, fail (cudaErrorInvalidValue));
  }
  size_t dspan = (height - 1) * dpitch + width, sspan = (height - 1) * spitch + width;
  bool dst_dev, src_dev;
  if (!copy_sides (kind, dst, src, &dst_dev, &src_dev)) {
    report ("%s: invalid cudaMemcpyKind %d", call, (int) kind);
    return capture_fail (stream, fail (cudaErrorInvalidMemcpyDirection));
  }
  std::string dst_what = std::string ("destination of ") + kind_name (kind);
  std::string src_what = std::string ("source of ") + kind_name (kind);
  if (!check_side (call, dst_what.c_str (), dst, dspan, dst_dev)
      || !check_side (call, src_what.c_str (), src, sspan, src_dev))
    return capture_fail (stream, fail (cudaErrorInvalidValue));
  if (capturing) {
    if ((!dst_dev && !check_pinned (call, dst_what.c_str (), dst, dspan))
        || (!src_dev && !check_pinned (call, src_what.c_str (), src, sspan)))
      return capture_fail (stream, fail (cudaErrorStreamCaptureUnsupported));
    capture_add (stream, new CopyNode (call, dst, dpitch, src, spitch, width, height, kind));
    return cudaSuccess;
  }
  for (size_t r = 0; r < height; r++)
    memmove ((char *) dst + r * dpitch, (const char *) src + r * spitch, width);
  return cudaSuccess;
}

/* The synchronous copies and memsets are potentially unsafe during a capture (and use the
 * legacy default stream). */
cudaError_t
cudaMemcpy (void *dst, const void *src, size_t count, enum cudaMemcpyKind kind)
{
  ENTER ();
  if (cudaError_t err = unsafe_check ("cudaMemcpy"))
    return err;
  return copy_2d ("cudaMemcpy", dst, count, src, count, count, 1, kind, nullptr);
}

cudaError_t
cudaMemcpyAsync (void *dst, const void *src, size_t count, enum cudaMemcpyKind kind,
    cudaStream_t stream)
{
  ENTER ();
  return copy_2d ("cudaMemcpyAsync", dst, count, src, count, count, 1, kind, stream);
}

cudaError_t
cudaMemcpy2D (void *dst, size_t dpitch, const void *src, size_t spitch, size_t width,
    size_t height, enum cudaMemcpyKind kind)
{
  ENTER ();
  if (cudaError_t err = unsafe_check ("cudaMemcpy2D"))
    return err;
  return copy_2d ("cudaMemcpy2D", dst, dpitch, src, spitch, width, height, kind, nullptr);
}

cudaError_t
cudaMemcpy2DAsync (void *dst, size_t dpitch, const void *src, size_t spitch, size_t width,
    size_t height, enum cudaMemcpyKind kind, cudaStream_t stream)
{
  ENTER ();
  return copy_2d ("cudaMemcpy2DAsync", dst, dpitch, src, spitch, width, height, kind, stream);
}

static cudaError_t
memset_impl (const char *call, void *ptr, int value, size_t count, cudaStream_t stream)
{
  if (!stream_is_valid (stream)) {
    report ("%s: stream %p is not a live stream", call, (void *) stream);
    return fail (cudaErrorInvalidResourceHandle);
  }
  bool capturing;
  if (cudaError_t err = capture_state (call, stream, &capturing))
    return err;
  if (!check_side (call, "destination", ptr, count, true))
    return capture_fail (stream, fail (cudaErrorInvalidValue));
  if (capturing) {
    if (count > 0)
      capture_add (stream, new MemsetNode (call, ptr, value, count));
    return cudaSuccess;
  }
  memset (ptr, value, count);
  return cudaSuccess;
}

cudaError_t
MemsetNode::replay (cudaStream_t stream)
{
  return memset_impl (call, ptr, value, count, stream);
}

cudaError_t
cudaMemset (void *ptr, int value, size_t count)
{
  ENTER ();
  if (cudaError_t err = unsafe_check ("cudaMemset"))
    return err;
  return memset_impl ("cudaMemset", ptr, value, count, nullptr);
}

cudaError_t
cudaMemsetAsync (void *ptr, int value, size_t count, cudaStream_t stream)
{
  ENTER ();
  return memset_impl ("cudaMemsetAsync", ptr, value, count, stream);
}

/* ------------------------------------------------------------------ streams */

cudaError_t
cudaStreamCreateWithPriority (cudaStream_t *stream, unsigned int flags, int priority)
{
  ENTER ();
  if (stream == nullptr)
    return fail (cudaErrorInvalidValue);
  cudaStream_t s = new CUstream_st ();
  s->flags = flags;
  s->priority = priority;
  s->capture = nullptr;
  streams.insert (s);
  *stream = s;
  return cudaSuccess;
}

cudaError_t
cudaStreamCreateWithFlags (cudaStream_t *stream, unsigned int flags)
{
  return cudaStreamCreateWithPriority (stream, flags, 0);
}

cudaError_t
cudaStreamCreate (cudaStream_t *stream)
{
  return cudaStreamCreateWithPriority (stream, cudaStreamDefault, 0);
}

cudaError_t
cudaStreamDestroy (cudaStream_t stream)
{
  ENTER_RELEASE ();
  if (stream == nullptr || streams.count (stream) == 0) {
    report ("cudaStreamDestroy: %p is not a live stream", (void *) stream);
    return fail (cudaErrorInvalidResourceHandle);
  }
  if (stream->capture != nullptr) {
    /* the capture has nowhere to end: it is dropped with its nodes */
    report ("cudaStreamDestroy: stream %p was capturing; the capture is invalidated and "
        "dropped (end a capture with cudaStreamEndCapture first)", (void *) stream);
    end_capture (stream);
  }
  streams.erase (stream);
  delete stream;
  return RELEASED ();
}

static cudaError_t
stream_sync (const char *call, cudaStream_t stream)
{
  if (!stream_is_valid (stream)) {
    report ("%s: %p is not a live stream", call, (void *) stream);
    return fail (cudaErrorInvalidResourceHandle);
  }
  return sync_check (call, stream);
}

cudaError_t
cudaStreamSynchronize (cudaStream_t stream)
{
  ENTER ();
  return stream_sync ("cudaStreamSynchronize", stream);
}

cudaError_t
cudaStreamQuery (cudaStream_t stream)
{
  ENTER ();
  return stream_sync ("cudaStreamQuery", stream);
}

cudaError_t
cudaStreamWaitEvent (cudaStream_t stream, cudaEvent_t event, unsigned int flags)
{
  ENTER ();
  if (!stream_is_valid (stream) || events.count (event) == 0) {
    report ("cudaStreamWaitEvent: stream %p or event %p is not live", (void *) stream,
        (void *) event);
    return fail (cudaErrorInvalidResourceHandle);
  }
  bool capturing;
  if (cudaError_t err = capture_state ("cudaStreamWaitEvent", stream, &capturing))
    return err;
  if (capturing) {
    const Capture *c = capture_of (stream);
    if (event->capture_id == c->id)
      return cudaSuccess;       /* recorded earlier in this capture: already in order */
    if (flags & cudaEventWaitExternal) {
      capture_add (stream, new EventWaitNode (event));
      return cudaSuccess;
    }
    if (cudaStream_t other = capture_stream (event->capture_id)) {
      report ("cudaStreamWaitEvent: capturing stream %p waits for event %p recorded in the "
          "capture on stream %p (the two captures would merge)", (void *) stream,
          (void *) event, (void *) other);
      return capture_fail (stream, fail (cudaErrorStreamCaptureMerge));
    }
    report ("cudaStreamWaitEvent: capturing stream %p waits for event %p, which was not "
        "recorded in its capture (a dependency on uncaptured work; pass cudaEventWaitExternal "
        "to wait for it when the graph runs)", (void *) stream, (void *) event);
    return capture_fail (stream, fail (cudaErrorStreamCaptureIsolation));
  }
  if (cudaStream_t owner = capture_stream (event->capture_id)) {
    report ("cudaStreamWaitEvent: stream %p would join the capture on stream %p through event "
        "%p (captures that span several streams are not emulated)", (void *) stream,
        (void *) owner, (void *) event);
    invalidate (owner->capture);
    return fail (cudaErrorStreamCaptureUnsupported);
  }
  return cudaSuccess;
}

/* ------------------------------------------------------------------ events */

cudaError_t
cudaEventCreateWithFlags (cudaEvent_t *event, unsigned int flags)
{
  ENTER ();
  if (event == nullptr)
    return fail (cudaErrorInvalidValue);
  cudaEvent_t e = new CUevent_st ();
  e->flags = flags;
  e->recorded = false;
  e->capture_id = 0;
  events.insert (e);
  *event = e;
  return cudaSuccess;
}

cudaError_t
cudaEventCreate (cudaEvent_t *event)
{
  return cudaEventCreateWithFlags (event, cudaEventDefault);
}

cudaError_t
cudaEventDestroy (cudaEvent_t event)
{
  ENTER_RELEASE ();
  if (events.erase (event) == 0) {
    report ("cudaEventDestroy: %p is not a live event", (void *) event);
    return fail (cudaErrorInvalidResourceHandle);
  }
  delete event;
  return RELEASED ();
}

static cudaError_t
event_record (const char *call, cudaEvent_t event, cudaStream_t stream, unsigned flags)
{
  if (events.count (event) == 0 || !stream_is_valid (stream)) {
    report ("%s: event %p or stream %p is not live", call, (void *) event, (void *) stream);
    return fail (cudaErrorInvalidResourceHandle);
  }
  if (flags & ~(unsigned) cudaEventRecordExternal) {
    report ("%s: unknown flags 0x%x", call, flags);
    return fail (cudaErrorInvalidValue);
  }
  bool capturing;
  if (cudaError_t err = capture_state (call, stream, &capturing))
    return err;
  if (capturing) {
    /* a plain record only marks a point of the capture (for waits within it); an external
     * one is a node that records the event whenever the graph runs */
    if (flags & cudaEventRecordExternal)
      capture_add (stream, new EventRecordNode (event));
    event->capture_id = capture_of (stream)->id;
    return cudaSuccess;
  }
  event->recorded = true;
  event->when = std::chrono::steady_clock::now ();
  event->capture_id = 0;
  return cudaSuccess;
}

cudaError_t
cudaEventRecord (cudaEvent_t event, cudaStream_t stream)
{
  ENTER ();
  return event_record ("cudaEventRecord", event, stream, 0);
}

cudaError_t
cudaEventRecordWithFlags (cudaEvent_t event, cudaStream_t stream, unsigned int flags)
{
  ENTER ();
  return event_record ("cudaEventRecordWithFlags", event, stream, flags);
}

/* The host cannot wait for an event whose last record is a point in a capture. */
static cudaError_t
check_event_uncaptured (const char *call, cudaEvent_t event)
{
  if (event->capture_id == 0)
    return cudaSuccess;
  report ("%s: event %p was last recorded in a capturing stream (record it outside a capture, "
      "or with cudaEventRecordExternal, before waiting for it on the host)", call,
      (void *) event);
  return fail (cudaErrorCapturedEvent);
}

static cudaError_t
event_sync (const char *call, cudaEvent_t event)
{
  if (events.count (event) == 0) {
    report ("%s: %p is not a live event", call, (void *) event);
    return fail (cudaErrorInvalidResourceHandle);
  }
  return check_event_uncaptured (call, event);
}

cudaError_t
cudaEventSynchronize (cudaEvent_t event)
{
  ENTER ();
  return event_sync ("cudaEventSynchronize", event);
}

cudaError_t
cudaEventQuery (cudaEvent_t event)
{
  ENTER ();
  return event_sync ("cudaEventQuery", event);
}

cudaError_t
cudaEventElapsedTime (float *ms, cudaEvent_t start, cudaEvent_t end)
{
  ENTER ();
  if (ms == nullptr)
    return fail (cudaErrorInvalidValue);
  if (events.count (start) == 0 || events.count (end) == 0) {
    report ("cudaEventElapsedTime: an event is not live");
    return fail (cudaErrorInvalidResourceHandle);
  }
  if (cudaError_t err = check_event_uncaptured ("cudaEventElapsedTime", start))
    return err;
  if (cudaError_t err = check_event_uncaptured ("cudaEventElapsedTime", end))
    return err;
  if ((start->flags | end->flags) & cudaEventDisableTiming) {
    report ("cudaEventElapsedTime: an event was created with cudaEventDisableTiming");
    return fail (cudaErrorInvalidResourceHandle);
  }
  if (!start->recorded || !end->recorded) {
    report ("cudaEventElapsedTime: an event was never recorded");
    return fail (cudaErrorInvalidResourceHandle);
  }
  *ms = std::chrono::duration<float, std::milli> (end->when - start->when).count ();
  return cudaSuccess;
}

/* ------------------------------------------------------------------ stream capture */

cudaError_t
cudaStreamBeginCapture (cudaStream_t stream, enum cudaStreamCaptureMode mode)
{
  ENTER ();
  if (mode != cudaStreamCaptureModeGlobal && mode != cudaStreamCaptureModeThreadLocal
      && mode != cudaStreamCaptureModeRelaxed) {
    report ("cudaStreamBeginCapture: invalid capture mode %d", (int) mode);
    return fail (cudaErrorInvalidValue);
  }
  if (is_legacy (stream)) {
    report ("cudaStreamBeginCapture: the legacy default stream cannot be captured (capture on "
        "a stream of your own)");
    return fail (cudaErrorStreamCaptureUnsupported);
  }
  if (stream == cudaStreamPerThread) {
    report ("cudaStreamBeginCapture: capturing cudaStreamPerThread is not emulated (capture "
        "on a stream of your own)");
    return fail (cudaErrorStreamCaptureUnsupported);
  }
  if (!stream_is_valid (stream)) {
    report ("cudaStreamBeginCapture: %p is not a live stream", (void *) stream);
    return fail (cudaErrorInvalidResourceHandle);
  }
  if (stream->capture != nullptr) {
    report ("cudaStreamBeginCapture: stream %p is already capturing", (void *) stream);
    return fail (cudaErrorIllegalState);
  }
  Capture *c = new Capture ();
  c->id = ++last_capture_id;
  c->mode = mode;
  c->thread = std::this_thread::get_id ();
  c->invalidated = false;
  stream->capture = c;
  n_captures++;
  return cudaSuccess;
}

cudaError_t
cudaStreamEndCapture (cudaStream_t stream, cudaGraph_t *graph)
{
  ENTER ();
  if (graph == nullptr)
    return fail (cudaErrorInvalidValue);
  if (!stream_is_valid (stream)) {
    report ("cudaStreamEndCapture: %p is not a live stream", (void *) stream);
    return fail (cudaErrorInvalidResourceHandle);
  }
  Capture *c = capture_of (stream);
  if (c == nullptr) {
    report ("cudaStreamEndCapture: stream %p is not capturing", (void *) stream);
    return fail (cudaErrorIllegalState);
  }
  if (c->mode != cudaStreamCaptureModeRelaxed && c->thread != std::this_thread::get_id ()) {
    report ("cudaStreamEndCapture: the capture on stream %p was begun by another thread in %s "
        "(only relaxed captures may end on another thread)", (void *) stream,
        mode_name (c->mode));
    return fail (cudaErrorStreamCaptureWrongThread);
  }
  *graph = nullptr;
  if (c->invalidated) {
    report ("cudaStreamEndCapture: the capture on stream %p was invalidated (%s)",
        (void *) stream, c->why.c_str ());
    end_capture (stream);
    return fail (cudaErrorStreamCaptureInvalidated);
  }
  cudaGraph_t g = new CUgraph_st ();
  g->nodes.swap (c->graph.nodes);
  end_capture (stream);
  graphs.insert (g);
  *graph = g;
  return cudaSuccess;
}

cudaError_t
cudaStreamIsCapturing (cudaStream_t stream, enum cudaStreamCaptureStatus *status)
{
  ENTER ();
  if (status == nullptr)
    return fail (cudaErrorInvalidValue);
  if (!stream_is_valid (stream)) {
    report ("cudaStreamIsCapturing: %p is not a live stream", (void *) stream);
    return fail (cudaErrorInvalidResourceHandle);
  }
  /* asking the legacy stream is refused like using it, but leaves the captures alone */
  if (is_legacy (stream))
    if (cudaError_t err = legacy_check ("cudaStreamIsCapturing", false))
      return err;
  const Capture *c = capture_of (stream);
  *status = c == nullptr ? cudaStreamCaptureStatusNone
      : c->invalidated ? cudaStreamCaptureStatusInvalidated : cudaStreamCaptureStatusActive;
  return cudaSuccess;
}

cudaError_t
cudaThreadExchangeStreamCaptureMode (enum cudaStreamCaptureMode *mode)
{
  if (mode == nullptr || (*mode != cudaStreamCaptureModeGlobal
      && *mode != cudaStreamCaptureModeThreadLocal && *mode != cudaStreamCaptureModeRelaxed))
    return fail (cudaErrorInvalidValue);
  std::swap (*mode, thread_capture_mode);
  return cudaSuccess;
}

/* ------------------------------------------------------------------ graphs */

static bool
check_graph (const char *call, cudaGraph_t graph)
{
  if (graphs.count (graph) != 0)
    return true;
  report ("%s: %p is not a live graph (destroyed with cudaGraphDestroy?)", call, (void *) graph);
  return false;
}

cudaError_t
cudaGraphDestroy (cudaGraph_t graph)
{
  ENTER_RELEASE ();
  if (!check_graph ("cudaGraphDestroy", graph))
    return fail (graph == nullptr ? cudaErrorInvalidValue : cudaErrorInvalidResourceHandle);
  graphs.erase (graph);
  delete graph;
  return RELEASED ();
}

cudaError_t
cudaGraphGetNodes (cudaGraph_t graph, cudaGraphNode_t *nodes, size_t *num_nodes)
{
  ENTER ();
  if (num_nodes == nullptr)
    return fail (cudaErrorInvalidValue);
  if (!check_graph ("cudaGraphGetNodes", graph))
    return fail (graph == nullptr ? cudaErrorInvalidValue : cudaErrorInvalidResourceHandle);
  size_t n = graph->nodes.size ();
  if (nodes == nullptr) {
    *num_nodes = n;
    return cudaSuccess;
  }
  /* as CUDA: at most *num_nodes entries, the rest of a larger array NULL */
  size_t got = std::min (n, *num_nodes);
  for (size_t i = 0; i < *num_nodes; i++)
    nodes[i] = i < got ? graph->nodes[i].get () : nullptr;
  *num_nodes = got;
  return cudaSuccess;
}

cudaError_t
cudaGraphNodeGetType (cudaGraphNode_t node, enum cudaGraphNodeType *type)
{
  ENTER ();
  if (type == nullptr)
    return fail (cudaErrorInvalidValue);
  if (graph_nodes.count (node) == 0) {
    report ("cudaGraphNodeGetType: %p is not a node of a live graph", (void *) node);
    return fail (cudaErrorInvalidValue);
  }
  *type = node->type;
  return cudaSuccess;
}

cudaError_t
cudaGraphInstantiate (cudaGraphExec_t *exec, cudaGraph_t graph, unsigned long long flags)
{
  ENTER ();
  if (exec == nullptr)
    return fail (cudaErrorInvalidValue);
  *exec = nullptr;
  if (!check_graph ("cudaGraphInstantiate", graph))
    return fail (graph == nullptr ? cudaErrorInvalidValue : cudaErrorInvalidResourceHandle);
  const unsigned long long known = cudaGraphInstantiateFlagAutoFreeOnLaunch
      | cudaGraphInstantiateFlagUpload | cudaGraphInstantiateFlagDeviceLaunch
      | cudaGraphInstantiateFlagUseNodePriority;
  if (flags & ~known) {
    report ("cudaGraphInstantiate: unknown flags 0x%llx", flags);
    return fail (cudaErrorInvalidValue);
  }
  /* the nodes are shared, not copied: they never change after capture */
  cudaGraphExec_t e = new CUgraphExec_st ();
  e->nodes = graph->nodes;
  e->flags = flags;
  graph_execs.insert (e);
  *exec = e;
  return cudaSuccess;
}

cudaError_t
cudaGraphExecDestroy (cudaGraphExec_t exec)
{
  ENTER_RELEASE ();
  if (graph_execs.erase (exec) == 0) {
    report ("cudaGraphExecDestroy: %p is not a live graph exec (destroyed already?)",
        (void *) exec);
    return fail (exec == nullptr ? cudaErrorInvalidValue : cudaErrorInvalidResourceHandle);
  }
  delete exec;
  return RELEASED ();
}

/* The nodes run in capture order, synchronously, on the stream given here: each through the
 * code of the eager call, with its checks, so a bad access in a kernel node fails the launch
 * with the sticky error it has eagerly. The first node that fails ends the launch. */
cudaError_t
cudaGraphLaunch (cudaGraphExec_t exec, cudaStream_t stream)
{
  ENTER ();
  if (graph_execs.count (exec) == 0) {
    report ("cudaGraphLaunch: %p is not a live graph exec (destroyed with "
        "cudaGraphExecDestroy, or never instantiated)", (void *) exec);
    return fail (cudaErrorInvalidResourceHandle);
  }
  if (!stream_is_valid (stream)) {
    report ("cudaGraphLaunch: stream %p is not a live stream", (void *) stream);
    return fail (cudaErrorInvalidResourceHandle);
  }
  bool capturing;
  if (cudaError_t err = capture_state ("cudaGraphLaunch", stream, &capturing))
    return err;
  if (capturing) {
    report ("cudaGraphLaunch: stream %p is capturing (launching a graph into a capture, a "
        "child graph node, is not emulated)", (void *) stream);
    return capture_fail (stream, fail (cudaErrorStreamCaptureUnsupported));
  }
  g_stats.graph_launches++;
  const size_t n = exec->nodes.size ();
  for (size_t i = 0; i < n; i++) {
    CUgraphNode_st *node = exec->nodes[i].get ();
    g_stats.graph_nodes++;
    cudaError_t err = node->replay (stream);
    if (err != cudaSuccess) {
      std::string why = last_message;
      report ("cudaGraphLaunch: node %zu of %zu (%s) failed: %s", i + 1, n, node->what.c_str (),
          why.c_str ());
      return fail (err);
    }
  }
  return cudaSuccess;
}

/* ------------------------------------------------------------------ emulator extensions */

extern "C" const char *
moshi_emu_last_message (void)
{
  std::lock_guard<std::recursive_mutex> guard (g_lock);
  static thread_local std::string copy;
  copy = last_message;
  return copy.c_str ();
}

extern "C" void
moshi_emu_clear_message (void)
{
  std::lock_guard<std::recursive_mutex> guard (g_lock);
  last_message.clear ();
}

extern "C" int
moshi_emu_is_device_range (const void *ptr, size_t bytes)
{
  std::lock_guard<std::recursive_mutex> guard (g_lock);
  return range_is_device (ptr, bytes);
}

extern "C" size_t
moshi_emu_live_allocations (size_t *bytes)
{
  std::lock_guard<std::recursive_mutex> guard (g_lock);
  if (bytes)
    *bytes = used_memory ();
  return allocs.size ();
}

extern "C" void
moshi_emu_set_memory_limit (size_t bytes)
{
  std::lock_guard<std::recursive_mutex> guard (g_lock);
  /* a limit set here overrides the environment's, even one read later */
  memory_limit_from_env_done = true;
  memory_limit = bytes;
}

extern "C" size_t
moshi_emu_get_memory_limit (void)
{
  std::lock_guard<std::recursive_mutex> guard (g_lock);
  return total_memory ();
}

extern "C" size_t
moshi_emu_live_host_allocations (size_t *bytes)
{
  std::lock_guard<std::recursive_mutex> guard (g_lock);
  size_t total = 0;
  for (const auto &p : pinned)
    total += p.second.size;
  if (bytes)
    *bytes = total;
  return pinned.size ();
}

extern "C" void
moshi_emu_get_stats (MoshiEmuStats *stats)
{
  std::lock_guard<std::recursive_mutex> guard (g_lock);
  *stats = g_stats;
}
