/* gst-moshi: the CUDA module (libmoshi-cuda.so, built with nvcc) loads on a machine without a
 * GPU or CUDA driver and exports every kernel of the C ABI and the backend's entry point. */
#include <dlfcn.h>
#include <stdio.h>

static const char *const symbols[] = {
  "moshi_k_elu_2d", "moshi_k_gelu", "moshi_k_add_scaled", "moshi_k_gated_act",
  "moshi_k_layer_norm", "moshi_k_rms_norm", "moshi_k_embedding", "moshi_k_add_sin_embedding",
  "moshi_k_rope", "moshi_k_kv_write", "moshi_k_attention", "moshi_k_rvq_encode",
  "moshi_k_rvq_decode", "moshi_k_conv1d", "moshi_k_conv_transpose1d", "moshi_k_attention_scratch_floats",
  "moshi_k_copy_2d", "moshi_k_transpose", "moshi_k_linear_bf16_gemv", "moshi_k_bf16_to_f32",
  "moshi_k_add_bias",
  /* the backend's entry point (lib/backend/cuda) */
  "moshi_cuda_backend_new",
};

int
main (void)
{
  void *module = dlopen (MOSHI_CUDA_MODULE, RTLD_NOW | RTLD_LOCAL);
  if (module == NULL) {
    printf ("cannot load %s: %s\n", MOSHI_CUDA_MODULE, dlerror ());
    return 1;
  }
  int missing = 0;
  for (unsigned i = 0; i < sizeof symbols / sizeof symbols[0]; i++)
    if (dlsym (module, symbols[i]) == NULL) {
      printf ("%s does not export %s\n", MOSHI_CUDA_MODULE, symbols[i]);
      missing++;
    }
  printf ("%s: loaded, %u symbols checked, %d missing\n", MOSHI_CUDA_MODULE,
      (unsigned) (sizeof symbols / sizeof symbols[0]), missing);
  /* not unloaded: the library keeps the module for the life of the process, too */
  return missing == 0 ? 0 : 1;
}
