/* choreo-payment: the payment service. Reads its configuration, rebuilds its
 * accounts and payments from its ledger, reacts to inventory.reserved and
 * order.cancel_requested, serves gRPC until SIGTERM. */
#include <pthread.h>
#include <stdlib.h>

#include "log.h"
#include "payment.h"
#include "service.h"

int main(int argc, char **argv)
{
    service_runtime rt;
    payment_service svc = {0};
    ch_status st;

    int code = service_boot(&rt, argc, argv, "payment", PAYMENT_SERVICE_NAME, "0.0.0.0:50053");
    if (code >= 0)
        return code;
    svc.cfg = &rt.cfg;
    pthread_mutex_init(&svc.mu, NULL);

    st = payment_state_create(&svc.state);
    if (st == CH_OK)
        st = service_connect(&rt);
    svc.bus = rt.bus;
    if (st == CH_OK)
        st = payment_ledger_open(&svc);
    if (st == CH_OK)
        st = payment_events_start(&svc);
    if (st == CH_OK)
        st = service_create_server(&rt);
    if (st == CH_OK)
        st = payment_rpc_register(rt.server, &svc);
    if (st == CH_OK)
        st = service_serve(&rt);

    payment_events_stop(&svc); /* workers and ledger before the bus they use */
    service_shutdown(&rt);
    payment_state_destroy(svc.state);
    pthread_mutex_destroy(&svc.mu);
    if (st != CH_OK && st != CH_CANCELLED) {
        log_error("exiting on error", "status", ch_status_str(st), NULL);
        return 1;
    }
    return 0;
}
