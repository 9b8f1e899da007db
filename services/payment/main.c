/* choreo-payment: the payment service. Reads its configuration, folds its
 * accounts and payments from its stream, reacts to inventory.reserved and
 * order.cancel_requested, serves gRPC until SIGTERM. */
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

    st = pay_state_create(&svc.state);
    if (st == CH_OK)
        st = service_connect(&rt);
    svc.bus = rt.bus;
    if (st == CH_OK)
        st = payment_events_start(&svc);
    if (st == CH_OK)
        st = service_create_server(&rt);
    if (st == CH_OK)
        st = payment_rpc_register(rt.server, &svc);
    if (st == CH_OK)
        st = service_serve(&rt);

    payment_events_stop(&svc); /* the writer before the bus it uses */
    service_shutdown(&rt);
    pay_state_destroy(svc.state);
    if (st != CH_OK && st != CH_CANCELLED) {
        log_error("exiting on error", "status", ch_status_str(st), NULL);
        return 1;
    }
    return 0;
}
