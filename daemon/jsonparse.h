/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * A strict JSON reader for messages from untrusted peers (the control socket's Varlink calls), giving
 * json-c objects. json-c's own tokener lets through what a peer must not be able to send: overlong UTF-8,
 * encoded surrogates, code points above U+10FFFF, lone \u surrogates; it keeps the last of duplicate keys,
 * cuts strings at an escaped NUL and turns integers beyond int64 into something else. Here:
 *
 * - the text is one JSON value (RFC 8259) with optional whitespace around it, and valid UTF-8 throughout
 *   (Unicode's well-formed sequences: no overlong forms, no surrogates, nothing above U+10FFFF); a \u
 *   escape of a lone surrogate, a control character in a string, a byte order mark, anything else: refused;
 * - arrays and objects nest at most max_depth deep;
 * - an integer within int64 is a json_type_int, exact. Any other number is a json_type_double that
 *   remembers its text: jsonparse_number tells an integer out of range from a fraction or an exponent;
 * - what the text says that json-c objects cannot hold is reported, not lost: a duplicate key (the first
 *   value is kept), a key holding a NUL (the member is left out: json-c keys are C strings). A string may
 *   hold NUL bytes (json_object_get_string_len counts them); that is reported too. Each object and array
 *   records the first such flaw within it (jsonparse_flaw), so a caller can name the member at fault.
 *
 * The flaw records live in the objects' json-c userdata: do not set userdata on parsed objects.
 */
#ifndef EVFDD_JSONPARSE_H
#define EVFDD_JSONPARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <json-c/json.h>

/* Why a text was refused, for a log line: a fixed phrase, and the byte offset where it was noticed. */
struct jsonparse_error {
	const char *what;
	size_t offset;
};

/*
 * jsonparse_text - parse @len bytes at @text as one JSON text
 * @max_depth: how deep arrays and objects may nest (1: a flat object or array; 0: scalars only)
 * @out: the value (json-c's NULL for the literal null); the caller puts it
 * @err: on -EINVAL, what is wrong and where
 *
 * @text need not be NUL-terminated and may hold NUL bytes (refused, as every byte outside the grammar is).
 * Returns 0, -EINVAL (not a JSON text by the rules above; *out is NULL) or -ENOMEM.
 */
int jsonparse_text(const char *text, size_t len, unsigned max_depth, struct json_object **out,
		   struct jsonparse_error *err);

enum jsonparse_number {
	JSONPARSE_NOT_NUMBER,
	JSONPARSE_INTEGER,	/* json_object_get_int64 gives it exactly */
	JSONPARSE_OUT_OF_RANGE,	/* an integer outside int64 */
	JSONPARSE_FRACTION,	/* has a fraction or an exponent (1.0 and 1e2 included) */
};

/* What kind of number @v (a value made by jsonparse_text) is. */
enum jsonparse_number jsonparse_number(struct json_object *v);

enum jsonparse_flaw {
	JSONPARSE_FLAW_NONE,
	JSONPARSE_FLAW_DUPLICATE,	/* the key came earlier in the same object; the first value was kept */
	JSONPARSE_FLAW_KEY_NUL,		/* the key holds a NUL; the member was left out */
	JSONPARSE_FLAW_WITHIN,		/* the value is a string holding a NUL, or a container with a flaw */
};

/*
 * jsonparse_flaw - the first flaw of @v, a value made by jsonparse_text, in the order of the text
 * @key, @keylen: for an object, the key of the member at fault, as received (it may hold NUL bytes; not
 *                NUL-terminated); NULL and 0 otherwise. Valid while @v is.
 *
 * For a string: JSONPARSE_FLAW_WITHIN when it holds a NUL. For an object or array: the first member or
 * element that is flawed itself or holds a flaw. JSONPARSE_FLAW_NONE when there is none (and for NULL).
 */
enum jsonparse_flaw jsonparse_flaw(struct json_object *v, const char **key, size_t *keylen);

#endif
