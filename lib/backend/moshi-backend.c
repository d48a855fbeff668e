#include "moshi-backend.h"

#include "moshi-error.h"

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

MoshiBackend *
moshi_backend_open (MoshiDevice device, GError **error)
{
  switch (device) {
    case MOSHI_DEVICE_CUDA:
      g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_UNSUPPORTED,
          "device=cuda was requested, but this build of libmoshi has no CUDA backend; "
          "use device=cpu or device=auto");
      return NULL;
    case MOSHI_DEVICE_AUTO:
      g_debug ("device=auto: no CUDA backend in this build, using the CPU");
      G_GNUC_FALLTHROUGH;
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
  MoshiBackend *be = cpu_backend;
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
  g_mutex_unlock (&backends_lock);
  if (last)
    be->ops->destroy (be);
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
