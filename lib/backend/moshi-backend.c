#include "moshi-backend.h"

#include "moshi-error.h"
#include "cuda/moshi-backend-cuda.h"

#include <dlfcn.h>
#include <math.h>
#include <string.h>

static const char *device_names[] = {
  [MOSHI_DEVICE_AUTO] = "auto",
  [MOSHI_DEVICE_CPU] = "cpu",
  [MOSHI_DEVICE_CUDA] = "cuda",
};

const char *
moshi_device_name (MoshiDevice device)
{
  g_return_val_if_fail (device <= MOSHI_DEVICE_CUDA, "?");
  return device_names[device];
}

gboolean
moshi_device_from_name (const char *name, MoshiDevice *out)
{
  for (guint i = 0; i < G_N_ELEMENTS (device_names); i++) {
    if (g_ascii_strcasecmp (name, device_names[i]) == 0) {
      *out = (MoshiDevice) i;
      return TRUE;
    }
  }
  return FALSE;
}

/* One backend per device per process: elements that share a model share its weights, which
 * live on one backend instance. */
static GMutex backends_lock;
static MoshiBackend *cpu_backend;
static MoshiBackend *cuda_backend;
/* Why CUDA cannot be used, once an open has failed: the decision is cached for the process
 * (the module is not reloaded and the driver not asked again). */
static char *cuda_unusable;
static gint cuda_unusable_code;
/* Calls of moshi_backend_open, for the tests that hold a model load to one. */
static guint backend_opens;

/* The CUDA module (libmoshi-cuda.so, or libmoshi-cuda-emu.so with MOSHI_CUDA_EMULATE=1, the
 * same backend on the CPU emulator of the runtime, for tests): $MOSHI_CUDA_MODULE, else next to
 * libmoshi, in its gst-moshi/ subdirectory, and in the installed libdir/gst-moshi. The module
 * is never unloaded. */
static MoshiCudaBackendNewFunc
load_cuda_module (GError **error)
{
  static MoshiCudaBackendNewFunc entry;
  if (entry != NULL)
    return entry;

  const char *emulate = g_getenv ("MOSHI_CUDA_EMULATE");
  gboolean emu = emulate != NULL && emulate[0] != '\0' && !g_str_equal (emulate, "0");
  const char *file = emu ? "libmoshi-cuda-emu.so" : "libmoshi-cuda.so";
  g_autoptr (GPtrArray) candidates = g_ptr_array_new_with_free_func (g_free);
  const char *override = g_getenv ("MOSHI_CUDA_MODULE");
  if (override != NULL && override[0] != '\0') {
    g_ptr_array_add (candidates, g_strdup (override));
  } else {
    Dl_info info;
    if (dladdr ((void *) moshi_backend_open, &info) != 0 && info.dli_fname != NULL) {
      g_autofree char *dir = g_path_get_dirname (info.dli_fname);
      g_ptr_array_add (candidates, g_build_filename (dir, file, NULL));
      g_ptr_array_add (candidates, g_build_filename (dir, "gst-moshi", file, NULL));
    }
#ifdef MOSHI_LIBDIR
    g_ptr_array_add (candidates, g_build_filename (MOSHI_LIBDIR, "gst-moshi", file, NULL));
#endif
  }

  g_autoptr (GString) tried = g_string_new (NULL);
  for (guint i = 0; i < candidates->len; i++) {
    const char *path = candidates->pdata[i];
    if (override == NULL && !g_file_test (path, G_FILE_TEST_EXISTS)) {
      g_string_append_printf (tried, "%s%s (absent)", tried->len ? ", " : "", path);
      continue;
    }
    void *module = dlopen (path, RTLD_NOW | RTLD_LOCAL);
    if (module == NULL) {
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_DEVICE, "cannot load the CUDA module %s: %s",
          path, dlerror ());
      return NULL;
    }
    entry = (MoshiCudaBackendNewFunc) dlsym (module, MOSHI_CUDA_MODULE_ENTRY);
    if (entry == NULL) {
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_DEVICE,
          "%s is not a gst-moshi CUDA module (no %s)", path, MOSHI_CUDA_MODULE_ENTRY);
      dlclose (module);
      return NULL;
    }
    g_debug ("loaded the CUDA module %s", path);
    return entry;
  }
  g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_UNSUPPORTED,
      "this installation of libmoshi has no CUDA module (%s); looked for %s", file,
      tried->len ? tried->str : "nothing");
  return NULL;
}

