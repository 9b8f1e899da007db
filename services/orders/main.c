/* choreo-orders: the orders service. Reads its configuration, rebuilds its
 * orders from the streams, serves gRPC until SIGTERM. */
#include <stdlib.h>

#include "log.h"
#include "orders.h"
#include "service.h"

int main(int argc, char **argv)
{
    service_runtime rt;
    orders_service svc = {0};
    ch_status st;

    int code = service_boot(&rt, argc, argv, "orders", ORDERS_SERVICE_NAME, "0.0.0.0:50051");
    if (code >= 0)
        return code;
    svc.cfg = &rt.cfg;

    st = order_store_create(&svc.store);
    if (st == CH_OK)
        st = service_connect(&rt);
    svc.bus = rt.bus;
    if (st == CH_OK)
        st = orders_events_start(&svc); /* folds the streams before serving */
    if (st == CH_OK)
        st = service_create_server(&rt);
    if (st == CH_OK)
        st = orders_rpc_register(rt.server, &svc);
    if (st == CH_OK)
        st = service_serve(&rt);

    orders_events_stop(&svc); /* service_serve has drained the calls; the bus goes last */
    service_shutdown(&rt);
    order_store_destroy(svc.store);
    if (st != CH_OK && st != CH_CANCELLED) {
        log_error("exiting on error", "status", ch_status_str(st), NULL);
        return 1;
    }
    return 0;
}
