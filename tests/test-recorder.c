/* Tests of record-and-replay (lib/backend/moshi-recorder.c) on a fake backend that counts what
 * it is asked to record, replay and free: the rules that Mimi's calls and the LM's steps share. */
#include <string.h>

#include "moshi-error.h"
#include "moshi-recorder.h"
#include "test-support.h"

struct _MoshiGraph {
  int id;
};

/* What the fake backend saw. */
typedef struct {
  gboolean capturing;
  gboolean fail_capture;        /* capture_end refuses */
  gboolean fail_begin;          /* capture_begin fails, as on a device that faulted */
  int next_graph;
  int eager_runs;               /* work run outside a capture */
  int captured_runs;
  int launches;                 /* graph_launch */
  int last_launched;            /* the id of the graph last launched */
  int frees;
  int live;                     /* graphs made and not yet freed */
} Fake;

static Fake fake;

static gboolean
fake_capture_begin (MoshiExec *ex, GError **error)
{
  if (fake.fail_begin) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_DEVICE, "an illegal memory access");
    return FALSE;
  }
  fake.capturing = TRUE;
  return TRUE;
}

static MoshiGraph *
fake_capture_end (MoshiExec *ex, GError **error)
{
  fake.capturing = FALSE;
  if (fake.fail_capture) {
    g_set_error (error, MOSHI_ERROR, MOSHI_ERROR_DEVICE, "a wait in the recorded work");
    return NULL;
  }
  MoshiGraph *g = g_new0 (MoshiGraph, 1);
  g->id = ++fake.next_graph;
  fake.live++;
  return g;
}

static gboolean
fake_graph_launch (MoshiExec *ex, MoshiGraph *graph, GError **error)
{
  fake.launches++;
  fake.last_launched = graph->id;
  return TRUE;
}

static void
fake_graph_free (MoshiBackend *be, MoshiGraph *graph)
{
  fake.frees++;
  fake.live--;
  g_free (graph);
}

static MoshiBackendOps recording_ops = {
  .capture_begin = fake_capture_begin,
  .capture_end = fake_capture_end,
  .graph_launch = fake_graph_launch,
  .graph_free = fake_graph_free,
};
static MoshiBackendOps eager_ops;       /* no capture_begin: a backend that cannot record */

static MoshiBackend recording_backend = { .ops = &recording_ops, .name = "fake" };
static MoshiBackend eager_backend = { .ops = &eager_ops, .name = "fake-eager" };
static MoshiExec recording_exec = { .backend = &recording_backend };
static MoshiExec eager_exec = { .backend = &eager_backend };

static void
work (gpointer ctx)
{
  if (fake.capturing)
    fake.captured_runs++;
  else
    fake.eager_runs++;
}

static void
setup (void)
{
  memset (&fake, 0, sizeof fake);
  g_unsetenv ("MOSHI_GRAPHS");
}

/* Runs key in slot and checks what it did: E eager, R recorded and launched, P replayed. */
static void
run_expect (MoshiRecorder *r, guint slot, const char *key, gboolean eager, char what)
{
  Fake before = fake;
  g_autoptr (GError) error = NULL;
  ck_assert (moshi_recorder_run (r, slot, key, eager, work, NULL, &error));
  ck_assert_ptr_null (error);
  int eager_runs = fake.eager_runs - before.eager_runs;
  int captured = fake.captured_runs - before.captured_runs;
  int launches = fake.launches - before.launches;
  char got = eager_runs == 1 && captured == 0 && launches == 0 ? 'E'
      : eager_runs == 0 && captured == 1 && launches == 1 ? 'R'
      : eager_runs == 0 && captured == 0 && launches == 1 ? 'P' : '?';
  ck_assert_msg (got == what, "slot %u, key %s: expected %c, got %c (eager %d, captured %d, "
      "launched %d)", slot, key, what, got, eager_runs, captured, launches);
}

START_TEST (test_first_run_then_record_then_replay)
{
  g_autoptr (MoshiRecorder) r = moshi_recorder_new (&recording_exec, 1, TRUE, "steps", "model");
  ck_assert (moshi_recorder_records (r));
  run_expect (r, 0, "a", FALSE, 'E');
  run_expect (r, 0, "a", FALSE, 'R');
  run_expect (r, 0, "a", FALSE, 'P');
  run_expect (r, 0, "a", FALSE, 'P');
  ck_assert_int_eq (fake.live, 1);
}
END_TEST

