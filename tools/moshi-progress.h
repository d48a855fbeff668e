/* moshi-tool: a progress line on stderr for the long runs. */
#pragma once

#include <glib.h>

typedef struct {
  gboolean enabled;
  gboolean tty;           /* redraw one line (\r) rather than print a line per update */
  const char *what;       /* "step", "frame" */
  gint64 total;
  gint64 start_us, last_us;
} MoshiProgress;

/* Shown when stderr is a terminal, or always when forced (--progress), so that a log or a
 * wrapper script can follow a run too. */
void moshi_progress_init (MoshiProgress *p, gboolean forced, const char *what, gint64 total);
/* done of total; drawn at most a few times a second. */
void moshi_progress_update (MoshiProgress *p, gint64 done);
/* The final count, and the end of the line. */
void moshi_progress_end (MoshiProgress *p, gint64 done);
