#include "moshi-json.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "moshi-error.h"

/* Deep enough for any config or safetensors header, shallow enough that the recursive descent
 * below cannot exhaust the stack whatever the input. */
#define MAX_DEPTH 64

/* Objects with fewer members than this are searched linearly: cheaper than a tree for the small
 * objects (tensor entries, configs) that make up almost every document. */
#define INDEX_THRESHOLD 8

struct _MoshiJson {
  MoshiJsonKind kind;
  /* NUMBER: the literal as written. STRING: the unescaped UTF-8 text. */
  char *text;
  /* ARRAY and OBJECT: element / member values. */
  GPtrArray *values;
  /* OBJECT only: member names, parallel to values. */
  GPtrArray *names;
  /* OBJECT only, once it is big: name -> index + 1. A balanced tree rather than a hash table,
   * whose unkeyed string hash lets a hostile header pick colliding names and turn loading into
   * quadratic work. */
  GTree *index;
};

typedef struct {
  const guchar *text;
  gsize len;
  gsize pos;
  const char *what;
  GError **error;
} Parser;

static MoshiJson *parse_value (Parser *p, int depth);

static void parse_error (Parser *p, gsize offset, const char *format, ...) G_GNUC_PRINTF (3, 4);

static void
parse_error (Parser *p, gsize offset, const char *format, ...)
{
  va_list args;
  va_start (args, format);
  g_autofree char *problem = g_strdup_vprintf (format, args);
  va_end (args);
  g_set_error (p->error, MOSHI_ERROR, MOSHI_ERROR_FORMAT, "%s: %s at byte %" G_GSIZE_FORMAT,
      p->what, problem, offset);
}

/* Reports the byte at the current position as unexpected, or the end of the input. */
static void
unexpected (Parser *p, const char *expected)
{
  if (p->pos >= p->len) {
    parse_error (p, p->pos, "unexpected end of input, expected %s", expected);
    return;
  }
  guchar c = p->text[p->pos];
  if (c >= 0x20 && c < 0x7f)
    parse_error (p, p->pos, "unexpected character '%c', expected %s", c, expected);
  else
    parse_error (p, p->pos, "unexpected byte 0x%02x, expected %s", c, expected);
}

static MoshiJson *
node_new (MoshiJsonKind kind)
{
  MoshiJson *node = g_new0 (MoshiJson, 1);
  node->kind = kind;
  if (kind == MOSHI_JSON_ARRAY || kind == MOSHI_JSON_OBJECT)
    node->values = g_ptr_array_new_with_free_func ((GDestroyNotify) moshi_json_free);
  if (kind == MOSHI_JSON_OBJECT)
    node->names = g_ptr_array_new_with_free_func (g_free);
  return node;
}

void
moshi_json_free (MoshiJson *json)
{
  if (json == NULL)
    return;
  /* Recursion here is bounded by MAX_DEPTH, since only the parser builds trees. */
  if (json->index != NULL)
    g_tree_unref (json->index);
  if (json->values != NULL)
    g_ptr_array_unref (json->values);
  if (json->names != NULL)
    g_ptr_array_unref (json->names);
  g_free (json->text);
  g_free (json);
}

static void
skip_whitespace (Parser *p)
{
  while (p->pos < p->len) {
    guchar c = p->text[p->pos];
    if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
      break;
    p->pos++;
  }
}

static gboolean
expect_literal (Parser *p, const char *literal)
{
  gsize n = strlen (literal);
  for (gsize i = 0; i < n; i++) {
    if (p->pos + i >= p->len || p->text[p->pos + i] != (guchar) literal[i]) {
      parse_error (p, p->pos, "invalid literal, expected '%s'", literal);
      return FALSE;
    }
  }
  p->pos += n;
  return TRUE;
}

static gboolean
is_digit (Parser *p, gsize at)
{
  return at < p->len && p->text[at] >= '0' && p->text[at] <= '9';
}