START_TEST (test_new_shape_drops_every_recording)
{
  g_autoptr (MoshiRecorder) r = moshi_recorder_new (&recording_exec, 2, TRUE, "calls", "model");
  run_expect (r, 0, "a", FALSE, 'E');
  run_expect (r, 0, "a", FALSE, 'R');
  run_expect (r, 1, "a", FALSE, 'E');       /* seen per slot: slot 1 sizes its own scratch */
  ck_assert_int_eq (fake.live, 0);          /* ...and may have grown what slot 0's graph used */
  run_expect (r, 1, "a", FALSE, 'R');
  run_expect (r, 0, "a", FALSE, 'R');       /* seen: recorded again at once */
  run_expect (r, 1, "a", FALSE, 'P');
  run_expect (r, 0, "a", FALSE, 'P');
  ck_assert_int_eq (fake.live, 2);
  /* a seen shape replaces its slot's recording only */
  run_expect (r, 0, "b", FALSE, 'E');
  run_expect (r, 0, "b", FALSE, 'R');
  run_expect (r, 0, "b", FALSE, 'P');
  run_expect (r, 1, "a", FALSE, 'R');
  run_expect (r, 0, "b", FALSE, 'P');
  int frees = fake.frees;
  run_expect (r, 0, "a", FALSE, 'R');
  ck_assert_int_eq (fake.frees, frees + 1);
  run_expect (r, 1, "a", FALSE, 'P');
}
END_TEST

START_TEST (test_eager_calls_are_never_recorded)
{
  g_autoptr (MoshiRecorder) r = moshi_recorder_new (&recording_exec, 1, TRUE, "calls", "model");
  run_expect (r, 0, "first", TRUE, 'E');
  run_expect (r, 0, "first", TRUE, 'E');
  run_expect (r, 0, "first", TRUE, 'E');
  ck_assert_int_eq (fake.next_graph, 0);
}
END_TEST

START_TEST (test_invalidate)
{
  g_autoptr (MoshiRecorder) r = moshi_recorder_new (&recording_exec, 1, TRUE, "steps", "model");
  run_expect (r, 0, "a", FALSE, 'E');
  run_expect (r, 0, "a", FALSE, 'R');
  moshi_recorder_invalidate (r);
  ck_assert_int_eq (fake.live, 0);
  run_expect (r, 0, "a", FALSE, 'R');       /* still seen */
  run_expect (r, 0, "a", FALSE, 'P');
}
END_TEST

START_TEST (test_failed_recording_turns_recording_off)
{
  g_autoptr (MoshiRecorder) r = moshi_recorder_new (&recording_exec, 2, TRUE, "Mimi frames",
      "/m.safetensors");
  run_expect (r, 1, "d", FALSE, 'E');
  run_expect (r, 1, "d", FALSE, 'R');
  run_expect (r, 0, "e", FALSE, 'E');
  fake.fail_capture = TRUE;
  Fake before = fake;
  g_autoptr (GError) error = NULL;
  ck_assert (moshi_recorder_run (r, 0, "e", FALSE, work, NULL, &error));
  ck_assert_ptr_null (error);
  /* the failed capture ran the work once into nothing, then it ran as it comes */
  ck_assert_int_eq (fake.captured_runs - before.captured_runs, 1);
  ck_assert_int_eq (fake.eager_runs - before.eager_runs, 1);
  ck_assert (!moshi_recorder_records (r));
  ck_assert_int_eq (fake.live, 0);
  fake.fail_capture = FALSE;
  run_expect (r, 0, "e", FALSE, 'E');
  run_expect (r, 1, "d", FALSE, 'E');
}
END_TEST

/* A capture that cannot begin is a device that failed: the call fails with its error, without
 * running the work; the recorder records on (nothing about the work stopped it). */
START_TEST (test_failed_begin_fails_the_call)
{
  g_autoptr (MoshiRecorder) r = moshi_recorder_new (&recording_exec, 1, TRUE, "steps", "model");
  run_expect (r, 0, "a", FALSE, 'E');
  fake.fail_begin = TRUE;
  Fake before = fake;
  g_autoptr (GError) error = NULL;
  ck_assert (!moshi_recorder_run (r, 0, "a", FALSE, work, NULL, &error));
  ck_assert_ptr_nonnull (error);
  ck_assert_int_eq (error->code, MOSHI_ERROR_DEVICE);
  ck_assert_int_eq (fake.eager_runs, before.eager_runs);
  ck_assert_int_eq (fake.captured_runs, before.captured_runs);
  ck_assert (moshi_recorder_records (r));
  fake.fail_begin = FALSE;
  run_expect (r, 0, "a", FALSE, 'R');
  run_expect (r, 0, "a", FALSE, 'P');
}
END_TEST

