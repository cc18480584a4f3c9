/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* A strict JSON reader giving json-c objects; see jsonparse.h. Recursive descent: max_depth bounds the
 * recursion. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "jsonparse.h"

/* What an object or array with a flaw keeps in its json-c userdata: the first flaw, in text order. */
struct flaw_record {
	enum jsonparse_flaw kind;
	size_t keylen;
	char key[];
};

struct parser {
	const char *start, *p, *end;
	unsigned depth, max_depth;
	/* Scratch space for decoded keys, strings and number texts, used as a stack: the keys of the open
	 * objects stay while their values are read. Each piece is no longer than its text plus a NUL, and
	 * the pieces live at once come from disjoint parts of the text (a key's quotes pay for its NUL), so
	 * the text's length plus one is always enough; put() checks it anyway. */
	char *buf;
	size_t top, cap;
	struct jsonparse_error *err;
};

static int parse_value(struct parser *ps, struct json_object **out);

static int parse_fail(struct parser *ps, const char *what)
{
	ps->err->what = what;
	ps->err->offset = (size_t)(ps->p - ps->start);
	return -EINVAL;
}

static int put(struct parser *ps, const void *data, size_t n)
{
	if (n > ps->cap - ps->top)
		return parse_fail(ps, "internal error: scratch space exhausted");
	memcpy(ps->buf + ps->top, data, n);
	ps->top += n;
	return 0;
}

static void skip_space(struct parser *ps)
{
	while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
		ps->p++;
}

/* The length of the well-formed UTF-8 sequence of at least two bytes at @s (Unicode 15, table 3-7: no
 * overlong forms, no surrogates, nothing above U+10FFFF), or 0. */
static size_t utf8_sequence(const unsigned char *s, size_t avail)
{
	unsigned char lo = 0x80, hi = 0xbf;
	size_t n, i;

	if (s[0] >= 0xc2 && s[0] <= 0xdf)
		n = 2;
	else if (s[0] >= 0xe0 && s[0] <= 0xef)
		n = 3;
	else if (s[0] >= 0xf0 && s[0] <= 0xf4)
		n = 4;
	else
		return 0;
	/* The second byte's range is narrower after these leads. */
	if (s[0] == 0xe0)
		lo = 0xa0;
	else if (s[0] == 0xed)
		hi = 0x9f;
	else if (s[0] == 0xf0)
		lo = 0x90;
	else if (s[0] == 0xf4)
		hi = 0x8f;
	if (avail < n || s[1] < lo || s[1] > hi)
		return 0;
	for (i = 2; i < n; i++)
		if (s[i] < 0x80 || s[i] > 0xbf)
			return 0;
	return n;
}

/* Four hex digits at @s (at least 4 bytes), or -1. */
static long hex4(const char *s)
{
	long v = 0;
	int i;

	for (i = 0; i < 4; i++) {
		char ch = s[i];

		v <<= 4;
		if (ch >= '0' && ch <= '9')
			v |= ch - '0';
		else if (ch >= 'a' && ch <= 'f')
			v |= ch - 'a' + 10;
		else if (ch >= 'A' && ch <= 'F')
			v |= ch - 'A' + 10;
		else
			return -1;
	}
	return v;
}

/* The escape at ps->p (its backslash), decoded onto the stack; *nul set when it was \u0000. */
static int parse_escape(struct parser *ps, bool *nul)
{
	static const char plain[] = "\"\\/bfnrt", decoded[] = "\"\\/\b\f\n\r\t";
	const char *e;
	unsigned char u[4];
	long cp, lo;
	size_t n;

	if (ps->end - ps->p < 2)
		return parse_fail(ps, "unterminated string");
	e = ps->p[1] ? strchr(plain, ps->p[1]) : NULL;
	if (e) {
		ps->p += 2;
		return put(ps, &decoded[e - plain], 1);
	}
	if (ps->p[1] != 'u')
		return parse_fail(ps, "unknown escape in a string");
	if (ps->end - ps->p < 6 || (cp = hex4(ps->p + 2)) < 0)
		return parse_fail(ps, "\\u not followed by four hex digits");
	if (cp >= 0xdc00 && cp <= 0xdfff)
		return parse_fail(ps, "\\u escape of a lone low surrogate");
	if (cp >= 0xd800 && cp <= 0xdbff) {
		if (ps->end - ps->p < 12 || ps->p[6] != '\\' || ps->p[7] != 'u' || (lo = hex4(ps->p + 8)) < 0xdc00 ||
		    lo > 0xdfff)
			return parse_fail(ps, "\\u escape of a lone high surrogate");
		cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
		ps->p += 6;
	}
	ps->p += 6;
	if (cp < 0x80) {
		u[0] = (unsigned char)cp;
		n = 1;
	} else if (cp < 0x800) {
		u[0] = (unsigned char)(0xc0 | cp >> 6);
		u[1] = (unsigned char)(0x80 | (cp & 0x3f));
		n = 2;
	} else if (cp < 0x10000) {
		u[0] = (unsigned char)(0xe0 | cp >> 12);
		u[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3f));
		u[2] = (unsigned char)(0x80 | (cp & 0x3f));
		n = 3;
	} else {
		u[0] = (unsigned char)(0xf0 | cp >> 18);
		u[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3f));
		u[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3f));
		u[3] = (unsigned char)(0x80 | (cp & 0x3f));
		n = 4;
	}
	if (cp == 0)
		*nul = true;
	return put(ps, u, n);
}