static MoshiJson *
parse_number (Parser *p)
{
  gsize start = p->pos;
  gsize at = p->pos;

  if (at < p->len && p->text[at] == '-')
    at++;
  if (!is_digit (p, at)) {
    parse_error (p, at, "invalid number, expected a digit");
    return NULL;
  }
  if (p->text[at] == '0') {
    at++;
    if (is_digit (p, at)) {
      parse_error (p, at - 1, "invalid number, leading zero");
      return NULL;
    }
  } else {
    while (is_digit (p, at))
      at++;
  }
  if (at < p->len && p->text[at] == '.') {
    at++;
    if (!is_digit (p, at)) {
      parse_error (p, at, "invalid number, expected a digit after '.'");
      return NULL;
    }
    while (is_digit (p, at))
      at++;
  }
  if (at < p->len && (p->text[at] == 'e' || p->text[at] == 'E')) {
    at++;
    if (at < p->len && (p->text[at] == '+' || p->text[at] == '-'))
      at++;
    if (!is_digit (p, at)) {
      parse_error (p, at, "invalid number, expected a digit in the exponent");
      return NULL;
    }
    while (is_digit (p, at))
      at++;
  }

  MoshiJson *node = node_new (MOSHI_JSON_NUMBER);
  node->text = g_strndup ((const char *) p->text + start, at - start);
  p->pos = at;
  return node;
}

