#include "moshi-progress.h"

#include <stdio.h>
#include <unistd.h>

/* Redraws on a terminal are cheap; lines in a log are not. */
#define TTY_INTERVAL_US (G_USEC_PER_SEC / 4)
#define LOG_INTERVAL_US (5 * G_USEC_PER_SEC)

void
moshi_progress_init (MoshiProgress *p, gboolean forced, const char *what, gint64 total)
{
  p->tty = isatty (STDERR_FILENO);
  p->enabled = forced || p->tty;
  p->what = what;
  p->total = total;
  p->start_us = p->last_us = g_get_monotonic_time ();
}

static void
draw (MoshiProgress *p, gint64 done, gint64 now, gboolean last)
{
  double elapsed = (now - p->start_us) / 1e6;
  double eta = done > 0 ? elapsed * (p->total - done) / done : 0;
  fprintf (stderr, "%s%s %" G_GINT64_FORMAT "/%" G_GINT64_FORMAT " (%d%%), %.1f s elapsed",
      p->tty ? "\r" : "", p->what, done, p->total,
      p->total > 0 ? (int) (100 * done / p->total) : 100, elapsed);
  if (!last && done > 0)
    fprintf (stderr, ", %.1f s left ", eta);
  fputs (p->tty && !last ? "" : "\n", stderr);
  fflush (stderr);
  p->last_us = now;
}

void
moshi_progress_update (MoshiProgress *p, gint64 done)
{
  if (!p->enabled)
    return;
  gint64 now = g_get_monotonic_time ();
  if (now - p->last_us >= (p->tty ? TTY_INTERVAL_US : LOG_INTERVAL_US))
    draw (p, done, now, FALSE);
}

void
moshi_progress_end (MoshiProgress *p, gint64 done)
{
  if (!p->enabled)
    return;
  if (p->tty)
    fputs ("\r\033[K", stderr);     /* the last redraw may be longer than the final line */
  draw (p, done, g_get_monotonic_time (), TRUE);
}

void
moshi_progress_download (const MoshiHubProgress *hp, gpointer user_data)
{
  MoshiProgress *p = user_data;
  if (!p->enabled)
    return;
  gint64 now = g_get_monotonic_time ();
  if (!hp->started && !hp->done
      && now - p->last_us < (p->tty ? TTY_INTERVAL_US : LOG_INTERVAL_US))
    return;
  p->last_us = now;
  /* a redrawn line may be longer than the one that replaces it */
  const char *start = p->tty ? "\r\033[K" : "", *end = p->tty ? "" : "\n";
  double mb = hp->downloaded / 1e6;
  if (hp->done)
    fprintf (stderr, "%sdownloaded %s from %s (%.1f MB)\n", start, hp->filename, hp->repo_id, mb);
  else if (hp->total > 0)
    fprintf (stderr, "%sdownloading %s from %s: %3d%% (%.1f of %.1f MB)%s", start, hp->filename,
        hp->repo_id, (int) (hp->downloaded * 100 / hp->total), mb, hp->total / 1e6, end);
  else
    fprintf (stderr, "%sdownloading %s from %s: %.1f MB%s", start, hp->filename, hp->repo_id, mb,
        end);
  fflush (stderr);
}
