/* A program of a libmoshi user, built by test-install.sh against the installed moshi-1.0.pc
 * alone: it must find the headers as <moshi/...>, link, check the version as a user would, and
 * run one Mimi frame. */
#include <moshi/moshi.h>

#include <stdio.h>
#include <string.h>

/* What a user who needs this release's API writes. */
#if !MOSHI_CHECK_VERSION(0, 1, 0)
#error "libmoshi 0.1.0 or newer is needed"
#endif

int
main (int argc, char **argv)
{
  if (argc != 4) {
    fprintf (stderr, "usage: %s MIMI_WEIGHTS MIMI_CONFIG PKG_CONFIG_MODVERSION\n", argv[0]);
    return 2;
  }
  /* the library loaded, the installed headers and moshi-1.0.pc all name one release */
  const char *modversion = argv[3];
  if (strcmp (moshi_version (), modversion) != 0
      || strcmp (MOSHI_VERSION_STRING, modversion) != 0) {
    fprintf (stderr, "consumer: libmoshi %s, headers %s, pkg-config %s\n", moshi_version (),
        MOSHI_VERSION_STRING, modversion);
    return 1;
  }
  const char *mismatch = moshi_check_version (MOSHI_MAJOR_VERSION, MOSHI_MINOR_VERSION,
      MOSHI_MICRO_VERSION);
  if (mismatch != NULL || moshi_check_version (MOSHI_MAJOR_VERSION + 1, 0, 0) == NULL) {
    fprintf (stderr, "consumer: moshi_check_version: %s\n", mismatch ? mismatch : "no mismatch");
    return 1;
  }
  g_autoptr (GError) error = NULL;
  g_autofree char *device = moshi_device_describe (MOSHI_DEVICE_CPU, NULL, &error);
  MoshiMimiLoadOptions load = { .device = MOSHI_DEVICE_CPU };
  g_autoptr (MoshiMimi) mimi = device ? moshi_mimi_load (argv[1], argv[2], &load, &error) : NULL;
  MoshiMimiSessionOptions opts = { .n_threads = 1, .num_codebooks = 1 };
  g_autoptr (MoshiMimiSession) s = mimi ? moshi_mimi_session_new (mimi, &opts, &error) : NULL;
  if (s == NULL) {
    fprintf (stderr, "consumer: %s\n", error->message);
    return 1;
  }
  g_autofree float *pcm = g_new0 (float, moshi_mimi_frame_size (mimi));
  int32_t code = -1;
  if (!moshi_mimi_session_encode (s, pcm, 1, &code, &error)) {
    fprintf (stderr, "consumer: %s\n", error->message);
    return 1;
  }
  printf ("libmoshi %s, device %s, frame of %d samples, code %d\n", moshi_version (), device, moshi_mimi_frame_size (mimi), code);
  return code >= 0 && code < moshi_mimi_codebook_size (mimi) ? 0 : 1;
}
