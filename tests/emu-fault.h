/* gst-moshi tests: the CUDA emulator's extensions (tests/cuda-emu/moshi-cuda-emu.h) from a test
 * that runs the emulated backend through libmoshi. The emulator lives in the module libmoshi
 * dlopens ($MOSHI_CUDA_MODULE, RTLD_LOCAL), so its functions are looked up in the loaded module
 * rather than linked. Header-only: the Check suites and the GStreamer suites (which bring their
 * own Check) both use it. */
#pragma once

#include <dlfcn.h>
#include <glib.h>
#include <stdint.h>

#include "moshi-cuda-emu.h"

typedef struct {
  void (*inject_fault) (uint64_t after_launches);
  uint64_t (*fault_pending) (void);
  void (*get_stats) (MoshiEmuStats *stats);
  const char *(*last_message) (void);
  void (*set_memory_limit) (size_t bytes);
  size_t (*live_allocations) (size_t *bytes);
} MoshiTestEmu;

/* The emulator's functions, once the emulated backend is open (a model loaded on device=cuda
 * with MOSHI_CUDA_EMULATE=1); FALSE when it is not loaded in this process. */
static inline gboolean
moshi_test_emu_lookup (MoshiTestEmu *emu)
{
  const char *path = g_getenv ("MOSHI_CUDA_MODULE");
  if (path == NULL)
    return FALSE;
  void *module = dlopen (path, RTLD_NOW | RTLD_NOLOAD);
  if (module == NULL)
    return FALSE;
  emu->inject_fault = (void (*) (uint64_t)) dlsym (module, "moshi_emu_inject_fault");
  emu->fault_pending = (uint64_t (*) (void)) dlsym (module, "moshi_emu_fault_pending");
  emu->get_stats = (void (*) (MoshiEmuStats *)) dlsym (module, "moshi_emu_get_stats");
  emu->last_message = (const char *(*) (void)) dlsym (module, "moshi_emu_last_message");
  emu->set_memory_limit = (void (*) (size_t)) dlsym (module, "moshi_emu_set_memory_limit");
  emu->live_allocations = (size_t (*) (size_t *)) dlsym (module, "moshi_emu_live_allocations");
  /* the module stays loaded (libmoshi holds it): this drops the reference RTLD_NOLOAD took */
  dlclose (module);
  return emu->inject_fault && emu->fault_pending && emu->get_stats && emu->last_message
      && emu->set_memory_limit && emu->live_allocations;
}

/* Bytes of device memory in use now. */
static inline size_t
moshi_test_emu_used (const MoshiTestEmu *emu)
{
  size_t bytes = 0;
  emu->live_allocations (&bytes);
  return bytes;
}

/* Kernel launches the emulator has run so far. */
static inline uint64_t
moshi_test_emu_launches (const MoshiTestEmu *emu)
{
  MoshiEmuStats stats;
  emu->get_stats (&stats);
  return stats.launches;
}