/* The CUDA backend, or an error saying why not. Called with backends_lock held. */
static MoshiBackend *
open_cuda_locked (GError **error)
{
  if (cuda_backend != NULL) {
    g_atomic_int_inc (&cuda_backend->ref_count);
    return cuda_backend;
  }
  if (cuda_unusable == NULL) {
    GError *local = NULL;
    MoshiCudaBackendNewFunc entry = load_cuda_module (&local);
    if (entry != NULL)
      cuda_backend = entry (MOSHI_CUDA_MODULE_ABI, sizeof (MoshiBackendOps), &local);
    if (cuda_backend != NULL) {
      g_debug ("CUDA backend: %s", cuda_backend->description);
      return cuda_backend;
    }
    cuda_unusable = g_strdup (local->message);
    cuda_unusable_code = local->code;
    g_error_free (local);
  }
  g_set_error (error, MOSHI_ERROR, cuda_unusable_code, "device=cuda: %s", cuda_unusable);
  return NULL;
}

guint
moshi_backend_open_count (void)
{
  return g_atomic_int_get (&backend_opens);
}

MoshiBackend *
moshi_backend_open (MoshiDevice device, GError **error)
{
  MoshiBackend *be = NULL;
  g_atomic_int_inc (&backend_opens);
  switch (device) {
    case MOSHI_DEVICE_CUDA:
      g_mutex_lock (&backends_lock);
      be = open_cuda_locked (error);
      g_mutex_unlock (&backends_lock);
      return be;
    case MOSHI_DEVICE_AUTO: {
      g_mutex_lock (&backends_lock);
      gboolean first = cuda_backend == NULL && cuda_unusable == NULL;
      GError *why = NULL;
      be = open_cuda_locked (&why);
      g_mutex_unlock (&backends_lock);
      if (be != NULL)
        return be;
      if (first)
        g_info ("device=auto: using the CPU (%s)", why->message);
      else
        g_debug ("device=auto: using the CPU (%s)", why->message);
      g_error_free (why);
      break;
    }
    case MOSHI_DEVICE_CPU:
      break;
    default:
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT, "unknown device %d", device);
      return NULL;
  }

  g_mutex_lock (&backends_lock);
  if (cpu_backend == NULL)
    cpu_backend = moshi_backend_cpu_new ();
  else
    g_atomic_int_inc (&cpu_backend->ref_count);
  be = cpu_backend;
  g_mutex_unlock (&backends_lock);
  return be;
}

MoshiBackend *
moshi_backend_ref (MoshiBackend *be)
{
  g_atomic_int_inc (&be->ref_count);
  return be;
}

void
moshi_backend_unref (MoshiBackend *be)
{
  if (be == NULL)
    return;
  g_mutex_lock (&backends_lock);
  gboolean last = g_atomic_int_dec_and_test (&be->ref_count);
  if (last && be == cpu_backend)
    cpu_backend = NULL;
  if (last && be == cuda_backend)
    cuda_backend = NULL;
  g_mutex_unlock (&backends_lock);
  if (last)
    be->ops->destroy (be);
}

/* Two decimals whatever the scale: 1.57 GB against 0.40 GB free reads at a glance. */
static char *
format_bytes (guint64 bytes)
{
  if (bytes >= 1000000000)
    return g_strdup_printf ("%.2f GB", bytes / 1e9);
  if (bytes >= 1000000)
    return g_strdup_printf ("%.2f MB", bytes / 1e6);
  if (bytes >= 1000)
    return g_strdup_printf ("%.2f kB", bytes / 1e3);
  return g_strdup_printf ("%" G_GUINT64_FORMAT " bytes", bytes);
}

gboolean
moshi_backend_free_memory (MoshiBackend *be, guint64 *free_bytes)
{
  guint64 total = 0;
  const char *device = NULL;
  return be->ops->memory_info != NULL
      && be->ops->memory_info (be, free_bytes, &total, &device);
}

