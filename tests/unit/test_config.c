/* test_config.c: typed configuration from a variable source: defaults, each
 * type, range and format errors that name the variable, and the fields every
 * service reads. Values come from a table through config_source_fn, never
 * from the process environment. */
#include <CUnit/Basic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "cu_run.h"

typedef struct test_cfg {
    char name[8];
    char opt[8];
    int n;
    bool flag;
    log_level level;
} test_cfg;

#define TC(member) offsetof(test_cfg, member)

static const config_field test_fields[] = {
    {"TEST_NAME", CONFIG_STRING, TC(name), sizeof(((test_cfg *)0)->name), "abc", 1, 0, "a required string"},
    {"TEST_OPT", CONFIG_STRING, TC(opt), sizeof(((test_cfg *)0)->opt), "", 0, 0, "an optional string"},
    {"TEST_N", CONFIG_INT, TC(n), 0, "5", -10, 100, "a number"},
    {"TEST_FLAG", CONFIG_BOOL, TC(flag), 0, "false", 0, 0, "a switch"},
    {"TEST_LEVEL", CONFIG_LOG_LEVEL, TC(level), 0, "info", 0, 0, "a log level"},
};
#define N_TEST_FIELDS (sizeof test_fields / sizeof test_fields[0])

/* A table of name/value pairs ending with a NULL name. */
typedef struct kv {
    const char *name;
    const char *value;
} kv;

static const char *table_source(const char *name, void *arg)
{
    for (const kv *p = arg; p && p->name; p++)
        if (strcmp(p->name, name) == 0)
            return p->value;
    return NULL;
}

/* Loads test_fields from one variable set to value. */
static ch_status load_one(test_cfg *cfg, const char *name, const char *value, char *err, size_t errlen)
{
    const kv table[] = {{name, value}, {NULL, NULL}};
    memset(cfg, 0x5a, sizeof *cfg);
    err[0] = '\0';
    return config_load(cfg, test_fields, N_TEST_FIELDS, table_source, (void *)table, err, errlen);
}

/* Asserts that setting name=value fails and that the message starts with the
 * variable's name and quotes the value. */
static void expect_error(const char *name, const char *value)
{
    test_cfg cfg;
    char err[256], prefix[64];

    CU_ASSERT_EQUAL(load_one(&cfg, name, value, err, sizeof err), CH_INVALID_ARGUMENT);
    snprintf(prefix, sizeof prefix, "%s: ", name);
    if (strncmp(err, prefix, strlen(prefix)) != 0)
        fprintf(stderr, "\n  %s=\"%s\": message \"%s\"", name, value, err);
    CU_ASSERT_EQUAL(strncmp(err, prefix, strlen(prefix)), 0);
    if (strlen(value) < 60 && value[0] != '\0')
        CU_ASSERT_PTR_NOT_NULL(strstr(err, value));
}

static void test_config_defaults(void)
{
    test_cfg cfg;
    char err[256];
    const kv empty[] = {{NULL, NULL}};

    memset(&cfg, 0x5a, sizeof cfg);
    CU_ASSERT_EQUAL_FATAL(
        config_load(&cfg, test_fields, N_TEST_FIELDS, table_source, (void *)empty, err, sizeof err), CH_OK);
    CU_ASSERT_STRING_EQUAL(cfg.name, "abc");
    CU_ASSERT_STRING_EQUAL(cfg.opt, "");
    CU_ASSERT_EQUAL(cfg.n, 5);
    CU_ASSERT_FALSE(cfg.flag);
    CU_ASSERT_EQUAL(cfg.level, LOG_INFO);
}

