/* gst-moshi: helpers shared by the CUDA tests, which build twice: against the CPU emulator of
 * the CUDA runtime (MOSHI_TEST_EMU, suite unit) and against the real runtime (suite gpu, which
 * exits 77 -- skipped -- when there is no usable GPU). */
#pragma once

#include "test-support.h"

#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>

#ifdef MOSHI_TEST_EMU
#include "moshi-cuda-emu.h"
#endif

#define CUDA_OK(call) \
  do { \
    cudaError_t e_ = (call); \
    ck_assert_msg (e_ == cudaSuccess, "%s failed: %s (%s)", #call, cudaGetErrorName (e_), \
        cudaGetErrorString (e_)); \
  } while (0)

/* In the gpu suite: exits with 77 (meson's "skipped") and says why when no GPU can be used. */
static inline void
cuda_test_require_device (void)
{
#ifndef MOSHI_TEST_EMU
  int n = 0;
  cudaError_t err = cudaGetDeviceCount (&n);
  if (err != cudaSuccess || n == 0) {
    printf ("SKIP: no usable CUDA GPU here (%s); the gpu suite needs one with a driver\n",
        err != cudaSuccess ? cudaGetErrorString (err) : "no device");
    exit (77);
  }
  struct cudaDeviceProp prop;
  if (cudaGetDeviceProperties (&prop, 0) == cudaSuccess)
    printf ("running on %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
  /* a CUDA context does not survive fork(): run the tests in this process */
  setenv ("CK_FORK", "no", 1);
#endif
}

static inline void *
cuda_test_upload (const void *host, size_t bytes)
{
  void *d = NULL;
  CUDA_OK (cudaMalloc (&d, bytes > 0 ? bytes : 1));
  if (bytes > 0)
    CUDA_OK (cudaMemcpy (d, host, bytes, cudaMemcpyHostToDevice));
  return d;
}

static inline void
cuda_test_download (void *host, const void *dev, size_t bytes)
{
  CUDA_OK (cudaDeviceSynchronize ());
  if (bytes > 0)
    CUDA_OK (cudaMemcpy (host, dev, bytes, cudaMemcpyDeviceToHost));
}

/* The message of the emulator's last diagnostic contains needle (emulator builds only). */
#ifdef MOSHI_TEST_EMU
#define assert_emu_message(needle) \
  ck_assert_msg (strstr (moshi_emu_last_message (), (needle)) != NULL, \
      "emulator message '%s' does not contain '%s'", moshi_emu_last_message (), (needle))
#endif
