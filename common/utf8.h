/* utf8.h: validation of text that comes from outside.
 *
 * protobuf-c does not check that proto3 strings are UTF-8, and a reply that
 * carries invalid UTF-8 breaks other clients, so every string from a request
 * or an event is checked here before it is stored. */
#ifndef CHOREO_UTF8_H
#define CHOREO_UTF8_H

#include <stdbool.h>
#include <stddef.h>

/* True when s[0..len) is well-formed UTF-8 (no overlongs, no surrogates,
 * nothing above U+10FFFF) and holds no NUL byte. */
bool utf8_valid(const char *s, size_t len);

/* True when s is a usable identifier: 1..max_len bytes of UTF-8 with no
 * whitespace, control characters, or the NATS subject characters '.', '*'
 * and '>' (ids end up as subject tokens). */
bool utf8_valid_token(const char *s, size_t max_len);

#endif
