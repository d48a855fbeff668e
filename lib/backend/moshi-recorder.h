/* gst-moshi: record-and-replay of a model's device work, once for every model (Mimi's calls,
 * the LM's steps) on the op table's capture_begin / capture_end / graph_launch.
 *
 * A recorder belongs to one exec and keeps up to n_slots recordings (one per kind of call that
 * alternates on the exec, e.g. Mimi's encode and decode), each valid for one shape: a key that
 * names everything selecting the call's ops and buffers. moshi_recorder_run runs the work:
 *   - replays the slot's recording when the key is the one recorded;
 *   - runs a shape as it comes the first time it is seen, after dropping every recording (the
 *     exec's grow-only scratch buffers may grow under that run, freeing memory the recordings
 *     point to);
 *   - records a seen shape (the slot's previous recording goes) and replays it;
 *   - runs as it comes when the caller says the call must not be recorded (a branch that later
 *     calls of the same key do not take), or when recording is off.
 * A recording that fails turns recording off for the recorder, with a g_message naming what
 * is recorded and why; a capture that cannot begin (the device failed) fails the call. MOSHI_GRAPHS=0 in the environment, read when a recorder is made, turns
 * it off everywhere; backends without capture_begin (the CPU) never record.
 *
 * The work must never wait for the device (no synchronize or download in it), so that it can
 * be recorded. Between runs the exec must be idle (the caller waits for it at the end of each
 * call, as Mimi's calls and the LM's steps do): recordings are freed without waiting. A
 * recorder is used by one thread at a time, as its exec. */
#pragma once

#include "moshi-backend.h"

G_BEGIN_DECLS

typedef struct _MoshiRecorder MoshiRecorder;

/* The device work of one call: queues ops on the recorder's exec. */
typedef void (*MoshiRecordedFunc) (gpointer ctx);

/* allowed FALSE: never records (e.g. a call that spans several execs). what names the work
 * and owner its model in messages ("Mimi frames", "/path/model.safetensors"). */
MoshiRecorder *moshi_recorder_new (MoshiExec *ex, guint n_slots, gboolean allowed,
    const char *what, const char *owner);
void moshi_recorder_free (MoshiRecorder *r);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (MoshiRecorder, moshi_recorder_free)

gboolean moshi_recorder_run (MoshiRecorder *r, guint slot, const char *key, gboolean eager,
    MoshiRecordedFunc work, gpointer ctx, GError **error);

/* Drops every recording: for a caller that frees or moves memory the recordings use. The
 * shapes stay seen, so they are recorded again when they next come. */
void moshi_recorder_invalidate (MoshiRecorder *r);

/* Whether the recorder still records (FALSE when not allowed, turned off or failed). */
gboolean moshi_recorder_records (const MoshiRecorder *r);

/* FALSE when MOSHI_GRAPHS=0 turns recording off in this process's environment. */
gboolean moshi_graphs_enabled (void);

/* Past this many shapes seen, a recorder's set starts again (each shape then runs as it comes
 * once more before it is recorded), so that a batch whose streams come and go does not grow
 * it. */
#define MOSHI_RECORDER_MAX_SEEN 256

G_END_DECLS
