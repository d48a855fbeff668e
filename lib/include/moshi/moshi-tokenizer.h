/* gst-moshi: the text side of Moshi. Reads a SentencePiece model file (tokenizer_spm_32k_3.model
 * in the released repositories) and turns the LM's text tokens into text as upstream shows it.
 * Only id -> piece is needed: the LM never tokenizes text in dialogue. */
#pragma once

#include <glib.h>
#include "moshi-api.h"

MOSHI_BEGIN_DECLS

typedef struct _MoshiTokenizer MoshiTokenizer;

typedef enum {
  MOSHI_PIECE_NORMAL = 1,
  MOSHI_PIECE_UNKNOWN = 2,
  MOSHI_PIECE_CONTROL = 3,
  MOSHI_PIECE_USER_DEFINED = 4,
  MOSHI_PIECE_UNUSED = 5,
  MOSHI_PIECE_BYTE = 6,
} MoshiPieceType;

/* Parses the serialized ModelProto; errors name the file and the byte offset at fault. */
MoshiTokenizer *moshi_tokenizer_load (const char *path, GError **error);
MoshiTokenizer *moshi_tokenizer_new_from_data (const guint8 *data, gsize len, const char *what,
    GError **error);
MoshiTokenizer *moshi_tokenizer_ref (MoshiTokenizer *tok);
void moshi_tokenizer_unref (MoshiTokenizer *tok);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (MoshiTokenizer, moshi_tokenizer_unref)

/* The file it was read from (or the name given to moshi_tokenizer_new_from_data). */
const char *moshi_tokenizer_get_path (const MoshiTokenizer *tok);

int moshi_tokenizer_vocab_size (const MoshiTokenizer *tok);
/* The piece of id (as SentencePiece id_to_piece), or NULL when id is out of range. */
const char *moshi_tokenizer_piece (const MoshiTokenizer *tok, int id);
MoshiPieceType moshi_tokenizer_piece_type (const MoshiTokenizer *tok, int id);

/* The text upstream shows for an LM text token: NULL for the padding ids (skipped), for ids
 * outside the vocabulary (e.g. the LM's initial token) and for negative ids; otherwise the
 * piece with every U+2581 (word start) replaced by a space. Free with g_free. */
char *moshi_tokenizer_display (const MoshiTokenizer *tok, int id, int padding_id,
    int end_padding_id);

MOSHI_END_DECLS
