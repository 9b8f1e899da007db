/* test_service.c: the start-up every service shares (service_boot). The rest
 * of service.c (connect, serve, shutdown) runs in every integration test. */
#include <CUnit/CUnit.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cu_run.h"
#include "service.h"

/* Runs service_boot with argv and the output silenced; returns its code. */
static int boot(service_runtime *rt, int argc, const char *const *argv)
{
    fflush(stdout);
    fflush(stderr);
    int out = dup(1), err = dup(2);
    FILE *null = fopen("/dev/null", "w");
    dup2(fileno(null), 1);
    dup2(fileno(null), 2);
    int code = service_boot(rt, argc, (char **)argv, "orders", "choreo.orders.v1.Orders", "0.0.0.0:50051");
    fflush(stdout);
    fflush(stderr);
    dup2(out, 1);
    dup2(err, 2);
    close(out);
    close(err);
    fclose(null);
    return code;
}

static void test_service_boot_reads_the_environment(void)
{
    service_runtime rt;
    const char *argv[] = {"choreo-orders"};
    setenv("CHOREO_RPC_WORKERS", "3", 1);
    setenv("CHOREO_NATS_URL", "nats://example:4222", 1);
    CU_ASSERT_EQUAL(boot(&rt, 1, argv), -1); /* go on */
    CU_ASSERT_EQUAL(rt.cfg.rpc_workers, 3);
    CU_ASSERT_STRING_EQUAL(rt.cfg.nats_url, "nats://example:4222");
    CU_ASSERT_STRING_EQUAL(rt.cfg.listen_addr, "0.0.0.0:50051");
    CU_ASSERT_STRING_EQUAL(rt.name, "orders");
    unsetenv("CHOREO_RPC_WORKERS");
    unsetenv("CHOREO_NATS_URL");
}

static void test_service_boot_check_config_and_help(void)
{
    service_runtime rt;
    const char *check[] = {"choreo-orders", "--check-config"};
    const char *help[] = {"choreo-orders", "--help"};
    const char *bad_arg[] = {"choreo-orders", "--frobnicate"};

    CU_ASSERT_EQUAL(boot(&rt, 2, check), 0);
    CU_ASSERT_EQUAL(boot(&rt, 2, help), 0);
    CU_ASSERT_EQUAL(boot(&rt, 2, bad_arg), 2);
    setenv("CHOREO_RPC_WORKERS", "0", 1); /* out of 1..64 */
    CU_ASSERT_EQUAL(boot(&rt, 2, check), 2);
    CU_ASSERT_EQUAL(boot(&rt, 1, check), 2); /* also when starting for real */
    unsetenv("CHOREO_RPC_WORKERS");
    setenv("CHOREO_LOG_LEVEL", "chatty", 1);
    CU_ASSERT_EQUAL(boot(&rt, 2, check), 2);
    unsetenv("CHOREO_LOG_LEVEL");
}

int main(void)
{
    static const cu_test tests[] = {
        {"boot reads the environment", test_service_boot_reads_the_environment},
        {"boot: --check-config, --help, bad values", test_service_boot_check_config_and_help},
        {NULL, NULL},
    };
    return cu_run("service", NULL, NULL, tests);
}
