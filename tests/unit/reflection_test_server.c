/* reflection_test_server.c: health and reflection on an ephemeral port, for
 * test_reflection_python.py. Prints "port=N" on stdout once listening and
 * runs until SIGTERM or SIGINT; exits 0 after a clean shutdown. */
#include <stdio.h>

#include "health.h"
#include "log.h"
#include "reflection.h"
#include "rpc_server.h"

extern const unsigned char choreo_descriptor_set[];
extern const unsigned long choreo_descriptor_set_len;

int main(void)
{
    rpc_server_options opts = {.listen_addr = "127.0.0.1:0",
                               .workers = 2,
                               .max_message_bytes = 4 << 20,
                               .max_streams = 8,
                               .grace_ms = 1000};
    health *h = NULL;
    reflection *r = NULL;
    rpc_server *s = NULL;
    int rc = 1;

    rpc_block_signals();
    log_configure("reflection_test_server", LOG_WARN, 2);
    if (health_create(&h) != CH_OK ||
        reflection_create(&r, choreo_descriptor_set, choreo_descriptor_set_len) != CH_OK)
        goto cleanup;
    if (rpc_server_create(&s, &opts) != CH_OK || health_register(h, s) != CH_OK ||
        reflection_register(r, s) != CH_OK)
        goto cleanup;
    if (rpc_server_start(s) != CH_OK)
        goto cleanup;
    health_set(h, "grpc.health.v1.Health", true);
    printf("port=%d\n", rpc_server_port(s));
    fflush(stdout);
    rpc_server_run(s);
    rc = 0;

cleanup:
    rpc_server_destroy(s);
    reflection_destroy(r);
    health_destroy(h);
    return rc;
}
