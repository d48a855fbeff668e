/* gst-moshi CUDA emulator: the runtime API subset (device memory, copies, streams, events,
 * errors, device queries) on the CPU.
 *
 * Device memory is host memory from its own mapping with guard pages, kept in a registry so that
 * every call can tell a device pointer from a host pointer: a copy in the wrong direction, a host
 * pointer where a device pointer belongs, or a range that runs past an allocation fails with the
 * error a GPU gives and a message that says what was wrong. Work is executed synchronously on
 * the calling thread, in stream order; streams and events keep their API and checks. */
#include "emu-internal.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <sys/mman.h>
#include <unistd.h>

struct CUstream_st {
  unsigned flags;
  int priority;
};

struct CUevent_st {
  unsigned flags;
  bool recorded;
  std::chrono::steady_clock::time_point when;
};

namespace moshi_emu {

std::recursive_mutex g_lock;
MoshiEmuStats g_stats;

static std::map<uintptr_t, Alloc> allocs;        /* by user pointer */
static std::set<cudaStream_t> streams;
static std::set<cudaEvent_t> events;
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
  return true;
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

}  // namespace moshi_emu

using namespace moshi_emu;

#define ENTER() \
  std::lock_guard<std::recursive_mutex> guard_ (g_lock); \
  if (sticky != cudaSuccess) \
    return sticky

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
  prop->totalGlobalMem = TOTAL_MEMORY;
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
  return cudaSuccess;
}

cudaError_t
cudaDeviceReset (void)
{
  std::lock_guard<std::recursive_mutex> guard (g_lock);
  while (!allocs.empty ()) {
    munmap (allocs.begin ()->second.map, allocs.begin ()->second.map_len);
    allocs.erase (allocs.begin ());
  }
  for (cudaStream_t s : streams)
    delete s;
  streams.clear ();
  for (cudaEvent_t e : events)
    delete e;
  events.clear ();
  func_smem.clear ();
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
  if (ptr == nullptr)
    return fail (cudaErrorInvalidValue);
  *ptr = nullptr;
  if (size == 0)
    return cudaSuccess;
  size_t used = 0;
  for (const auto &a : allocs)
    used += a.second.size;
  if (size > TOTAL_MEMORY - used) {
    report ("cudaMalloc: %zu bytes do not fit in the emulated %zu bytes of device memory "
        "(%zu in use)", size, TOTAL_MEMORY, used);
    return fail (cudaErrorMemoryAllocation);
  }
  cudaError_t err = alloc_device (ptr, size);
  return err == cudaSuccess ? err : fail (err);
}

cudaError_t
cudaFree (void *ptr)
{
  ENTER ();
  if (ptr == nullptr)
    return cudaSuccess;
  auto it = allocs.find ((uintptr_t) ptr);
  if (it == allocs.end ()) {
    report ("cudaFree: %s is not the start of a live device allocation",
        describe (ptr).c_str ());
    return fail (cudaErrorInvalidValue);
  }
  release (it);
  return sticky != cudaSuccess ? sticky : cudaSuccess;
}