void
moshi_backend_explain_no_memory (MoshiBackend *be, GError **error, const char *what,
    guint64 needed, const char *fix)
{
  if (error == NULL || !g_error_matches (*error, MOSHI_ERROR, MOSHI_ERROR_NO_MEMORY))
    return;
  g_autofree char *needs = format_bytes (needed);
  guint64 free_bytes = 0, total = 0;
  const char *device = NULL;
  char *message;
  if (be->ops->memory_info != NULL && be->ops->memory_info (be, &free_bytes, &total, &device)) {
    g_autofree char *free_text = format_bytes (free_bytes);
    if (g_strcmp0 (needs, free_text) == 0) {
      /* rounded alike ("needs 8.19 kB, 8.19 kB free"): the bytes say which is more */
      g_free (needs);
      g_free (free_text);
      needs = g_strdup_printf ("%" G_GUINT64_FORMAT " bytes", needed);
      free_text = g_strdup_printf ("%" G_GUINT64_FORMAT " bytes", free_bytes);
    }
    message = g_strdup_printf ("not enough device memory for %s: needs %s, %s free (%s); %s",
        what, needs, free_text, device, fix);
  } else {
    message = g_strdup_printf ("not enough memory for %s: needs %s (%s); %s", what, needs,
        (*error)->message, fix);
  }
  g_free ((*error)->message);
  (*error)->message = message;
}

MoshiExec *
moshi_exec_new (MoshiBackend *be, int n_threads, GError **error)
{
  if (n_threads < 0 || n_threads > 256) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_INVALID_ARGUMENT,
        "threads=%d is out of range (0 = automatic, 1..256)", n_threads);
    return NULL;
  }
  return be->ops->exec_new (be, n_threads, error);
}

void
moshi_exec_free (MoshiExec *ex)
{
  if (ex != NULL)
    ex->backend->ops->exec_free (ex);
}

MoshiDType
moshi_weight_device_dtype (const MoshiTensorEntry *host, GError **error)
{
  switch (host->dtype) {
    case MOSHI_DTYPE_F32:
    case MOSHI_DTYPE_F16:
      return MOSHI_DTYPE_F32;
    case MOSHI_DTYPE_BF16:
      /* matrices stay BF16: half the memory and bandwidth, read with f32 accumulation */
      return host->ndim == 2 ? MOSHI_DTYPE_BF16 : MOSHI_DTYPE_F32;
    default:
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_DTYPE,
          "tensor '%s' has dtype %s; weights must be F32, BF16 or F16", host->name,
          moshi_dtype_name (host->dtype));
      return MOSHI_DTYPE_COUNT;
  }
}

float *
moshi_weight_to_f32 (const MoshiTensorEntry *host, GError **error)
{
  int64_t numel = moshi_shape_numel (host->shape, host->ndim);
  float *f32 = g_try_malloc (MAX (numel, 1) * sizeof (float));
  if (f32 == NULL) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_IO,
        "out of memory converting tensor '%s' (%" G_GINT64_FORMAT " elements) to F32",
        host->name, numel);
    return NULL;
  }
  moshi_convert_to_f32 (f32, host->data, host->dtype, numel);
  return f32;
}

gboolean
moshi_weight_int8_from_host (MoshiBackend *be, MoshiWeight *w, const MoshiTensorEntry *host,
    GError **error)
{
  if (host->ndim != 2) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_SHAPE,
        "tensor '%s' has %d dimensions; int8 weights are matrices", host->name, host->ndim);
    return FALSE;
  }
  g_autofree float *f32 = moshi_weight_to_f32 (host, error);
  if (f32 == NULL)
    return FALSE;
  int64_t n_out = host->shape[0], n_in = host->shape[1];
  gsize off = moshi_int8_scales_offset (n_out, n_in);
  g_autofree guint8 *packed = g_malloc0 (off + (gsize) n_out * sizeof (float));
  int8_t *q = (int8_t *) packed;
  float *scales = (float *) (packed + off);
  for (int64_t o = 0; o < n_out; o++) {
    const float *row = f32 + o * n_in;
    float amax = 0.0f;
    for (int64_t i = 0; i < n_in; i++)
      amax = MAX (amax, fabsf (row[i]));
    if (!isfinite (amax)) {
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_FORMAT,
          "tensor '%s' row %" G_GINT64_FORMAT " is not finite; it cannot be quantized",
          host->name, o);
      return FALSE;
    }
    float scale = amax / 127.0f;
    scales[o] = scale;
    for (int64_t i = 0; i < n_in; i++)
      q[o * n_in + i] = scale > 0.0f ? (int8_t) lroundf (row[i] / scale) : 0;
  }
  return be->ops->weight_from_int8 (be, w, packed, n_out, n_in, error);
}