/* The string at ps->p (its opening quote), decoded onto the stack from ps->top on: *len bytes, *nul when
 * one of them is a NUL. */
static int parse_string(struct parser *ps, size_t *len, bool *nul)
{
	size_t start = ps->top;
	int r = 0;

	*nul = false;
	ps->p++;
	while (r == 0) {
		const char *run = ps->p;
		unsigned char ch;
		size_t n;

		/* Plain ASCII goes in runs. */
		while (ps->p < ps->end && (unsigned char)*ps->p >= 0x20 && (unsigned char)*ps->p < 0x80 &&
		       *ps->p != '"' && *ps->p != '\\')
			ps->p++;
		if (ps->p > run && (r = put(ps, run, (size_t)(ps->p - run))) < 0)
			break;
		if (ps->p == ps->end)
			return parse_fail(ps, "unterminated string");
		ch = (unsigned char)*ps->p;
		if (ch == '"') {
			ps->p++;
			break;
		}
		if (ch == '\\')
			r = parse_escape(ps, nul);
		else if (ch < 0x20)
			r = parse_fail(ps, "control character in a string");
		else if (!(n = utf8_sequence((const unsigned char *)ps->p, (size_t)(ps->end - ps->p))))
			r = parse_fail(ps, "invalid UTF-8");
		else {
			r = put(ps, ps->p, n);
			ps->p += n;
		}
	}
	*len = ps->top - start;
	return r;
}

static bool is_digit(struct parser *ps)
{
	return ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9';
}

static int parse_number(struct parser *ps, struct json_object **out)
{
	const char *text = ps->p;
	bool neg = false, integral = true, overflow = false;
	uint64_t mag = 0;
	size_t mark = ps->top;
	int r;

	if (*ps->p == '-') {
		neg = true;
		ps->p++;
	}
	if (!is_digit(ps))
		return parse_fail(ps, "a number without digits");
	if (*ps->p == '0') {
		ps->p++;
		if (is_digit(ps))
			return parse_fail(ps, "a number with a leading zero");
	}
	for (; is_digit(ps); ps->p++) {
		unsigned d = (unsigned)(*ps->p - '0');

		if (mag > (UINT64_MAX - d) / 10)
			overflow = true;
		else
			mag = mag * 10 + d;
	}
	if (ps->p < ps->end && *ps->p == '.') {
		integral = false;
		ps->p++;
		if (!is_digit(ps))
			return parse_fail(ps, "a fraction without digits");
		while (is_digit(ps))
			ps->p++;
	}
	if (ps->p < ps->end && (*ps->p == 'e' || *ps->p == 'E')) {
		integral = false;
		ps->p++;
		if (ps->p < ps->end && (*ps->p == '+' || *ps->p == '-'))
			ps->p++;
		if (!is_digit(ps))
			return parse_fail(ps, "an exponent without digits");
		while (is_digit(ps))
			ps->p++;
	}
	if (integral && !overflow && mag <= (uint64_t)INT64_MAX) {
		*out = json_object_new_int64(neg ? -(int64_t)mag : (int64_t)mag);
	} else if (integral && !overflow && neg && mag == (uint64_t)INT64_MAX + 1) {
		*out = json_object_new_int64(INT64_MIN);
	} else {
		/* Kept with its text: jsonparse_number reads the kind from it, and it prints as received. */
		if ((r = put(ps, text, (size_t)(ps->p - text))) < 0 || (r = put(ps, "", 1)) < 0)
			return r;
		*out = json_object_new_double_s(strtod(ps->buf + mark, NULL), ps->buf + mark);
		ps->top = mark;
	}
	return *out ? 0 : -ENOMEM;
}

