/* moshi-tool and moshi-server: progress lines on stderr for the long runs and the model
 * downloads. */
#pragma once

#include <glib.h>
#include <moshi/moshi-hub-download.h>

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

/* A MoshiHubProgressFunc, user_data a MoshiProgress from moshi_progress_init (its what and total
 * unused): a line per downloaded file, redrawn in place on a terminal; elsewhere, when enabled,
 * its start, a line every few seconds and its end. */
void moshi_progress_download (const MoshiHubProgress *hp, gpointer user_data);
