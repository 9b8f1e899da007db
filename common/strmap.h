/* strmap.h: a string-keyed table of pointers (open addressing, linear
 * probing, backward-shift deletion), for the pure cores' indexes.
 *
 * The table stores the key pointer, not a copy: the key must live as long
 * as its entry (usually it is a field of the record the value points to).
 * Room is made before changing anything (strmap_reserve), so that a put
 * cannot fail half-way through an update of the caller's state.
 *
 * Ownership: the caller owns the strmap struct (zero it to start) and
 * everything the keys and values point to; strmap_free frees the slots only.
 * Threads: not thread-safe, like the cores that use it. */
#ifndef CHOREO_STRMAP_H
#define CHOREO_STRMAP_H

#include <stddef.h>

#include "status.h"

typedef struct strmap_slot {
    const char *key; /* NULL: empty */
    void *val;
} strmap_slot;

typedef struct strmap {
    strmap_slot *slots;
    size_t cap; /* a power of two, or 0 before the first reserve */
    size_t used;
} strmap;

/* The value stored under key, or NULL. */
void *strmap_get(const strmap *m, const char *key);

/* Makes room for one more entry, so the next strmap_put cannot fail.
 * CH_NO_MEMORY when the table cannot grow (it is unchanged then). */
ch_status strmap_reserve(strmap *m);

/* Stores val under key, which must not be in the table yet; room must have
 * been reserved. */
void strmap_put(strmap *m, const char *key, void *val);

/* Takes key's entry out and returns its value (NULL when absent). */
void *strmap_remove(strmap *m, const char *key);

/* Frees the slots (not what keys and values point to) and empties m. */
void strmap_free(strmap *m);

/* The key of a pair of strings that hold no control characters, "a\x1fb"
 * (the separator keeps "a:b"+"c" apart from "a"+"b:c"), malloc'd: the
 * caller frees it. NULL when out of memory. */
char *strmap_pair_key(const char *a, const char *b);

#endif