static void flaw_record_free(struct json_object *o, void *userdata)
{
	free(userdata);
}

/* Record a flaw in @o (an object or array) unless it has one already: the first one counts. */
static int note_flaw(struct json_object *o, enum jsonparse_flaw kind, const char *key, size_t keylen)
{
	struct flaw_record *rec;

	if (json_object_get_userdata(o))
		return 0;
	rec = malloc(sizeof(*rec) + keylen);
	if (!rec)
		return -ENOMEM;
	rec->kind = kind;
	rec->keylen = keylen;
	if (keylen)
		memcpy(rec->key, key, keylen);
	json_object_set_userdata(o, rec, flaw_record_free);
	return 0;
}

static int parse_object(struct parser *ps, struct json_object **out)
{
	struct json_object *obj = json_object_new_object(), *val = NULL;
	int r = 0;

	if (!obj)
		return -ENOMEM;
	ps->p++;
	skip_space(ps);
	if (ps->p < ps->end && *ps->p == '}')
		ps->p++;
	else
		for (;;) {
			size_t mark = ps->top, keylen;
			enum jsonparse_flaw kind = JSONPARSE_FLAW_NONE;
			const char *key;
			bool nul;

			skip_space(ps);
			if (ps->p == ps->end || *ps->p != '"') {
				r = parse_fail(ps, "expected a key");
				break;
			}
			if ((r = parse_string(ps, &keylen, &nul)) < 0 || (r = put(ps, "", 1)) < 0)
				break;
			key = ps->buf + mark;
			skip_space(ps);
			if (ps->p == ps->end || *ps->p != ':') {
				r = parse_fail(ps, "expected ':' after a key");
				break;
			}
			ps->p++;
			skip_space(ps);
			if ((r = parse_value(ps, &val)) < 0)
				break;
			if (nul)
				kind = JSONPARSE_FLAW_KEY_NUL;
			else if (json_object_object_get_ex(obj, key, NULL))
				kind = JSONPARSE_FLAW_DUPLICATE;
			else if (jsonparse_flaw(val, NULL, NULL) != JSONPARSE_FLAW_NONE)
				kind = JSONPARSE_FLAW_WITHIN;
			if (kind != JSONPARSE_FLAW_NONE && (r = note_flaw(obj, kind, key, keylen)) < 0)
				break;
			/* A duplicate keeps the first value; a key with a NUL cannot be a json-c key. */
			if (kind == JSONPARSE_FLAW_DUPLICATE || kind == JSONPARSE_FLAW_KEY_NUL)
				json_object_put(val);
			else if (json_object_object_add_ex(obj, key, val, JSON_C_OBJECT_ADD_KEY_IS_NEW) < 0) {
				r = -ENOMEM;
				break;
			}
			val = NULL;
			ps->top = mark;
			skip_space(ps);
			if (ps->p < ps->end && *ps->p == ',') {
				ps->p++;
				continue;
			}
			if (ps->p < ps->end && *ps->p == '}') {
				ps->p++;
				break;
			}
			r = parse_fail(ps, "expected ',' or '}' in an object");
			break;
		}
	if (r == 0) {
		*out = obj;
		obj = NULL;
	}
	json_object_put(val);
	json_object_put(obj);
	return r;
}

static int parse_array(struct parser *ps, struct json_object **out)
{
	struct json_object *arr = json_object_new_array(), *val = NULL;
	int r = 0;

	if (!arr)
		return -ENOMEM;
	ps->p++;
	skip_space(ps);
	if (ps->p < ps->end && *ps->p == ']')
		ps->p++;
	else
		for (;;) {
			skip_space(ps);
			if ((r = parse_value(ps, &val)) < 0)
				break;
			if (jsonparse_flaw(val, NULL, NULL) != JSONPARSE_FLAW_NONE &&
			    (r = note_flaw(arr, JSONPARSE_FLAW_WITHIN, NULL, 0)) < 0)
				break;
			if (json_object_array_add(arr, val) < 0) {
				r = -ENOMEM;
				break;
			}
			val = NULL;
			skip_space(ps);
			if (ps->p < ps->end && *ps->p == ',') {
				ps->p++;
				continue;
			}
			if (ps->p < ps->end && *ps->p == ']') {
				ps->p++;
				break;
			}
			r = parse_fail(ps, "expected ',' or ']' in an array");
			break;
		}
	if (r == 0) {
		*out = arr;
		arr = NULL;
	}
	json_object_put(val);
	json_object_put(arr);
	return r;
}