static void test_config_each_type(void)
{
    test_cfg cfg;
    char err[256];
    const kv table[] = {{"TEST_NAME", "xyz1234"}, {"TEST_OPT", "o p"},     {"TEST_N", "-10"},
                        {"TEST_FLAG", "yes"},     {"TEST_LEVEL", "DEBUG"}, {NULL, NULL}};

    memset(&cfg, 0, sizeof cfg);
    CU_ASSERT_EQUAL_FATAL(
        config_load(&cfg, test_fields, N_TEST_FIELDS, table_source, (void *)table, err, sizeof err), CH_OK);
    CU_ASSERT_STRING_EQUAL(cfg.name, "xyz1234"); /* cap - 1 bytes fit */
    CU_ASSERT_STRING_EQUAL(cfg.opt, "o p");
    CU_ASSERT_EQUAL(cfg.n, -10);
    CU_ASSERT_TRUE(cfg.flag);
    CU_ASSERT_EQUAL(cfg.level, LOG_DEBUG);

    CU_ASSERT_EQUAL(load_one(&cfg, "TEST_N", "100", err, sizeof err), CH_OK);
    CU_ASSERT_EQUAL(cfg.n, 100);
    CU_ASSERT_EQUAL(load_one(&cfg, "TEST_N", "0", err, sizeof err), CH_OK);
    CU_ASSERT_EQUAL(cfg.n, 0);
    CU_ASSERT_EQUAL(load_one(&cfg, "TEST_NAME", "caf\xc3\xa9", err, sizeof err), CH_OK);
    CU_ASSERT_STRING_EQUAL(cfg.name, "caf\xc3\xa9");
    CU_ASSERT_EQUAL(load_one(&cfg, "TEST_LEVEL", "error", err, sizeof err), CH_OK);
    CU_ASSERT_EQUAL(cfg.level, LOG_ERROR);
    CU_ASSERT_EQUAL(load_one(&cfg, "TEST_LEVEL", "warn", err, sizeof err), CH_OK);
    CU_ASSERT_EQUAL(cfg.level, LOG_WARN);
}

static void test_config_bool_spellings(void)
{
    static const char *const yes[] = {"1", "true", "TRUE", "yes", "Yes", "on", "ON"};
    static const char *const no[] = {"0", "false", "False", "no", "NO", "off", "Off"};
    test_cfg cfg;
    char err[256];

    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        CU_ASSERT_EQUAL(load_one(&cfg, "TEST_FLAG", yes[i], err, sizeof err), CH_OK);
        CU_ASSERT_TRUE(cfg.flag);
    }
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++) {
        CU_ASSERT_EQUAL(load_one(&cfg, "TEST_FLAG", no[i], err, sizeof err), CH_OK);
        CU_ASSERT_FALSE(cfg.flag);
    }
}

static void test_config_int_out_of_range(void)
{
    test_cfg cfg;
    char err[256];

    expect_error("TEST_N", "101");
    expect_error("TEST_N", "-11");
    expect_error("TEST_N", "99999999999999999999999");
    expect_error("TEST_N", "-99999999999999999999999");
    expect_error("TEST_N", "4294967301"); /* would wrap to 5 as an int */
    CU_ASSERT_EQUAL(load_one(&cfg, "TEST_N", "1000", err, sizeof err), CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "-10..100")); /* the message gives the range */
}

static void test_config_int_garbage(void)
{
    expect_error("TEST_N", "abc");
    expect_error("TEST_N", "");
    expect_error("TEST_N", "5x");
    expect_error("TEST_N", "1.5");
    expect_error("TEST_N", "0x10");
    expect_error("TEST_N", "5 ");
    expect_error("TEST_N", " 5");
    expect_error("TEST_N", "-");
}

