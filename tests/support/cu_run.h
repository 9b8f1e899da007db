/* cu_run.h: the main() of a CUnit test executable, once.
 *
 * Every test binary registers one suite, adds its tests, runs them verbosely
 * and turns the outcome into an exit status; cu_run does exactly that. What a
 * binary needs around the run (log level, library init and shutdown) stays
 * in its main(). Ownership: nothing is kept; the CUnit registry is created
 * and cleaned up inside the call. Threads: main thread, once at a time. */
#ifndef CHOREO_TEST_CU_RUN_H
#define CHOREO_TEST_CU_RUN_H

#include <CUnit/CUnit.h>

/* One test of the suite: its name in the report and its function. */
typedef struct cu_test {
    const char *name;
    CU_TestFunc fn;
} cu_test;

/* Registers suite `suite` with init/clean (either may be NULL) and the tests
 * of the table (ended by an entry whose name is NULL), runs them with the
 * basic verbose runner and cleans up the registry. Returns 0 when every
 * assertion passed and the suite's init and clean succeeded, 1 otherwise
 * (also when CUnit could not register the suite or a test). */
int cu_run(const char *suite, CU_InitializeFunc init, CU_CleanupFunc clean, const cu_test *tests);

#endif