static int parse_literal(struct parser *ps, const char *word, struct json_object **out,
			 struct json_object *(*make)(void))
{
	size_t n = strlen(word);

	if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n))
		return parse_fail(ps, "unexpected byte");
	ps->p += n;
	*out = make ? make() : NULL;
	return make && !*out ? -ENOMEM : 0;
}

static struct json_object *make_true(void)
{
	return json_object_new_boolean(1);
}

static struct json_object *make_false(void)
{
	return json_object_new_boolean(0);
}

/* The value at ps->p into *out (left NULL on failure). */
static int parse_value(struct parser *ps, struct json_object **out)
{
	size_t len, mark = ps->top;
	bool nul;
	int r;

	*out = NULL;
	if (ps->p == ps->end)
		return parse_fail(ps, "unexpected end");
	switch (*ps->p) {
	case '{':
	case '[':
		if (ps->depth == ps->max_depth)
			return parse_fail(ps, "nested too deeply");
		ps->depth++;
		r = *ps->p == '{' ? parse_object(ps, out) : parse_array(ps, out);
		ps->depth--;
		return r;
	case '"':
		r = parse_string(ps, &len, &nul);
		if (r == 0 && !(*out = json_object_new_string_len(ps->buf + mark, (int)len)))
			r = -ENOMEM;
		ps->top = mark;
		return r;
	case 't':
		return parse_literal(ps, "true", out, make_true);
	case 'f':
		return parse_literal(ps, "false", out, make_false);
	case 'n':
		return parse_literal(ps, "null", out, NULL);
	default:
		if (*ps->p == '-' || (*ps->p >= '0' && *ps->p <= '9'))
			return parse_number(ps, out);
		return parse_fail(ps, "unexpected byte");
	}
}

int jsonparse_text(const char *text, size_t len, unsigned max_depth, struct json_object **out,
		   struct jsonparse_error *err)
{
	struct parser ps = { .start = text, .p = text, .end = text + len, .max_depth = max_depth, .err = err };
	struct json_object *v = NULL;
	int r;

	*out = NULL;
	/* json-c sizes strings with an int. */
	if (len >= INT32_MAX) {
		err->what = "too long";
		err->offset = 0;
		return -EINVAL;
	}
	ps.cap = len + 1;
	ps.buf = malloc(ps.cap);
	if (!ps.buf)
		return -ENOMEM;
	skip_space(&ps);
	r = parse_value(&ps, &v);
	skip_space(&ps);
	if (r == 0 && ps.p != ps.end)
		r = parse_fail(&ps, "bytes after the value");
	if (r == -ENOMEM) {
		err->what = "out of memory";
		err->offset = (size_t)(ps.p - text);
	}
	if (r == 0) {
		*out = v;
		v = NULL;
	}
	json_object_put(v);
	free(ps.buf);
	return r;
}

enum jsonparse_number jsonparse_number(struct json_object *v)
{
	const char *text;

	switch (json_object_get_type(v)) {
	case json_type_int:
		return JSONPARSE_INTEGER;
	case json_type_double:
		text = json_object_get_string(v);
		return text && strpbrk(text, ".eE") ? JSONPARSE_FRACTION : JSONPARSE_OUT_OF_RANGE;
	default:
		return JSONPARSE_NOT_NUMBER;
	}
}

enum jsonparse_flaw jsonparse_flaw(struct json_object *v, const char **key, size_t *keylen)
{
	const struct flaw_record *rec = NULL;
	enum jsonparse_flaw kind = JSONPARSE_FLAW_NONE;

	switch (json_object_get_type(v)) {
	case json_type_string:
		if (memchr(json_object_get_string(v), '\0', (size_t)json_object_get_string_len(v)))
			kind = JSONPARSE_FLAW_WITHIN;
		break;
	case json_type_object:
	case json_type_array:
		/* (A double's userdata is its text: only containers carry records.) */
		rec = json_object_get_userdata(v);
		if (rec)
			kind = rec->kind;
		break;
	default:
		break;
	}
	/* Array records have no key (keylen 0); an object's may be the empty key. */
	if (key)
		*key = rec && json_object_is_type(v, json_type_object) ? rec->key : NULL;
	if (keylen)
		*keylen = rec ? rec->keylen : 0;
	return kind;
}
