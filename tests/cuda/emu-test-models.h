/* gst-moshi tests: the small test models on the emulated CUDA backend, and the suite of
 * cases that run one per process, for the tests that change the emulator's state for the
 * whole process (an injected fault, a memory limit). Header-only, beside emu-fault.h. */
#pragma once

#include "test-support.h"
#include "emu-fault.h"

#include "moshi-lm.h"
#include "moshi-mimi.h"
#include "moshi-safetensors.h"

#include <stdio.h>

static MoshiTestEmu emu;

/* The small Mimi on device=cuda; looks up the emulator, which its load opened. */
static inline MoshiMimi *
emu_test_load_mimi (void)
{
  g_autofree char *path = moshi_test_data_path ("mimi/small/model.safetensors");
  g_autofree char *cfg = moshi_test_data_path ("mimi/small/config.json");
  MoshiMimiLoadOptions opts = { MOSHI_DEVICE_CUDA };
  GError *error = NULL;
  MoshiMimi *mimi = moshi_mimi_load (path, cfg, &opts, &error);
  ck_assert_msg (mimi != NULL, "%s", error ? error->message : "");
  ck_assert_msg (moshi_test_emu_lookup (&emu), "the emulated CUDA module is not loaded");
  return mimi;
}

/* The dialog test LM on device=cuda. */
static inline MoshiLm *
emu_test_load_lm (void)
{
  g_autofree char *path = moshi_test_data_path ("lm/dialog/model.safetensors");
  g_autofree char *cfg = moshi_test_data_path ("lm/dialog/config.json");
  MoshiLmLoadOptions opts = { .device = MOSHI_DEVICE_CUDA };
  GError *error = NULL;
  MoshiLm *lm = moshi_lm_load (path, cfg, &opts, &error);
  ck_assert_msg (lm != NULL, "%s", error ? error->message : "");
  ck_assert_msg (moshi_test_emu_lookup (&emu), "the emulated CUDA module is not loaded");
  return lm;
}

/* The small Mimi's test speech: frames of frame_size samples, at least min_frames. */
static inline float *
emu_test_load_speech (int frame_size, int min_frames, int *n_frames)
{
  g_autofree char *path = moshi_test_data_path ("mimi/small/golden.safetensors");
  GError *error = NULL;
  g_autoptr (MoshiSafetensors) golden = moshi_safetensors_open (path, &error);
  ck_assert_msg (golden != NULL, "%s", error ? error->message : "");
  const MoshiTensorEntry *speech = moshi_safetensors_lookup (golden, "speech.pcm");
  ck_assert (speech != NULL);
  *n_frames = (int) (speech->nbytes / sizeof (float) / frame_size);
  ck_assert_int_ge (*n_frames, min_frames);
  return g_memdup2 (speech->data, (gsize) *n_frames * frame_size * sizeof (float));
}

typedef struct {
  const char *name;
  const TTest *test;
} EmuTestCase;

/* A suite of one case per test, to be run one per process (CK_RUN_CASE). */
static inline Suite *
emu_test_suite (const char *name, const EmuTestCase *cases, guint n)
{
  Suite *s = suite_create (name);
  for (guint i = 0; i < n; i++) {
    TCase *tc = tcase_create (cases[i].name);
    tcase_set_timeout (tc, 600);
    tcase_add_test (tc, cases[i].test);
    suite_add_tcase (s, tc);
  }
  return s;
}

/* FALSE, after saying why (the caller exits 77: skipped), without the emulated backend. */
static inline gboolean
emu_test_backend_ready (void)
{
  if (moshi_test_device () != MOSHI_DEVICE_CUDA || g_getenv ("MOSHI_CUDA_EMULATE") == NULL) {
    printf ("SKIP: needs the emulated CUDA backend (MOSHI_TEST_DEVICE=cuda, MOSHI_CUDA_EMULATE)\n");
    return FALSE;
  }
  return TRUE;
}
