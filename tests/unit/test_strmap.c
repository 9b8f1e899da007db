/* test_strmap.c: the string-keyed table the cores index their records with. */
#include <CUnit/Basic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cu_run.h"
#include "strmap.h"

#define NKEYS 2000

static char (*make_keys(void))[16]
{
    char(*keys)[16] = calloc(NKEYS, sizeof *keys);
    CU_ASSERT_PTR_NOT_NULL_FATAL(keys);
    for (int i = 0; i < NKEYS; i++)
        snprintf(keys[i], sizeof keys[i], "ord-%05d", i);
    return keys;
}

static void test_strmap_get_put_and_growth(void)
{
    strmap m = {0};
    char(*keys)[16] = make_keys();
    char probe[16];

    CU_ASSERT_PTR_NULL(strmap_get(&m, "none")); /* empty, never reserved */
    CU_ASSERT_PTR_NULL(strmap_remove(&m, "none"));
    for (int i = 0; i < NKEYS; i++) {
        CU_ASSERT_EQUAL_FATAL(strmap_reserve(&m), CH_OK);
        strmap_put(&m, keys[i], keys[i]);
    }
    CU_ASSERT_EQUAL(m.used, NKEYS);
    CU_ASSERT(m.cap >= NKEYS * 4 / 3); /* grew, keeping the load at most 3/4 */
    for (int i = 0; i < NKEYS; i++) {
        snprintf(probe, sizeof probe, "ord-%05d", i); /* a different pointer, same text */
        CU_ASSERT_PTR_EQUAL(strmap_get(&m, probe), keys[i]);
    }
    CU_ASSERT_PTR_NULL(strmap_get(&m, "ord-99999"));
    strmap_free(&m);
    CU_ASSERT_PTR_NULL(m.slots);
    CU_ASSERT_EQUAL(m.cap, 0);
    CU_ASSERT_EQUAL(m.used, 0);
    free(keys);
}

/* Removal in any order keeps every other entry reachable: with many keys in
 * a table at its load limit, probe runs form and cross the wrap-around. */
static void test_strmap_remove_keeps_the_rest_reachable(void)
{
    strmap m = {0};
    char(*keys)[16] = make_keys();
    char *gone = calloc(NKEYS, 1);
    unsigned seed = 7;

    CU_ASSERT_PTR_NOT_NULL_FATAL(gone);
    for (int i = 0; i < NKEYS; i++) {
        CU_ASSERT_EQUAL_FATAL(strmap_reserve(&m), CH_OK);
        strmap_put(&m, keys[i], &keys[i]);
    }
    for (int round = 0; round < NKEYS / 2; round++) {
        int i = (int)(rand_r(&seed) % NKEYS);
        void *v = strmap_remove(&m, keys[i]);
        CU_ASSERT_PTR_EQUAL(v, gone[i] ? NULL : (void *)&keys[i]);
        gone[i] = 1;
    }
    size_t left = 0;
    for (int i = 0; i < NKEYS; i++) {
        CU_ASSERT_PTR_EQUAL(strmap_get(&m, keys[i]), gone[i] ? NULL : (void *)&keys[i]);
        left += !gone[i];
    }
    CU_ASSERT_EQUAL(m.used, left);
    /* what was removed can be put back */
    for (int i = 0; i < NKEYS; i++) {
        if (gone[i]) {
            CU_ASSERT_EQUAL_FATAL(strmap_reserve(&m), CH_OK);
            strmap_put(&m, keys[i], &keys[i]);
        }
    }
    for (int i = 0; i < NKEYS; i++)
        CU_ASSERT_PTR_EQUAL(strmap_get(&m, keys[i]), &keys[i]);
    CU_ASSERT_EQUAL(m.used, NKEYS);
    strmap_free(&m);
    free(gone);
    free(keys);
}

static void test_strmap_pair_key_keeps_pairs_apart(void)
{
    char *a = strmap_pair_key("a:b", "c"), *b = strmap_pair_key("a", "b:c"), *e = strmap_pair_key("", "");
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    CU_ASSERT_STRING_EQUAL(a, "a:b\x1f"
                              "c");
    CU_ASSERT_STRING_EQUAL(b, "a\x1f"
                              "b:c");
    CU_ASSERT_STRING_NOT_EQUAL(a, b);
    CU_ASSERT_STRING_EQUAL(e, "\x1f");
    free(a);
    free(b);
    free(e);
}

int main(void)
{
    static const cu_test tests[] = {
        {"get, put and growth", test_strmap_get_put_and_growth},
        {"remove keeps the rest reachable", test_strmap_remove_keeps_the_rest_reachable},
        {"pair key keeps pairs apart", test_strmap_pair_key_keeps_pairs_apart},
        {NULL, NULL},
    };
    return cu_run("strmap", NULL, NULL, tests);
}
