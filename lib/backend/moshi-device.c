/* The public device calls (moshi-device.h) on the backends. */
#include "moshi-backend.h"

#include <string.h>

char *
moshi_backend_describe (const MoshiBackend *be)
{
  return g_strdup (be->description ? be->description : be->name);
}

char *
moshi_device_describe (MoshiDevice device, MoshiDevice *resolved, GError **error)
{
  MoshiBackend *be = moshi_backend_open (device, error);
  if (be == NULL)
    return NULL;
  char *description = moshi_backend_describe (be);
  if (resolved)
    *resolved = be->device;
  moshi_backend_unref (be);
  return description;
}

gboolean
moshi_device_get_stats (MoshiDevice device, MoshiDeviceStats *out)
{
  memset (out, 0, sizeof *out);
  MoshiBackend *be = moshi_backend_open (device, NULL);
  if (be == NULL)
    return FALSE;
  gboolean kept = be->ops->get_stats != NULL;
  if (kept)
    be->ops->get_stats (be, NULL, out);
  moshi_backend_unref (be);
  return kept;
}

void
moshi_device_reset_stats (MoshiDevice device)
{
  MoshiBackend *be = moshi_backend_open (device, NULL);
  if (be == NULL)
    return;
  if (be->ops->reset_stats)
    be->ops->reset_stats (be, NULL);
  moshi_backend_unref (be);
}
