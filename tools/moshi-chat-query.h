/* gst-moshi tools: the query string of moshi-server's /api/chat (docs/server.md), the sampling
 * settings a client asks for. GLib only, so that the unit tests and the fuzz target read it as
 * the server does. */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

typedef struct {
  gboolean have_text_temperature, have_audio_temperature;
  float text_temperature, audio_temperature;    /* [0, 100] */
  gboolean have_text_topk, have_audio_topk;
  int text_topk, audio_topk;                    /* [0, G_MAXINT] */
  gboolean have_seed;
  guint64 seed;
} MoshiChatQuery;

/* Reads query (may be NULL) leniently, as upstream's server does: unknown keys, values that
 * are not numbers in range and a stray leading '=' (`?=text_temperature=...`, seen in a
 * third-party client) are ignored or repaired. One seed drives both streams: `seed`, else
 * `text_seed`, else `audio_seed`. */
void moshi_chat_query_parse (const char *query, MoshiChatQuery *out);

G_END_DECLS