static int
hex_value (guchar c)
{
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

/* Reads the four hex digits of a \u escape whose backslash is at escape_start. */
static gboolean
parse_hex4 (Parser *p, gsize escape_start, guint32 *out)
{
  gsize at = escape_start + 2;
  guint32 v = 0;
  for (int i = 0; i < 4; i++) {
    if (at + i >= p->len) {
      parse_error (p, escape_start, "unterminated \\u escape");
      return FALSE;
    }
    int h = hex_value (p->text[at + i]);
    if (h < 0) {
      parse_error (p, escape_start, "invalid \\u escape, expected four hex digits");
      return FALSE;
    }
    v = (v << 4) | (guint32) h;
  }
  *out = v;
  return TRUE;
}

/* Length of the well-formed UTF-8 sequence at `at`, or 0 if it is not one: rejects overlong
 * forms, surrogates, code points past U+10FFFF and truncated sequences. */
static gsize
utf8_sequence_length (Parser *p, gsize at)
{
  const guchar *s = p->text + at;
  gsize avail = p->len - at;
  guchar c = s[0];
  gsize n;
  guint32 min, cp;

  if (c < 0x80)
    return 1;
  else if (c >= 0xc2 && c <= 0xdf)
    n = 2, min = 0x80, cp = c & 0x1f;
  else if (c >= 0xe0 && c <= 0xef)
    n = 3, min = 0x800, cp = c & 0x0f;
  else if (c >= 0xf0 && c <= 0xf4)
    n = 4, min = 0x10000, cp = c & 0x07;
  else
    return 0;
  if (avail < n)
    return 0;
  for (gsize i = 1; i < n; i++) {
    if ((s[i] & 0xc0) != 0x80)
      return 0;
    cp = (cp << 6) | (s[i] & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
    return 0;
  return n;
}

/* Parses a string whose opening quote is at the current position; returns the unescaped text. */
static char *
parse_string_text (Parser *p)
{
  gsize start = p->pos;
  g_autoptr (GString) out = g_string_new (NULL);

  p->pos++;   /* the opening quote */
  for (;;) {
    if (p->pos >= p->len) {
      parse_error (p, start, "unterminated string");
      return NULL;
    }
    guchar c = p->text[p->pos];
    if (c == '"') {
      p->pos++;
      return g_string_free (g_steal_pointer (&out), FALSE);
    } else if (c < 0x20) {
      parse_error (p, p->pos, "control character 0x%02x in string", c);
      return NULL;
    } else if (c == '\\') {
      gsize escape_start = p->pos;
      if (p->pos + 1 >= p->len) {
        parse_error (p, escape_start, "unterminated escape");
        return NULL;
      }
      guchar e = p->text[p->pos + 1];
      switch (e) {
        case '"': g_string_append_c (out, '"'); break;
        case '\\': g_string_append_c (out, '\\'); break;
        case '/': g_string_append_c (out, '/'); break;
        case 'b': g_string_append_c (out, '\b'); break;
        case 'f': g_string_append_c (out, '\f'); break;
        case 'n': g_string_append_c (out, '\n'); break;
        case 'r': g_string_append_c (out, '\r'); break;
        case 't': g_string_append_c (out, '\t'); break;
        case 'u': {
          guint32 cp;
          if (!parse_hex4 (p, escape_start, &cp))
            return NULL;
          p->pos += 6;
          if (cp >= 0xdc00 && cp <= 0xdfff) {
            parse_error (p, escape_start, "lone low surrogate \\u%04X", cp);
            return NULL;
          }
          if (cp >= 0xd800 && cp <= 0xdbff) {
            guint32 low;
            if (p->pos + 1 >= p->len || p->text[p->pos] != '\\' || p->text[p->pos + 1] != 'u') {
              parse_error (p, escape_start, "high surrogate \\u%04X not followed by a low one", cp);
              return NULL;
            }
            if (!parse_hex4 (p, p->pos, &low))
              return NULL;
            if (low < 0xdc00 || low > 0xdfff) {
              parse_error (p, escape_start, "high surrogate \\u%04X not followed by a low one", cp);
              return NULL;
            }
            p->pos += 6;
            cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
          }
          if (cp == 0) {
            /* Text is handed out as C strings, where a NUL would silently cut names short and
             * let two different keys compare equal. */
            parse_error (p, escape_start, "\\u0000 in strings is not supported");
            return NULL;
          }
          g_string_append_unichar (out, cp);
          continue;   /* p->pos already moved past the escape(s) */
        }
        default:
          if (e >= 0x20 && e < 0x7f)
            parse_error (p, escape_start, "invalid escape '\\%c'", e);
          else
            parse_error (p, escape_start, "invalid escape, byte 0x%02x after '\\'", e);
          return NULL;
      }
      p->pos += 2;
    } else if (c < 0x80) {
      g_string_append_c (out, (char) c);
      p->pos++;
    } else {
      gsize n = utf8_sequence_length (p, p->pos);
      if (n == 0) {
        parse_error (p, p->pos, "invalid UTF-8 in string");
        return NULL;
      }
      g_string_append_len (out, (const char *) p->text + p->pos, (gssize) n);
      p->pos += n;
    }
  }
}

static int
compare_names (gconstpointer a, gconstpointer b)
{
  return strcmp (a, b);
}

static gssize
object_find (const MoshiJson *object, const char *name)
{
  if (object->index != NULL) {
    gpointer v = g_tree_lookup (object->index, name);
    return v != NULL ? (gssize) GPOINTER_TO_SIZE (v) - 1 : -1;
  }
  for (guint i = 0; i < object->names->len; i++) {
    if (strcmp (g_ptr_array_index (object->names, i), name) == 0)
      return (gssize) i;
  }
  return -1;
}

/* Takes ownership of name and value. */
static void
object_add (MoshiJson *object, char *name, MoshiJson *value)
{
  g_ptr_array_add (object->names, name);
  g_ptr_array_add (object->values, value);
  guint n = object->names->len;
  if (object->index != NULL) {
    g_tree_insert (object->index, name, GSIZE_TO_POINTER ((gsize) n));
  } else if (n >= INDEX_THRESHOLD) {
    /* Keys are borrowed from names, which outlives the index. */
    object->index = g_tree_new (compare_names);
    for (guint i = 0; i < n; i++)
      g_tree_insert (object->index, g_ptr_array_index (object->names, i),
          GSIZE_TO_POINTER ((gsize) i + 1));
  }
}

static MoshiJson *
parse_array (Parser *p, int depth)
{
  g_autoptr (MoshiJson) array = node_new (MOSHI_JSON_ARRAY);

  p->pos++;   /* '[' */
  skip_whitespace (p);
  if (p->pos < p->len && p->text[p->pos] == ']') {
    p->pos++;
    return g_steal_pointer (&array);
  }
  for (;;) {
    skip_whitespace (p);
    if (p->pos < p->len && p->text[p->pos] == ']') {
      parse_error (p, p->pos, "trailing comma in array");
      return NULL;
    }
    MoshiJson *element = parse_value (p, depth + 1);
    if (element == NULL)
      return NULL;
    g_ptr_array_add (array->values, element);
    skip_whitespace (p);
    if (p->pos < p->len && p->text[p->pos] == ',') {
      p->pos++;
    } else if (p->pos < p->len && p->text[p->pos] == ']') {
      p->pos++;
      return g_steal_pointer (&array);
    } else {
      unexpected (p, "',' or ']'");
      return NULL;
    }
  }
}

static MoshiJson *
parse_object (Parser *p, int depth)
{
  g_autoptr (MoshiJson) object = node_new (MOSHI_JSON_OBJECT);

  p->pos++;   /* '{' */
  skip_whitespace (p);
  if (p->pos < p->len && p->text[p->pos] == '}') {
    p->pos++;
    return g_steal_pointer (&object);
  }
  for (;;) {
    skip_whitespace (p);
    if (p->pos < p->len && p->text[p->pos] == '}') {
      parse_error (p, p->pos, "trailing comma in object");
      return NULL;
    }
    if (p->pos >= p->len || p->text[p->pos] != '"') {
      unexpected (p, "a member name string");
      return NULL;
    }
    gsize name_start = p->pos;
    g_autofree char *name = parse_string_text (p);
    if (name == NULL)
      return NULL;
    if (object_find (object, name) >= 0) {
      g_autofree char *escaped = g_strescape (name, NULL);
      parse_error (p, name_start, "duplicate key \"%.80s\"", escaped);
      return NULL;
    }
    skip_whitespace (p);
    if (p->pos >= p->len || p->text[p->pos] != ':') {
      unexpected (p, "':'");
      return NULL;
    }
    p->pos++;
    MoshiJson *value = parse_value (p, depth + 1);
    if (value == NULL)
      return NULL;
    object_add (object, g_steal_pointer (&name), value);
    skip_whitespace (p);
    if (p->pos < p->len && p->text[p->pos] == ',') {
      p->pos++;
    } else if (p->pos < p->len && p->text[p->pos] == '}') {
      p->pos++;
      return g_steal_pointer (&object);
    } else {
      unexpected (p, "',' or '}'");
      return NULL;
    }
  }
}

/* depth counts the arrays and objects enclosing the value. */
static MoshiJson *
parse_value (Parser *p, int depth)
{
  skip_whitespace (p);
  if (p->pos >= p->len) {
    unexpected (p, "a value");
    return NULL;
  }
  guchar c = p->text[p->pos];
  switch (c) {
    case '{':
    case '[':
      if (depth >= MAX_DEPTH) {
        parse_error (p, p->pos, "nesting deeper than %d levels", MAX_DEPTH);
        return NULL;
      }
      return c == '{' ? parse_object (p, depth) : parse_array (p, depth);
    case '"': {
      char *text = parse_string_text (p);
      if (text == NULL)
        return NULL;
      MoshiJson *node = node_new (MOSHI_JSON_STRING);
      node->text = text;
      return node;
    }
    case 't':
      return expect_literal (p, "true") ? node_new (MOSHI_JSON_TRUE) : NULL;
    case 'f':
      return expect_literal (p, "false") ? node_new (MOSHI_JSON_FALSE) : NULL;
    case 'n':
      return expect_literal (p, "null") ? node_new (MOSHI_JSON_NULL) : NULL;
    default:
      if (c == '-' || (c >= '0' && c <= '9'))
        return parse_number (p);
      unexpected (p, "a value");
      return NULL;
  }
}

MoshiJson *
moshi_json_parse (const char *text, gsize len, const char *what, GError **error)
{
  g_return_val_if_fail (text != NULL || len == 0, NULL);
  g_return_val_if_fail (error == NULL || *error == NULL, NULL);

  Parser p = {
    .text = (const guchar *) text,
    .len = len,
    .pos = 0,
    .what = what != NULL ? what : "JSON",
    .error = error,
  };

  skip_whitespace (&p);
  if (p.pos >= p.len) {
    parse_error (&p, p.pos, "empty document");
    return NULL;
  }
  g_autoptr (MoshiJson) root = parse_value (&p, 0);
  if (root == NULL)
    return NULL;
  skip_whitespace (&p);
  if (p.pos < p.len) {
    parse_error (&p, p.pos, "trailing data after the document");
    return NULL;
  }
  return g_steal_pointer (&root);
}

MoshiJsonKind
moshi_json_kind (const MoshiJson *json)
{
  g_return_val_if_fail (json != NULL, MOSHI_JSON_NULL);
  return json->kind;
}

const char *
moshi_json_kind_name (MoshiJsonKind kind)
{
  switch (kind) {
    case MOSHI_JSON_NULL: return "null";
    case MOSHI_JSON_FALSE:
    case MOSHI_JSON_TRUE: return "boolean";
    case MOSHI_JSON_NUMBER: return "number";
    case MOSHI_JSON_STRING: return "string";
    case MOSHI_JSON_ARRAY: return "array";
    case MOSHI_JSON_OBJECT: return "object";
  }
  return "?";
}

gsize
moshi_json_length (const MoshiJson *json)
{
  g_return_val_if_fail (json != NULL, 0);
  return json->values != NULL ? json->values->len : 0;
}

const MoshiJson *
moshi_json_index (const MoshiJson *json, gsize i)
{
  g_return_val_if_fail (json != NULL, NULL);
  if (json->values == NULL || i >= json->values->len)
    return NULL;
  return g_ptr_array_index (json->values, i);
}

const char *
moshi_json_member_name (const MoshiJson *json, gsize i)
{
  g_return_val_if_fail (json != NULL, NULL);
  if (json->names == NULL || i >= json->names->len)
    return NULL;
  return g_ptr_array_index (json->names, i);
}

const MoshiJson *
moshi_json_get (const MoshiJson *json, const char *name)
{
  g_return_val_if_fail (name != NULL, NULL);
  if (json == NULL || json->kind != MOSHI_JSON_OBJECT)
    return NULL;
  gssize i = object_find (json, name);
  return i >= 0 ? g_ptr_array_index (json->values, i) : NULL;
}

const char *
moshi_json_string (const MoshiJson *json)
{
  if (json == NULL || json->kind != MOSHI_JSON_STRING)
    return NULL;
  return json->text;
}

gboolean
moshi_json_int64 (const MoshiJson *json, gint64 *out)
{
  if (json == NULL || json->kind != MOSHI_JSON_NUMBER)
    return FALSE;

  /* The parser has already checked the grammar; only plain integers qualify, since "1e3" or
   * "2.0" as a tensor dimension is more likely a bug in the writer than intent. */
  const char *s = json->text;
  gboolean negative = FALSE;
  if (*s == '-') {
    negative = TRUE;
    s++;
  }
  /* Accumulate as a negative number so that INT64_MIN, whose magnitude has no positive
   * counterpart, is representable. */
  gint64 acc = 0;
  for (; *s != '\0'; s++) {
    if (*s < '0' || *s > '9')
      return FALSE;
    int digit = *s - '0';
    if (acc < (G_MININT64 + digit) / 10)
      return FALSE;
    acc = acc * 10 - digit;
  }
  if (!negative) {
    if (acc == G_MININT64)
      return FALSE;
    acc = -acc;
  }
  if (out != NULL)
    *out = acc;
  return TRUE;
}

gboolean
moshi_json_double (const MoshiJson *json, double *out)
{
  if (json == NULL || json->kind != MOSHI_JSON_NUMBER)
    return FALSE;
  errno = 0;
  double v = g_ascii_strtod (json->text, NULL);
  /* Overflow to infinity loses the value entirely; underflow to (sub)normal tiny numbers is
   * accepted as the nearest representable value. */
  if (errno == ERANGE && isinf (v))
    return FALSE;
  if (out != NULL)
    *out = v;
  return TRUE;
}

gboolean
moshi_json_bool (const MoshiJson *json, gboolean *out)
{
  if (json == NULL || (json->kind != MOSHI_JSON_TRUE && json->kind != MOSHI_JSON_FALSE))
    return FALSE;
  if (out != NULL)
    *out = json->kind == MOSHI_JSON_TRUE;
  return TRUE;
}
