/* strmap.c: a string-keyed open-addressing table of pointers. */
#include "strmap.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* FNV-1a, then a 64-bit finaliser so that nearby keys spread over the table. */
static uint64_t strmap_hash(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001b3ULL;
    }
    h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ULL;
    h = (h ^ (h >> 27)) * 0x94d049bb133111ebULL;
    return h ^ (h >> 31);
}

void *strmap_get(const strmap *m, const char *key)
{
    if (m->cap == 0)
        return NULL;
    for (size_t i = strmap_hash(key) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        if (!m->slots[i].key)
            return NULL;
        if (strcmp(m->slots[i].key, key) == 0)
            return m->slots[i].val;
    }
}

void strmap_put(strmap *m, const char *key, void *val)
{
    size_t i = strmap_hash(key) & (m->cap - 1);
    while (m->slots[i].key)
        i = (i + 1) & (m->cap - 1);
    m->slots[i].key = key;
    m->slots[i].val = val;
    m->used++;
}

/* The hole is closed by backward-shift deletion: each later entry of the
 * probe run whose home slot does not lie in (hole, its slot] moves into the
 * hole, so every lookup that passed the hole before still finds its entry. */
void *strmap_remove(strmap *m, const char *key)
{
    size_t mask = m->cap - 1, i;
    void *val;

    if (m->cap == 0)
        return NULL;
    for (i = strmap_hash(key) & mask;; i = (i + 1) & mask) {
        if (!m->slots[i].key)
            return NULL;
        if (strcmp(m->slots[i].key, key) == 0)
            break;
    }
    val = m->slots[i].val;
    m->slots[i] = (strmap_slot){0};
    for (size_t j = (i + 1) & mask; m->slots[j].key; j = (j + 1) & mask) {
        size_t home = strmap_hash(m->slots[j].key) & mask;
        if (((i - home) & mask) < ((j - home) & mask)) { /* the hole lies in [home, j) */
            m->slots[i] = m->slots[j];
            m->slots[j] = (strmap_slot){0};
            i = j;
        }
    }
    m->used--;
    return val;
}

ch_status strmap_reserve(strmap *m)
{
    if ((m->used + 1) * 4 <= m->cap * 3)
        return CH_OK;
    strmap bigger = {0};
    bigger.cap = m->cap ? m->cap * 2 : 64;
    bigger.slots = calloc(bigger.cap, sizeof *bigger.slots);
    if (!bigger.slots)
        return CH_NO_MEMORY;
    for (size_t i = 0; i < m->cap; i++)
        if (m->slots[i].key)
            strmap_put(&bigger, m->slots[i].key, m->slots[i].val);
    free(m->slots);
    *m = bigger;
    return CH_OK;
}

void strmap_free(strmap *m)
{
    free(m->slots);
    *m = (strmap){0};
}

char *strmap_pair_key(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    char *k = malloc(la + lb + 2);
    if (!k)
        return NULL;
    memcpy(k, a, la);
    k[la] = '\x1f';
    memcpy(k + la + 1, b, lb + 1);
    return k;
}
