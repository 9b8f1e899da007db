/* test_status.c: names of ch_status and the one mapping to and from gRPC codes. */
#include <CUnit/Basic.h>
#include <grpc/status.h>
#include <string.h>

#include "cu_run.h"
#include "status.h"

static void test_status_ok_is_zero(void)
{
    CU_ASSERT_EQUAL(CH_OK, 0);
    CU_ASSERT_STRING_EQUAL(ch_status_str(CH_OK), "OK");
    CU_ASSERT_EQUAL(ch_status_to_grpc(CH_OK), GRPC_STATUS_OK);
    CU_ASSERT_EQUAL(ch_status_from_grpc(GRPC_STATUS_OK), CH_OK);
}

static void test_status_every_code_has_a_distinct_name(void)
{
    for (int i = 0; i < CH_STATUS_COUNT_; i++) {
        const char *a = ch_status_str((ch_status)i);
        CU_ASSERT_PTR_NOT_NULL_FATAL(a);
        CU_ASSERT(strlen(a) > 0);
        CU_ASSERT_STRING_NOT_EQUAL(a, "UNKNOWN_STATUS");
        for (int j = i + 1; j < CH_STATUS_COUNT_; j++)
            CU_ASSERT_STRING_NOT_EQUAL(a, ch_status_str((ch_status)j));
    }
    CU_ASSERT_STRING_EQUAL(ch_status_str(CH_INVALID_ARGUMENT), "INVALID_ARGUMENT");
    CU_ASSERT_STRING_EQUAL(ch_status_str(CH_TIMEOUT), "TIMEOUT");
}

static void test_status_out_of_range_is_unknown(void)
{
    CU_ASSERT_STRING_EQUAL(ch_status_str(CH_STATUS_COUNT_), "UNKNOWN_STATUS");
    CU_ASSERT_STRING_EQUAL(ch_status_str((ch_status)(CH_STATUS_COUNT_ + 7)), "UNKNOWN_STATUS");
    CU_ASSERT_EQUAL(ch_status_to_grpc(CH_STATUS_COUNT_), GRPC_STATUS_UNKNOWN);
    CU_ASSERT_EQUAL(ch_status_to_grpc((ch_status)(CH_STATUS_COUNT_ + 7)), GRPC_STATUS_UNKNOWN);
}

static void test_status_to_grpc_mapping(void)
{
    CU_ASSERT_EQUAL(ch_status_to_grpc(CH_INVALID_ARGUMENT), GRPC_STATUS_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(ch_status_to_grpc(CH_NOT_FOUND), GRPC_STATUS_NOT_FOUND);
    CU_ASSERT_EQUAL(ch_status_to_grpc(CH_ALREADY_EXISTS), GRPC_STATUS_ALREADY_EXISTS);
    CU_ASSERT_EQUAL(ch_status_to_grpc(CH_FAILED_PRECONDITION), GRPC_STATUS_FAILED_PRECONDITION);
    CU_ASSERT_EQUAL(ch_status_to_grpc(CH_RESOURCE_EXHAUSTED), GRPC_STATUS_RESOURCE_EXHAUSTED);
    CU_ASSERT_EQUAL(ch_status_to_grpc(CH_UNAVAILABLE), GRPC_STATUS_UNAVAILABLE);
    CU_ASSERT_EQUAL(ch_status_to_grpc(CH_TIMEOUT), GRPC_STATUS_DEADLINE_EXCEEDED);
    CU_ASSERT_EQUAL(ch_status_to_grpc(CH_CANCELLED), GRPC_STATUS_CANCELLED);
    CU_ASSERT_EQUAL(ch_status_to_grpc(CH_CONFLICT), GRPC_STATUS_ABORTED);
    CU_ASSERT_EQUAL(ch_status_to_grpc(CH_NO_MEMORY), GRPC_STATUS_RESOURCE_EXHAUSTED);
    CU_ASSERT_EQUAL(ch_status_to_grpc(CH_UNIMPLEMENTED), GRPC_STATUS_UNIMPLEMENTED);
    CU_ASSERT_EQUAL(ch_status_to_grpc(CH_INTERNAL), GRPC_STATUS_INTERNAL);
}

static void test_status_round_trip(void)
{
    /* Every status except CH_NO_MEMORY (which shares RESOURCE_EXHAUSTED) survives
     * a trip through the gRPC code, so a client sees what the server meant. */
    for (int i = 0; i < CH_STATUS_COUNT_; i++) {
        if (i == CH_NO_MEMORY)
            continue;
        CU_ASSERT_EQUAL(ch_status_from_grpc(ch_status_to_grpc((ch_status)i)), (ch_status)i);
    }
    CU_ASSERT_EQUAL(ch_status_from_grpc(ch_status_to_grpc(CH_NO_MEMORY)), CH_RESOURCE_EXHAUSTED);
}

static void test_status_from_grpc_other_codes(void)
{
    CU_ASSERT_EQUAL(ch_status_from_grpc(GRPC_STATUS_OUT_OF_RANGE), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(ch_status_from_grpc(GRPC_STATUS_UNKNOWN), CH_INTERNAL);
    CU_ASSERT_EQUAL(ch_status_from_grpc(GRPC_STATUS_DATA_LOSS), CH_INTERNAL);
    CU_ASSERT_EQUAL(ch_status_from_grpc(GRPC_STATUS_UNAUTHENTICATED), CH_INTERNAL);
    CU_ASSERT_EQUAL(ch_status_from_grpc(GRPC_STATUS_PERMISSION_DENIED), CH_INTERNAL);
    CU_ASSERT_EQUAL(ch_status_from_grpc(-1), CH_INTERNAL);
    CU_ASSERT_EQUAL(ch_status_from_grpc(1000), CH_INTERNAL);
}

int main(void)
{
    static const cu_test tests[] = {
        {"ok_is_zero", test_status_ok_is_zero},
        {"every_code_has_a_distinct_name", test_status_every_code_has_a_distinct_name},
        {"out_of_range_is_unknown", test_status_out_of_range_is_unknown},
        {"to_grpc_mapping", test_status_to_grpc_mapping},
        {"round_trip", test_status_round_trip},
        {"from_grpc_other_codes", test_status_from_grpc_other_codes},
        {NULL, NULL},
    };

    return cu_run("status", NULL, NULL, tests);
}
