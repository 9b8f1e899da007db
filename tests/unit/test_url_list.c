/* test_url_list.c: CHOREO_NATS_URL's list of servers, split and checked. */
#include <CUnit/Basic.h>
#include <string.h>

#include "cu_run.h"
#include "url_list.h"

static void test_url_list_splits_a_cluster_list(void)
{
    url_list l;
    char err[160] = "";

    CU_ASSERT_EQUAL_FATAL(
        url_list_parse("nats://nats-0:4222, nats://nats-1:4222 ,nats-2:4222", &l, err, sizeof err), CH_OK);
    CU_ASSERT_EQUAL(l.n, 3);
    CU_ASSERT_STRING_EQUAL(l.ptrs[0], "nats://nats-0:4222");
    CU_ASSERT_STRING_EQUAL(l.ptrs[1], "nats://nats-1:4222");
    CU_ASSERT_STRING_EQUAL(l.ptrs[2], "nats-2:4222");
    CU_ASSERT_EQUAL_FATAL(url_list_parse("nats://127.0.0.1:4222", &l, err, sizeof err), CH_OK);
    CU_ASSERT_EQUAL(l.n, 1);
    CU_ASSERT_EQUAL(url_list_parse("tls://u:p@[::1]:4443,localhost", &l, err, sizeof err), CH_OK);
    CU_ASSERT_EQUAL(l.n, 2);
}

static void test_url_list_names_the_bad_entry(void)
{
    static const struct {
        const char *text, *want;
    } bad[] = {
        {"", "entry 1"},
        {"nats://a:4222,,nats://b:4222", "entry 2"},
        {"nats://a:4222,", "entry 2"},
        {"nats://a:4222,http://b:80", "entry 2 (\"http://b:80\"): scheme"},
        {"nats://a:99999", "port must be 1..65535"},
        {"nats://a:42x", "port"},
        {"nats://:4222", "no host"},
        {"nats://a b:4222", "blank"},
    };
    url_list l;
    char err[160];

    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        CU_ASSERT_EQUAL(url_list_parse(bad[i].text, &l, err, sizeof err), CH_INVALID_ARGUMENT);
        if (!strstr(err, bad[i].want))
            fprintf(stderr, "\"%s\": got \"%s\", want \"%s\"\n", bad[i].text, err, bad[i].want);
        CU_ASSERT_PTR_NOT_NULL(strstr(err, bad[i].want));
    }
}

static void test_url_list_caps_the_count(void)
{
    char text[URL_LIST_MAX * 12 + 16] = "";
    url_list l;
    char err[160];

    for (int i = 0; i < URL_LIST_MAX; i++)
        strcat(text, i ? ",h:4222" : "h:4222");
    CU_ASSERT_EQUAL(url_list_parse(text, &l, err, sizeof err), CH_OK);
    CU_ASSERT_EQUAL(l.n, URL_LIST_MAX);
    strcat(text, ",h:4222");
    CU_ASSERT_EQUAL(url_list_parse(text, &l, err, sizeof err), CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "more than"));
}

int main(void)
{
    static const cu_test tests[] = {
        {"splits a cluster list", test_url_list_splits_a_cluster_list},
        {"names the bad entry", test_url_list_names_the_bad_entry},
        {"caps the count", test_url_list_caps_the_count},
        {NULL, NULL},
    };
    return cu_run("url_list", NULL, NULL, tests);
}
