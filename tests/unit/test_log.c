/* test_log.c: logfmt records: quoting and escaping, skipped NULL values, the
 * level filter, the line cap and log_level_parse. */
#include <CUnit/Basic.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cu_run.h"
#include "log.h"

/* Formats one record with the given pairs into buf (NUL-terminated after the
 * returned length) and returns buf. */
static const char *fmt(char *buf, int cap, log_level level, const char *msg, const char *const *kv, int nkv)
{
    int n = log_format(buf, cap - 1, level, msg, kv, nkv);
    CU_ASSERT_FATAL(n > 0 && n < cap);
    buf[n] = '\0';
    return buf;
}

/* How many times c occurs in s. */
static int count_char(const char *s, char c)
{
    int n = 0;
    for (; *s; s++)
        n += *s == c;
    return n;
}

static void test_log_format_shape(void)
{
    char buf[512];
    const char *kv[] = {"order_id", "ord-1", "outcome", "ack"};

    log_configure("orders", LOG_INFO, 2);
    const char *line = fmt(buf, sizeof buf, LOG_INFO, "event handled", kv, 4);
    /* ts=YYYY-MM-DDTHH:MM:SS.mmmZ first */
    CU_ASSERT_EQUAL(strncmp(line, "ts=", 3), 0);
    CU_ASSERT_EQUAL(strlen(line) > 28, 1);
    CU_ASSERT_EQUAL(line[3 + 4], '-');
    CU_ASSERT_EQUAL(line[3 + 10], 'T');
    CU_ASSERT_EQUAL(line[3 + 19], '.');
    CU_ASSERT_EQUAL(line[3 + 23], 'Z');
    CU_ASSERT_EQUAL(line[3 + 24], ' ');
    CU_ASSERT_STRING_EQUAL(line + 28,
                           "level=info service=orders msg=\"event handled\" order_id=ord-1 outcome=ack\n");
    CU_ASSERT_EQUAL(count_char(line, '\n'), 1);
}

static void test_log_format_levels(void)
{
    char buf[256];

    log_configure("svc", LOG_DEBUG, 2);
    CU_ASSERT_PTR_NOT_NULL(strstr(fmt(buf, sizeof buf, LOG_DEBUG, "m", NULL, 0), " level=debug "));
    CU_ASSERT_PTR_NOT_NULL(strstr(fmt(buf, sizeof buf, LOG_INFO, "m", NULL, 0), " level=info "));
    CU_ASSERT_PTR_NOT_NULL(strstr(fmt(buf, sizeof buf, LOG_WARN, "m", NULL, 0), " level=warn "));
    CU_ASSERT_PTR_NOT_NULL(strstr(fmt(buf, sizeof buf, LOG_ERROR, "m", NULL, 0), " level=error "));
    /* An out-of-range level is written as error, never read out of bounds. */
    CU_ASSERT_PTR_NOT_NULL(strstr(fmt(buf, sizeof buf, (log_level)9, "m", NULL, 0), " level=error "));
    /* A NULL msg is an empty quoted value. */
    CU_ASSERT_PTR_NOT_NULL(strstr(fmt(buf, sizeof buf, LOG_INFO, NULL, NULL, 0), " msg=\"\"\n"));
    log_configure(NULL, LOG_INFO, 2);
}

/* Formats a single pair k=<v> and checks the tail of the line. */
static void check_value(const char *v, const char *expect_tail)
{
    char buf[512];
    const char *kv[] = {"k", v};

    const char *line = fmt(buf, sizeof buf, LOG_INFO, "m", kv, 2);
    size_t n = strlen(line), m = strlen(expect_tail);
    CU_ASSERT_FATAL(n >= m);
    if (strcmp(line + n - m, expect_tail) != 0)
        fprintf(stderr, "\n  value %s: got line %s", v, line);
    CU_ASSERT_STRING_EQUAL(line + n - m, expect_tail);
}

static void test_log_quoting_and_escaping(void)
{
    log_configure("svc", LOG_INFO, 2);
    check_value("plain", " k=plain\n");
    check_value("caf\xc3\xa9", " k=caf\xc3\xa9\n");
    check_value("a b", " k=\"a b\"\n");
    check_value("say \"hi\"", " k=\"say \\\"hi\\\"\"\n");
    check_value("a=b", " k=\"a=b\"\n");
    check_value("a\\b", " k=\"a\\\\b\"\n");
    check_value("line1\nline2", " k=\"line1\\nline2\"\n");
    check_value("a\tb", " k=\"a\\tb\"\n");
    check_value("a\rb", " k=\"a\\rb\"\n");
    check_value("a\x01z", " k=\"a\\x01z\"\n");
    check_value("\x1b[31m", " k=\"\\x1b[31m\"\n");
    check_value("del\x7f", " k=\"del\\x7f\"\n");
    check_value("", " k=\"\"\n");
    check_value("\n", " k=\"\\n\"\n");
    log_configure(NULL, LOG_INFO, 2);
}

