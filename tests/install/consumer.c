/* A program of a libmoshi user, built by test-install.sh against the installed moshi-1.0.pc
 * alone: it must find the headers as <moshi/...>, link, and run one Mimi frame. */
#include <moshi/moshi.h>

#include <stdio.h>

int
main (int argc, char **argv)
{
  if (argc != 3) {
    fprintf (stderr, "usage: %s MIMI_WEIGHTS MIMI_CONFIG\n", argv[0]);
    return 2;
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
  printf ("device %s, frame of %d samples, code %d\n", device, moshi_mimi_frame_size (mimi), code);
  return code >= 0 && code < moshi_mimi_codebook_size (mimi) ? 0 : 1;
}
