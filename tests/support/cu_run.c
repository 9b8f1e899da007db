/* cu_run.c: register, run and report one CUnit suite. */
#include "cu_run.h"

#include <CUnit/Basic.h>

int cu_run(const char *suite, CU_InitializeFunc init, CU_CleanupFunc clean, const cu_test *tests)
{
    unsigned failures = 1;

    if (CU_initialize_registry() != CUE_SUCCESS)
        return 1;
    CU_pSuite s = CU_add_suite(suite, init, clean);
    if (!s)
        goto cleanup;
    for (const cu_test *t = tests; t->name; t++) {
        if (!CU_add_test(s, t->name, t->fn))
            goto cleanup;
    }
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    /* a suite whose set-up failed ran nothing: that is a failure too */
    failures = CU_get_number_of_failures() + CU_get_number_of_suites_failed();

cleanup:
    CU_cleanup_registry();
    return failures ? 1 : 0;
}