static void test_log_service_name_is_quoted_and_capped(void)
{
    char buf[512], name[200];

    log_configure("my svc", LOG_INFO, 2);
    CU_ASSERT_PTR_NOT_NULL(strstr(fmt(buf, sizeof buf, LOG_INFO, "m", NULL, 0), " service=\"my svc\" "));
    memset(name, 's', sizeof name - 1);
    name[sizeof name - 1] = '\0';
    log_configure(name, LOG_INFO, 2);
    fmt(buf, sizeof buf, LOG_INFO, "m", NULL, 0);
    char *p = strstr(buf, " service=");
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    CU_ASSERT(strspn(p + 9, "s") < sizeof name - 1); /* copied into a bounded buffer */
    CU_ASSERT(strspn(p + 9, "s") > 0);
    log_configure(NULL, LOG_INFO, 2);
    CU_ASSERT_PTR_NOT_NULL(strstr(fmt(buf, sizeof buf, LOG_INFO, "m", NULL, 0), " service=choreo "));
}

static void test_log_null_values_skipped(void)
{
    char buf[512];
    const char *kv[] = {"a", NULL, "b", "2", NULL, "3", "c", ""};

    log_configure("svc", LOG_INFO, 2);
    const char *line = fmt(buf, sizeof buf, LOG_INFO, "m", kv, 8);
    CU_ASSERT_PTR_NULL(strstr(line, " a="));
    CU_ASSERT_PTR_NULL(strstr(line, "=3"));
    CU_ASSERT_PTR_NOT_NULL(strstr(line, " msg=m b=2 c=\"\"\n"));
    /* An odd count ignores the dangling key. */
    CU_ASSERT_PTR_NOT_NULL(strstr(fmt(buf, sizeof buf, LOG_INFO, "m", kv + 2, 3), " msg=m b=2\n"));
    log_configure(NULL, LOG_INFO, 2);
}

static void test_log_line_capped(void)
{
    char *big = malloc(5000);
    char *buf = malloc(LOG_LINE_MAX + 1);
    CU_ASSERT_FATAL(big && buf);
    memset(big, 'x', 4999);
    big[4999] = '\0';
    const char *kv[] = {"big", big, "after", "lost"};

    log_configure("svc", LOG_INFO, 2);
    int n = log_format(buf, LOG_LINE_MAX, LOG_INFO, "m", kv, 4);
    CU_ASSERT_EQUAL(n, LOG_LINE_MAX);
    buf[n] = '\0';
    CU_ASSERT_EQUAL(buf[n - 1], '\n');
    CU_ASSERT_EQUAL(strcmp(buf + n - 4, "...\n"), 0);
    CU_ASSERT_EQUAL(count_char(buf, '\n'), 1);
    CU_ASSERT_PTR_NULL(strstr(buf, "after="));

    /* A small buffer too: the cap is the caller's, never exceeded. */
    memset(buf, '#', 64);
    n = log_format(buf, 40, LOG_INFO, "m", kv, 4);
    CU_ASSERT_EQUAL(n, 40);
    CU_ASSERT_EQUAL(memcmp(buf + 36, "...\n", 4), 0);
    CU_ASSERT_EQUAL(buf[40], '#');
    free(big);
    free(buf);
    log_configure(NULL, LOG_INFO, 2);
}

static void test_log_line_that_fits_is_not_cut(void)
{
    char buf[256], probe[256];
    const char *kv[] = {"k", "vvvvvvvvvv"};

    log_configure("svc", LOG_INFO, 2);
    /* Measure the full line, then format it into a buffer exactly its size. */
    int full = log_format(probe, sizeof probe, LOG_INFO, "m", kv, 2);
    CU_ASSERT_FATAL(full > 10 && full < (int)sizeof probe);
    memset(buf, '#', sizeof buf);
    int n = log_format(buf, full, LOG_INFO, "m", kv, 2);
    CU_ASSERT_EQUAL(n, full);
    CU_ASSERT_EQUAL(memcmp(buf + full - 11, "vvvvvvvvvv\n", 11), 0);
    CU_ASSERT_EQUAL(buf[full], '#');
    /* One byte less does not fit: cut and marked. */
    n = log_format(buf, full - 1, LOG_INFO, "m", kv, 2);
    CU_ASSERT_EQUAL(n, full - 1);
    CU_ASSERT_EQUAL(memcmp(buf + full - 5, "...\n", 4), 0);
    /* Degenerate caps never write past the buffer. */
    memset(buf, '#', sizeof buf);
    CU_ASSERT_EQUAL(log_format(buf, 0, LOG_INFO, "m", kv, 2), 0);
    CU_ASSERT_EQUAL(buf[0], '#');
    CU_ASSERT_EQUAL(log_format(buf, 1, LOG_INFO, "m", kv, 2), 1);
    CU_ASSERT_EQUAL(buf[0], '\n');
    CU_ASSERT_EQUAL(buf[1], '#');
    log_configure(NULL, LOG_INFO, 2);
}

