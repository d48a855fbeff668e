/* gst-moshi CUDA backend: the entry point of the run-time-loaded module.
 *
 * The op table on device memory lives in a module of its own (libmoshi-cuda.so, built with the
 * nvcc kernels, libcudart and cuBLAS; libmoshi-cuda-emu.so, the same source against the CPU
 * emulator of the runtime, for tests), which libmoshi dlopens on the first device=cuda or
 * device=auto open, so that libmoshi itself needs neither the CUDA runtime nor a driver. */
#pragma once

#include "moshi-backend.h"

G_BEGIN_DECLS

/* Bumped whenever MoshiBackend, MoshiExec, MoshiWeight or MoshiBackendOps change layout or
 * signatures (2: synchronize and download return errors). */
#define MOSHI_CUDA_MODULE_ABI 2
#define MOSHI_CUDA_MODULE_ENTRY "moshi_cuda_backend_new"

/* Opens the first CUDA device. abi is MOSHI_CUDA_MODULE_ABI and ops_size sizeof
 * (MoshiBackendOps) as the caller was built with (a module of another build is refused).
 * Fails with MOSHI_ERROR_DEVICE "no usable CUDA device: <reason>" when there is no GPU, no
 * driver, or the kernels cannot run on the GPU. */
typedef MoshiBackend *(*MoshiCudaBackendNewFunc) (guint abi, gsize ops_size, GError **error);

MoshiBackend *moshi_cuda_backend_new (guint abi, gsize ops_size, GError **error);

G_END_DECLS
