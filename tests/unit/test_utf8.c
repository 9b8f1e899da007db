/* test_utf8.c: UTF-8 validation of outside text and of identifiers that become
 * NATS subject tokens. */
#include <CUnit/Basic.h>
#include <string.h>

#include "cu_run.h"
#include "utf8.h"

/* Checks a literal that may hold NUL bytes: the length is the array's. */
#define VALID(lit)   CU_ASSERT_TRUE(utf8_valid(lit, sizeof(lit) - 1))
#define INVALID(lit) CU_ASSERT_FALSE(utf8_valid(lit, sizeof(lit) - 1))

static void test_utf8_valid_ascii(void)
{
    VALID("");
    VALID("a");
    VALID("customer-1 ordered 3 items");
    VALID("\x01\x1f\x7f"); /* control bytes are valid UTF-8 (tokens reject them) */
    CU_ASSERT_TRUE(utf8_valid(NULL, 0));
}

static void test_utf8_valid_multibyte(void)
{
    VALID("\xc2\x80");                 /* U+0080, smallest 2-byte */
    VALID("\xc3\xa9t\xc3\xa9");        /* "été" */
    VALID("\xdf\xbf");                 /* U+07FF, largest 2-byte */
    VALID("\xe0\xa0\x80");             /* U+0800, smallest 3-byte */
    VALID("\xe2\x82\xac");             /* U+20AC euro sign */
    VALID("\xed\x9f\xbf");             /* U+D7FF, just below the surrogates */
    VALID("\xee\x80\x80");             /* U+E000, just above the surrogates */
    VALID("\xef\xbf\xbf");             /* U+FFFF */
    VALID("\xe6\x97\xa5\xe6\x9c\xac"); /* two CJK characters */
}

static void test_utf8_valid_four_byte(void)
{
    VALID("\xf0\x90\x80\x80");           /* U+10000, smallest 4-byte */
    VALID("\xf0\x9f\x98\x80");           /* U+1F600 emoji */
    VALID("\xf4\x8f\xbf\xbf");           /* U+10FFFF, the largest code point */
    VALID("a\xf0\x9f\x98\x80z\xc3\xa9"); /* mixed with ASCII and 2-byte */
}

static void test_utf8_rejects_overlong(void)
{
    INVALID("\xc0\x80");             /* NUL as 2 bytes */
    INVALID("\xc0\xaf");             /* '/' as 2 bytes */
    INVALID("\xc1\xbf");             /* U+007F as 2 bytes */
    INVALID("\xe0\x80\xaf");         /* '/' as 3 bytes */
    INVALID("\xe0\x9f\xbf");         /* U+07FF as 3 bytes */
    INVALID("\xf0\x80\x80\xaf");     /* '/' as 4 bytes */
    INVALID("\xf0\x8f\xbf\xbf");     /* U+FFFF as 4 bytes */
    INVALID("\xf8\x88\x80\x80\x80"); /* 5-byte form */
    INVALID("\xfc\x84\x80\x80\x80\x80");
}

static void test_utf8_rejects_surrogates(void)
{
    INVALID("\xed\xa0\x80");             /* U+D800 */
    INVALID("\xed\xaf\xbf");             /* U+DBFF */
    INVALID("\xed\xb0\x80");             /* U+DC00 */
    INVALID("\xed\xbf\xbf");             /* U+DFFF */
    INVALID("\xed\xa0\xbd\xed\xb8\x80"); /* CESU-8 pair for U+1F600 */
    INVALID("ok\xed\xa0\x80");
}

static void test_utf8_rejects_above_max(void)
{
    INVALID("\xf4\x90\x80\x80"); /* U+110000 */
    INVALID("\xf4\xbf\xbf\xbf");
    INVALID("\xf5\x80\x80\x80"); /* lead byte that can only start > U+13FFFF */
    INVALID("\xf7\xbf\xbf\xbf");
    INVALID("\xfe");
    INVALID("\xff");
}

static void test_utf8_rejects_truncated(void)
{
    INVALID("\xc3");
    INVALID("\xe2\x82");
    INVALID("\xe2");
    INVALID("\xf0\x9f\x98");
    INVALID("\xf0\x9f");
    INVALID("abc\xf0");
    /* A valid sequence cut by the length argument, not by the data. */
    CU_ASSERT_FALSE(utf8_valid("\xe2\x82\xac", 2));
    CU_ASSERT_FALSE(utf8_valid("x\xf0\x9f\x98\x80", 4));
    CU_ASSERT_TRUE(utf8_valid("x\xf0\x9f\x98\x80", 5));
    /* A lead byte followed by something that is not a continuation. */
    INVALID("\xc3"
            "a");
    INVALID("\xe2\x82"
            "a");
    INVALID("\xf0\x9f\x98"
            "a");
    INVALID("\xe2\xc3\xa9");
}