cudaError_t
cudaMemGetInfo (size_t *free_bytes, size_t *total)
{
  ENTER ();
  size_t used = 0;
  for (const auto &a : allocs)
    used += a.second.size;
  if (free_bytes)
    *free_bytes = TOTAL_MEMORY - used;
  if (total)
    *total = TOTAL_MEMORY;
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

/* Validates a copy of height rows of width bytes (pitches dpitch/spitch) and runs it. */
static cudaError_t
copy_2d (const char *call, void *dst, size_t dpitch, const void *src, size_t spitch,
    size_t width, size_t height, cudaMemcpyKind kind, cudaStream_t stream)
{
  if (!stream_is_valid (stream)) {
    report ("%s: stream %p is not a live stream", call, (void *) stream);
    return fail (cudaErrorInvalidResourceHandle);
  }
  if (width == 0 || height == 0)
    return cudaSuccess;
  if (dpitch < width || spitch < width) {
    report ("%s: pitch smaller than the width (%zu, %zu < %zu)", call, dpitch, spitch, width);
    return fail (cudaErrorInvalidValue);
  }
  size_t dspan = (height - 1) * dpitch + width, sspan = (height - 1) * spitch + width;
  bool dst_dev, src_dev;
  switch (kind) {
    case cudaMemcpyHostToHost: dst_dev = false; src_dev = false; break;
    case cudaMemcpyHostToDevice: dst_dev = true; src_dev = false; break;
    case cudaMemcpyDeviceToHost: dst_dev = false; src_dev = true; break;
    case cudaMemcpyDeviceToDevice: dst_dev = true; src_dev = true; break;
    case cudaMemcpyDefault:
      dst_dev = dst != nullptr && find_alloc (dst) != nullptr;
      src_dev = src != nullptr && find_alloc (src) != nullptr;
      break;
    default:
      report ("%s: invalid cudaMemcpyKind %d", call, (int) kind);
      return fail (cudaErrorInvalidMemcpyDirection);
  }
  std::string what = std::string ("destination of ") + kind_name (kind);
  if (!check_side (call, what.c_str (), dst, dspan, dst_dev))
    return fail (cudaErrorInvalidValue);
  what = std::string ("source of ") + kind_name (kind);
  if (!check_side (call, what.c_str (), src, sspan, src_dev))
    return fail (cudaErrorInvalidValue);
  for (size_t r = 0; r < height; r++)
    memmove ((char *) dst + r * dpitch, (const char *) src + r * spitch, width);
  return cudaSuccess;
}

cudaError_t
cudaMemcpy (void *dst, const void *src, size_t count, enum cudaMemcpyKind kind)
{
  ENTER ();
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
  if (!check_side (call, "destination", ptr, count, true))
    return fail (cudaErrorInvalidValue);
  memset (ptr, value, count);
  return cudaSuccess;
}

cudaError_t
cudaMemset (void *ptr, int value, size_t count)
{
  ENTER ();
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
  cudaStream_t s = new CUstream_st;
  s->flags = flags;
  s->priority = priority;
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
  ENTER ();
  if (stream == nullptr || streams.erase (stream) == 0) {
    report ("cudaStreamDestroy: %p is not a live stream", (void *) stream);
    return fail (cudaErrorInvalidResourceHandle);
  }
  delete stream;
  return cudaSuccess;
}

cudaError_t
cudaStreamSynchronize (cudaStream_t stream)
{
  ENTER ();
  if (!stream_is_valid (stream)) {
    report ("cudaStreamSynchronize: %p is not a live stream", (void *) stream);
    return fail (cudaErrorInvalidResourceHandle);
  }
  return cudaSuccess;
}

cudaError_t
cudaStreamQuery (cudaStream_t stream)
{
  return cudaStreamSynchronize (stream);
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
  return cudaSuccess;
}

/* ------------------------------------------------------------------ events */

cudaError_t
cudaEventCreateWithFlags (cudaEvent_t *event, unsigned int flags)
{
  ENTER ();
  if (event == nullptr)
    return fail (cudaErrorInvalidValue);
  cudaEvent_t e = new CUevent_st;
  e->flags = flags;
  e->recorded = false;
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
  ENTER ();
  if (events.erase (event) == 0) {
    report ("cudaEventDestroy: %p is not a live event", (void *) event);
    return fail (cudaErrorInvalidResourceHandle);
  }
  delete event;
  return cudaSuccess;
}

cudaError_t
cudaEventRecord (cudaEvent_t event, cudaStream_t stream)
{
  ENTER ();
  if (events.count (event) == 0 || !stream_is_valid (stream)) {
    report ("cudaEventRecord: event %p or stream %p is not live", (void *) event,
        (void *) stream);
    return fail (cudaErrorInvalidResourceHandle);
  }
  event->recorded = true;
  event->when = std::chrono::steady_clock::now ();
  return cudaSuccess;
}

cudaError_t
cudaEventSynchronize (cudaEvent_t event)
{
  ENTER ();
  if (events.count (event) == 0) {
    report ("cudaEventSynchronize: %p is not a live event", (void *) event);
    return fail (cudaErrorInvalidResourceHandle);
  }
  return cudaSuccess;
}

cudaError_t
cudaEventQuery (cudaEvent_t event)
{
  return cudaEventSynchronize (event);
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
  size_t total = 0;
  for (const auto &a : allocs)
    total += a.second.size;
  if (bytes)
    *bytes = total;
  return allocs.size ();
}

extern "C" void
moshi_emu_get_stats (MoshiEmuStats *stats)
{
  std::lock_guard<std::recursive_mutex> guard (g_lock);
  *stats = g_stats;
}