START_TEST (test_off_switches)
{
  /* a backend that cannot record */
  g_autoptr (MoshiRecorder) cpu = moshi_recorder_new (&eager_exec, 1, TRUE, "steps", "model");
  ck_assert (!moshi_recorder_records (cpu));
  for (int i = 0; i < 3; i++)
    run_expect (cpu, 0, "a", FALSE, 'E');
  /* not allowed by its user */
  g_autoptr (MoshiRecorder) no = moshi_recorder_new (&recording_exec, 1, FALSE, "steps", "m");
  ck_assert (!moshi_recorder_records (no));
  for (int i = 0; i < 3; i++)
    run_expect (no, 0, "a", FALSE, 'E');
  /* MOSHI_GRAPHS=0, read when a recorder is made: one switch for every model */
  ck_assert (moshi_graphs_enabled ());
  g_setenv ("MOSHI_GRAPHS", "0", TRUE);
  ck_assert (!moshi_graphs_enabled ());
  g_autoptr (MoshiRecorder) off = moshi_recorder_new (&recording_exec, 1, TRUE, "steps", "m");
  g_setenv ("MOSHI_GRAPHS", "1", TRUE);
  ck_assert (moshi_graphs_enabled ());
  ck_assert (!moshi_recorder_records (off));
  for (int i = 0; i < 3; i++)
    run_expect (off, 0, "a", FALSE, 'E');
  g_unsetenv ("MOSHI_GRAPHS");
  ck_assert_int_eq (fake.next_graph, 0);
}
END_TEST

START_TEST (test_seen_set_is_bounded)
{
  g_autoptr (MoshiRecorder) r = moshi_recorder_new (&recording_exec, 1, TRUE, "calls", "model");
  run_expect (r, 0, "k0", FALSE, 'E');
  for (int i = 1; i < MOSHI_RECORDER_MAX_SEEN; i++) {
    g_autofree char *key = g_strdup_printf ("k%d", i);
    run_expect (r, 0, key, FALSE, 'E');
  }
  run_expect (r, 0, "k0", FALSE, 'R');      /* all MAX_SEEN remembered */
  run_expect (r, 0, "new", FALSE, 'E');     /* one more starts the set again */
  run_expect (r, 0, "k0", FALSE, 'E');
  run_expect (r, 0, "k0", FALSE, 'R');
}
END_TEST

START_TEST (test_free_releases_recordings)
{
  MoshiRecorder *r = moshi_recorder_new (&recording_exec, 2, TRUE, "calls", "model");
  run_expect (r, 0, "a", FALSE, 'E');
  run_expect (r, 1, "b", FALSE, 'E');
  run_expect (r, 0, "a", FALSE, 'R');
  run_expect (r, 1, "b", FALSE, 'R');
  ck_assert_int_eq (fake.live, 2);
  moshi_recorder_free (r);
  ck_assert_int_eq (fake.live, 0);
  moshi_recorder_free (NULL);
}
END_TEST

static Suite *
recorder_suite (void)
{
  Suite *s = suite_create ("recorder");
  TCase *tc = tcase_create ("rules");
  tcase_add_checked_fixture (tc, setup, NULL);
  tcase_add_test (tc, test_first_run_then_record_then_replay);
  tcase_add_test (tc, test_new_shape_drops_every_recording);
  tcase_add_test (tc, test_eager_calls_are_never_recorded);
  tcase_add_test (tc, test_invalidate);
  tcase_add_test (tc, test_failed_recording_turns_recording_off);
  tcase_add_test (tc, test_failed_begin_fails_the_call);
  tcase_add_test (tc, test_off_switches);
  tcase_add_test (tc, test_seen_set_is_bounded);
  tcase_add_test (tc, test_free_releases_recordings);
  suite_add_tcase (s, tc);
  return s;
}

int
main (void)
{
  return moshi_test_run_suite (recorder_suite ());
}