static void test_utf8_rejects_stray_continuation(void)
{
    INVALID("\x80");
    INVALID("\xbf");
    INVALID("a\x80z");
    INVALID("\xc3\xa9\xa9"); /* one continuation too many */
    INVALID("\xe2\x82\xac\x80");
}

static void test_utf8_rejects_embedded_nul(void)
{
    INVALID("\0");
    INVALID("a\0b");
    INVALID("abc\0");
    INVALID("\xc3\xa9\0");
    /* The length decides: a NUL beyond it is not looked at. */
    CU_ASSERT_TRUE(utf8_valid("ab\0cd", 2));
    CU_ASSERT_FALSE(utf8_valid("ab\0cd", 3));
}

static void test_utf8_token_accepts(void)
{
    CU_ASSERT_TRUE(utf8_valid_token("ord-0123456789abcdef", 40));
    CU_ASSERT_TRUE(utf8_valid_token("c", 1));
    CU_ASSERT_TRUE(utf8_valid_token("sku_1-A:B", 64));
    CU_ASSERT_TRUE(utf8_valid_token("caf\xc3\xa9", 64));
    CU_ASSERT_TRUE(utf8_valid_token("\xf0\x9f\x98\x80", 4));
}

static void test_utf8_token_rejects_subject_chars(void)
{
    CU_ASSERT_FALSE(utf8_valid_token("a.b", 64));
    CU_ASSERT_FALSE(utf8_valid_token(".", 64));
    CU_ASSERT_FALSE(utf8_valid_token("a*", 64));
    CU_ASSERT_FALSE(utf8_valid_token("*", 64));
    CU_ASSERT_FALSE(utf8_valid_token(">", 64));
    CU_ASSERT_FALSE(utf8_valid_token("a>b", 64));
}

static void test_utf8_token_rejects_space_and_control(void)
{
    CU_ASSERT_FALSE(utf8_valid_token("a b", 64));
    CU_ASSERT_FALSE(utf8_valid_token(" a", 64));
    CU_ASSERT_FALSE(utf8_valid_token("a\t", 64));
    CU_ASSERT_FALSE(utf8_valid_token("a\nb", 64));
    CU_ASSERT_FALSE(utf8_valid_token("a\rb", 64));
    CU_ASSERT_FALSE(utf8_valid_token("\x01", 64));
    CU_ASSERT_FALSE(utf8_valid_token("a\x1f", 64));
    CU_ASSERT_FALSE(utf8_valid_token("a\x7f", 64));
}

static void test_utf8_token_rejects_empty_long_and_invalid(void)
{
    char big[66];

    CU_ASSERT_FALSE(utf8_valid_token("", 64));
    CU_ASSERT_FALSE(utf8_valid_token(NULL, 64));
    memset(big, 'x', 65);
    big[65] = '\0';
    CU_ASSERT_FALSE(utf8_valid_token(big, 64));
    CU_ASSERT_TRUE(utf8_valid_token(big, 65));
    big[64] = '\0';
    CU_ASSERT_TRUE(utf8_valid_token(big, 64));
    /* max_len counts bytes, not characters. */
    CU_ASSERT_FALSE(utf8_valid_token("caf\xc3\xa9", 4));
    CU_ASSERT_FALSE(utf8_valid_token("\xc3", 64));
    CU_ASSERT_FALSE(utf8_valid_token("\xed\xa0\x80", 64));
    CU_ASSERT_FALSE(utf8_valid_token("\xc0\xae", 64)); /* overlong '.' */
}

int main(void)
{
    static const cu_test tests[] = {
        {"valid_ascii", test_utf8_valid_ascii},
        {"valid_multibyte", test_utf8_valid_multibyte},
        {"valid_four_byte", test_utf8_valid_four_byte},
        {"rejects_overlong", test_utf8_rejects_overlong},
        {"rejects_surrogates", test_utf8_rejects_surrogates},
        {"rejects_above_max", test_utf8_rejects_above_max},
        {"rejects_truncated", test_utf8_rejects_truncated},
        {"rejects_stray_continuation", test_utf8_rejects_stray_continuation},
        {"rejects_embedded_nul", test_utf8_rejects_embedded_nul},
        {"token_accepts", test_utf8_token_accepts},
        {"token_rejects_subject_chars", test_utf8_token_rejects_subject_chars},
        {"token_rejects_space_and_control", test_utf8_token_rejects_space_and_control},
        {"token_rejects_empty_long_and_invalid", test_utf8_token_rejects_empty_long_and_invalid},
        {NULL, NULL},
    };

    return cu_run("utf8", NULL, NULL, tests);
}