static void test_log_level_parse(void)
{
    log_level l = LOG_ERROR;

    CU_ASSERT_EQUAL(log_level_parse("debug", &l), CH_OK);
    CU_ASSERT_EQUAL(l, LOG_DEBUG);
    CU_ASSERT_EQUAL(log_level_parse("INFO", &l), CH_OK);
    CU_ASSERT_EQUAL(l, LOG_INFO);
    CU_ASSERT_EQUAL(log_level_parse("Warn", &l), CH_OK);
    CU_ASSERT_EQUAL(l, LOG_WARN);
    CU_ASSERT_EQUAL(log_level_parse("error", &l), CH_OK);
    CU_ASSERT_EQUAL(l, LOG_ERROR);
    CU_ASSERT_EQUAL(log_level_parse("warning", &l), CH_OK);
    CU_ASSERT_EQUAL(l, LOG_WARN);

    l = LOG_INFO;
    CU_ASSERT_EQUAL(log_level_parse("", &l), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(log_level_parse("fatal", &l), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(log_level_parse("info ", &l), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(log_level_parse("inf", &l), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(log_level_parse("3", &l), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(log_level_parse(NULL, &l), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(l, LOG_INFO); /* unchanged on error */
}

static void test_log_enabled_filter(void)
{
    log_configure("svc", LOG_WARN, 2);
    CU_ASSERT_FALSE(log_enabled(LOG_DEBUG));
    CU_ASSERT_FALSE(log_enabled(LOG_INFO));
    CU_ASSERT_TRUE(log_enabled(LOG_WARN));
    CU_ASSERT_TRUE(log_enabled(LOG_ERROR));
    log_configure("svc", LOG_DEBUG, 2);
    CU_ASSERT_TRUE(log_enabled(LOG_DEBUG));
    log_configure(NULL, LOG_INFO, 2);
    CU_ASSERT_FALSE(log_enabled(LOG_DEBUG));
    CU_ASSERT_TRUE(log_enabled(LOG_INFO));
}

/* Reads what is in the pipe now (the read end is non-blocking). */
static int drain(int fd, char *buf, int cap)
{
    int len = 0;
    for (;;) {
        ssize_t r = read(fd, buf + len, (size_t)(cap - 1 - len));
        if (r <= 0)
            break;
        len += (int)r;
    }
    buf[len] = '\0';
    return len;
}

static void test_log_at_writes_one_filtered_line(void)
{
    int p[2];
    char *got = malloc(8192);
    char *big = malloc(4000);

    CU_ASSERT_FATAL(got && big);
    CU_ASSERT_FATAL(pipe(p) == 0);
    CU_ASSERT_FATAL(fcntl(p[0], F_SETFL, O_NONBLOCK) == 0);
    log_configure("payment", LOG_WARN, p[1]);

    log_info("dropped", "k", "v", NULL);
    log_debug("dropped too", NULL);
    CU_ASSERT_EQUAL(drain(p[0], got, 8192), 0);

    log_warn("balance low", "customer_id", "c 1", "skipped", NULL, "order_id", "ord-9", NULL);
    int n = drain(p[0], got, 8192);
    CU_ASSERT(n > 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(got, " level=warn service=payment msg=\"balance low\" "
                                       "customer_id=\"c 1\" order_id=ord-9\n"));
    CU_ASSERT_PTR_NULL(strstr(got, "skipped"));
    CU_ASSERT_EQUAL(count_char(got, '\n'), 1);

    /* More than LOG_LINE_MAX: one write of exactly LOG_LINE_MAX bytes. */
    memset(big, 'y', 3999);
    big[3999] = '\0';
    log_error("huge", "v", big, NULL);
    n = drain(p[0], got, 8192);
    CU_ASSERT_EQUAL(n, LOG_LINE_MAX);
    CU_ASSERT_EQUAL(strcmp(got + n - 4, "...\n"), 0);

    /* Pairs beyond the per-record limit are dropped, not overflowed. */
    log_error("many", "k00", "0", "k01", "1", "k02", "2", "k03", "3", "k04", "4", "k05", "5", "k06", "6",
              "k07", "7", "k08", "8", "k09", "9", "k10", "0", "k11", "1", "k12", "2", "k13", "3", "k14", "4",
              "k15", "5", "k16", "6", "k17", "7", "k18", "8", "k19", "9", "k20", "0", "k21", "1", "k22", "2",
              "k23", "3", "k24", "4", "k25", "5", "k26", "6", "k27", "7", "k28", "8", "k29", "9", "k30", "0",
              "k31", "1", "k32", "2", "k33", "3", "k34", "4", NULL);
    n = drain(p[0], got, 8192);
    CU_ASSERT(n > 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(got, " k00=0 "));
    CU_ASSERT_PTR_NOT_NULL(strstr(got, " k31=1\n"));
    CU_ASSERT_PTR_NULL(strstr(got, "k32"));

    log_configure(NULL, LOG_INFO, 2);
    close(p[0]);
    close(p[1]);
    free(got);
    free(big);
}

static void test_log_hold_writes_the_batch_at_release(void)
{
    int p[2];
    int cap = 4 * LOG_HOLD_BYTES;
    char *got = malloc((size_t)cap), *big = malloc(LOG_LINE_MAX);
    log_buffer *b = malloc(sizeof *b);

    CU_ASSERT_FATAL(got && big && b);
    CU_ASSERT_FATAL(pipe(p) == 0);
    CU_ASSERT_FATAL(fcntl(p[0], F_SETFL, O_NONBLOCK) == 0);
    log_configure("inventory", LOG_INFO, p[1]);

    log_hold(b);
    log_info("event handled", "order_id", "ord-1", NULL);
    log_info("event published", "order_id", "ord-1", NULL);
    log_debug("filtered out", NULL);
    CU_ASSERT_EQUAL(drain(p[0], got, cap), 0); /* held back */
    log_release(b);
    int n = drain(p[0], got, cap);
    CU_ASSERT_EQUAL(count_char(got, '\n'), 2);
    CU_ASSERT_PTR_NOT_NULL(strstr(got, "msg=\"event handled\" order_id=ord-1\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(got, "msg=\"event published\" order_id=ord-1\n"));
    CU_ASSERT(n > 0 && got[n - 1] == '\n');

    /* Released: lines go out one by one again. */
    log_warn("after", NULL);
    CU_ASSERT_EQUAL(count_char((drain(p[0], got, cap), got), '\n'), 1);

    /* More than the buffer holds: whole lines go out early, none is lost or
     * cut, and each keeps the LOG_LINE_MAX cap. */
    memset(big, 'z', LOG_LINE_MAX - 1);
    big[LOG_LINE_MAX - 1] = '\0';
    log_hold(b);
    for (int i = 0; i < 6; i++)
        log_info("big", "v", big, NULL);
    n = drain(p[0], got, cap);
    CU_ASSERT(n > 0); /* the buffer filled up: some lines are out already */
    log_release(b);
    n += drain(p[0], got + n, cap - n);
    CU_ASSERT_EQUAL(n, 6 * LOG_LINE_MAX);
    CU_ASSERT_EQUAL(count_char(got, '\n'), 6);
    log_release(NULL);

    log_configure(NULL, LOG_INFO, 2);
    close(p[0]);
    close(p[1]);
    free(got);
    free(big);
    free(b);
}

int main(void)
{
    static const cu_test tests[] = {
        {"format_shape", test_log_format_shape},
        {"format_levels", test_log_format_levels},
        {"quoting_and_escaping", test_log_quoting_and_escaping},
        {"service_name_is_quoted_and_capped", test_log_service_name_is_quoted_and_capped},
        {"null_values_skipped", test_log_null_values_skipped},
        {"line_capped", test_log_line_capped},
        {"line_that_fits_is_not_cut", test_log_line_that_fits_is_not_cut},
        {"level_parse", test_log_level_parse},
        {"enabled_filter", test_log_enabled_filter},
        {"at_writes_one_filtered_line", test_log_at_writes_one_filtered_line},
        {"hold_writes_the_batch_at_release", test_log_hold_writes_the_batch_at_release},
        {NULL, NULL},
    };

    return cu_run("log", NULL, NULL, tests);
}
