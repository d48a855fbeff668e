#include "moshi-chat-query.h"

#include <string.h>

/* moshidialog's range of the temperatures. */
#define MAX_TEMPERATURE 100.0

void
moshi_chat_query_parse (const char *query, MoshiChatQuery *out)
{
  memset (out, 0, sizeof (*out));
  if (query == NULL)
    return;
  g_auto (GStrv) pairs = g_strsplit (query, "&", -1);
  static const char *const seed_keys[3] = { "seed", "text_seed", "audio_seed" };
  guint64 seeds[3] = { 0 };
  gboolean have_seed[3] = { FALSE };
  for (guint i = 0; pairs[i] != NULL; i++) {
    const char *pair = pairs[i];
    if (pair[0] == '=')
      pair++;
    const char *eq = strchr (pair, '=');
    if (eq == NULL)
      continue;
    g_autofree gchar *key = g_uri_unescape_segment (pair, eq, NULL);
    g_autofree gchar *val = g_uri_unescape_string (eq + 1, NULL);
    if (key == NULL || val == NULL || val[0] == '\0')
      continue;
    char *end = NULL;
    gboolean text = g_str_has_prefix (key, "text_");
    if (g_str_equal (key, "text_temperature") || g_str_equal (key, "audio_temperature")) {
      double v = g_ascii_strtod (val, &end);
      if (*end == '\0' && v >= 0 && v <= MAX_TEMPERATURE) {
        *(text ? &out->text_temperature : &out->audio_temperature) = (float) v;
        *(text ? &out->have_text_temperature : &out->have_audio_temperature) = TRUE;
      }
    } else if (g_str_equal (key, "text_topk") || g_str_equal (key, "audio_topk")) {
      gint64 v = g_ascii_strtoll (val, &end, 10);
      if (*end == '\0' && v >= 0 && v <= G_MAXINT) {
        *(text ? &out->text_topk : &out->audio_topk) = (int) v;
        *(text ? &out->have_text_topk : &out->have_audio_topk) = TRUE;
      }
    } else {
      for (guint k = 0; k < 3; k++)
        if (g_str_equal (key, seed_keys[k])) {
          guint64 v = g_ascii_strtoull (val, &end, 10);
          if (*end == '\0' && val[0] != '-') {
            seeds[k] = v;
            have_seed[k] = TRUE;
          }
        }
    }
  }
  for (guint k = 0; k < 3; k++)
    if (have_seed[k]) {
      out->seed = seeds[k];
      out->have_seed = TRUE;
      break;
    }
}