static void test_config_string_too_long_or_invalid(void)
{
    expect_error("TEST_NAME", "12345678"); /* cap is 8: at most 7 bytes */
    expect_error("TEST_OPT", "123456789012");
    expect_error("TEST_NAME", "bad\xc3");
    expect_error("TEST_NAME", "\xed\xa0\x80");

    test_cfg cfg;
    char err[256];
    char long_value[4096];
    memset(long_value, 'L', sizeof long_value - 1);
    long_value[sizeof long_value - 1] = '\0';
    CU_ASSERT_EQUAL(load_one(&cfg, "TEST_NAME", long_value, err, sizeof err), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(strncmp(err, "TEST_NAME: ", 11), 0);
    CU_ASSERT(strlen(err) < 200); /* the value is quoted shortened */
}

static void test_config_empty_required_string(void)
{
    test_cfg cfg;
    char err[256];

    expect_error("TEST_NAME", "");
    CU_ASSERT_EQUAL(load_one(&cfg, "TEST_OPT", "", err, sizeof err), CH_OK);
    CU_ASSERT_STRING_EQUAL(cfg.opt, "");

    /* A required string with no default and no value. */
    const config_field f[] = {
        {"TEST_REQ", CONFIG_STRING, TC(name), sizeof cfg.name, NULL, 1, 0, "required, no default"}};
    const kv empty[] = {{NULL, NULL}};
    CU_ASSERT_EQUAL(config_load(&cfg, f, 1, table_source, (void *)empty, err, sizeof err),
                    CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(strncmp(err, "TEST_REQ: ", 10), 0);
}

static void test_config_bad_bool(void)
{
    expect_error("TEST_FLAG", "maybe");
    expect_error("TEST_FLAG", "2");
    expect_error("TEST_FLAG", "");
    expect_error("TEST_FLAG", "truee");
}

static void test_config_bad_log_level(void)
{
    expect_error("TEST_LEVEL", "loud");
    expect_error("TEST_LEVEL", "");
    expect_error("TEST_LEVEL", "1");
}

static void test_config_first_error_is_reported(void)
{
    test_cfg cfg;
    char err[256];
    const kv table[] = {{"TEST_N", "x"}, {"TEST_LEVEL", "loud"}, {NULL, NULL}};

    CU_ASSERT_EQUAL(
        config_load(&cfg, test_fields, N_TEST_FIELDS, table_source, (void *)table, err, sizeof err),
        CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(strncmp(err, "TEST_N: ", 8), 0);
}

static void test_config_small_error_buffer(void)
{
    test_cfg cfg;
    char err[16];
    const kv table[] = {{"TEST_N", "nope"}, {NULL, NULL}};

    memset(err, '#', sizeof err);
    CU_ASSERT_EQUAL(config_load(&cfg, test_fields, N_TEST_FIELDS, table_source, (void *)table, err, 8),
                    CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(strlen(err), 7);
    CU_ASSERT_EQUAL(err[8], '#');
    CU_ASSERT_EQUAL(config_load(&cfg, test_fields, N_TEST_FIELDS, table_source, (void *)table, NULL, 0),
                    CH_INVALID_ARGUMENT);
}

static void test_config_getenv_source_uses_default(void)
{
    test_cfg cfg;
    char err[64];
    const config_field f[] = {{"CHOREO_TEST_CONFIG_SURELY_UNSET_7f3a", CONFIG_INT, TC(n), 0, "42", 0, 100,
                               "unset in any environment"}};

    cfg.n = 0;
    CU_ASSERT_EQUAL(config_load(&cfg, f, 1, NULL, NULL, err, sizeof err), CH_OK);
    CU_ASSERT_EQUAL(cfg.n, 42);
}

static void test_config_service_fields_defaults(void)
{
    config_field fields[32];
    service_config sc;
    char err[256];
    const kv empty[] = {{NULL, NULL}};

    size_t n = service_config_fields(fields, 32, "127.0.0.1:50051");
    CU_ASSERT_FATAL(n >= 10 && n <= 32);
    for (size_t i = 0; i < n; i++) {
        CU_ASSERT_EQUAL(strncmp(fields[i].env, "CHOREO_", 7), 0);
        CU_ASSERT_PTR_NOT_NULL(fields[i].help);
        CU_ASSERT_PTR_NOT_NULL(fields[i].def);
    }
    memset(&sc, 0x5a, sizeof sc);
    CU_ASSERT_EQUAL_FATAL(config_load(&sc, fields, n, table_source, (void *)empty, err, sizeof err), CH_OK);
    CU_ASSERT_STRING_EQUAL(sc.listen_addr, "127.0.0.1:50051");
    CU_ASSERT_STRING_EQUAL(sc.nats_url, "nats://127.0.0.1:4222");
    CU_ASSERT_EQUAL(sc.log_level, LOG_INFO);
    CU_ASSERT_EQUAL(sc.rpc_workers, 2);
    CU_ASSERT_EQUAL(sc.max_message_bytes, 65536);
    CU_ASSERT_EQUAL(sc.max_streams, 64);
    CU_ASSERT_EQUAL(sc.shutdown_grace_ms, 5000);
    CU_ASSERT_EQUAL(sc.publish_timeout_ms, 5000);
    CU_ASSERT_EQUAL(sc.stream_replicas, 1);
    CU_ASSERT_EQUAL(sc.stream_max_age_s, 0);
}

static void test_config_service_fields_overrides_and_errors(void)
{
    config_field fields[32];
    service_config sc;
    char err[256];
    size_t n = service_config_fields(fields, 32, "127.0.0.1:50052");
    const kv good[] = {
        {"CHOREO_LISTEN_ADDR", "0.0.0.0:6000"}, {"CHOREO_NATS_URL", "nats://a:4222,nats://b:4222"},
        {"CHOREO_LOG_LEVEL", "debug"},          {"CHOREO_RPC_WORKERS", "64"},
        {"CHOREO_STREAM_REPLICAS", "3"},        {NULL, NULL}};
    const kv bad_workers[] = {{"CHOREO_RPC_WORKERS", "65"}, {NULL, NULL}};
    const kv bad_msg[] = {{"CHOREO_MAX_MESSAGE_BYTES", "1023"}, {NULL, NULL}};
    const kv empty_url[] = {{"CHOREO_NATS_URL", ""}, {NULL, NULL}};
    const kv stray_comma[] = {{"CHOREO_NATS_URL", "nats://a:4222,,nats://b:4222"}, {NULL, NULL}};

    CU_ASSERT_EQUAL_FATAL(config_load(&sc, fields, n, table_source, (void *)good, err, sizeof err), CH_OK);
    CU_ASSERT_STRING_EQUAL(sc.listen_addr, "0.0.0.0:6000");
    CU_ASSERT_STRING_EQUAL(sc.nats_url, "nats://a:4222,nats://b:4222");
    CU_ASSERT_EQUAL(sc.log_level, LOG_DEBUG);
    CU_ASSERT_EQUAL(sc.rpc_workers, 64);
    CU_ASSERT_EQUAL(sc.stream_replicas, 3);

    CU_ASSERT_EQUAL(config_load(&sc, fields, n, table_source, (void *)bad_workers, err, sizeof err),
                    CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(strncmp(err, "CHOREO_RPC_WORKERS: ", 20), 0);
    CU_ASSERT_EQUAL(config_load(&sc, fields, n, table_source, (void *)bad_msg, err, sizeof err),
                    CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(strncmp(err, "CHOREO_MAX_MESSAGE_BYTES: ", 26), 0);
    CU_ASSERT_EQUAL(config_load(&sc, fields, n, table_source, (void *)empty_url, err, sizeof err),
                    CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(strncmp(err, "CHOREO_NATS_URL: ", 17), 0);
    CU_ASSERT_EQUAL(config_load(&sc, fields, n, table_source, (void *)stray_comma, err, sizeof err),
                    CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(strncmp(err, "CHOREO_NATS_URL: ", 17), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "entry 2"));
}

static void test_config_service_fields_small_cap(void)
{
    config_field fields[4];

    memset(fields, 0, sizeof fields);
    size_t n = service_config_fields(fields, 3, "127.0.0.1:1");
    CU_ASSERT(n >= 10);
    CU_ASSERT_STRING_EQUAL(fields[0].env, "CHOREO_LISTEN_ADDR");
    CU_ASSERT_PTR_NOT_NULL(fields[2].env);
    CU_ASSERT_PTR_NULL(fields[3].env); /* nothing written past cap */
}

static void test_config_usage_lists_every_variable(void)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);

    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    config_usage(f, test_fields, N_TEST_FIELDS);
    fclose(f);
    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    for (size_t i = 0; i < N_TEST_FIELDS; i++)
        CU_ASSERT_PTR_NOT_NULL(strstr(text, test_fields[i].env));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "-10..100"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "a required string"));
    free(text);
}

int main(void)
{
    static const cu_test tests[] = {
        {"defaults", test_config_defaults},
        {"each_type", test_config_each_type},
        {"bool_spellings", test_config_bool_spellings},
        {"int_out_of_range", test_config_int_out_of_range},
        {"int_garbage", test_config_int_garbage},
        {"string_too_long_or_invalid", test_config_string_too_long_or_invalid},
        {"empty_required_string", test_config_empty_required_string},
        {"bad_bool", test_config_bad_bool},
        {"bad_log_level", test_config_bad_log_level},
        {"first_error_is_reported", test_config_first_error_is_reported},
        {"small_error_buffer", test_config_small_error_buffer},
        {"getenv_source_uses_default", test_config_getenv_source_uses_default},
        {"service_fields_defaults", test_config_service_fields_defaults},
        {"service_fields_overrides_and_errors", test_config_service_fields_overrides_and_errors},
        {"service_fields_small_cap", test_config_service_fields_small_cap},
        {"usage_lists_every_variable", test_config_usage_lists_every_variable},
        {NULL, NULL},
    };

    return cu_run("config", NULL, NULL, tests);
}
