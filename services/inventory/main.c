/* choreo-inventory: the inventory service. Reads its configuration, folds
 * its stock and reservations from its stream, reacts to the saga's events,
 * serves gRPC until SIGTERM. */
#include "inventory.h"
#include "log.h"
#include "service.h"

int main(int argc, char **argv)
{
    service_runtime rt;
    inventory_service svc = {0};
    ch_status st;

    int code = service_boot(&rt, argc, argv, "inventory", INVENTORY_SERVICE_NAME, "0.0.0.0:50052");
    if (code >= 0)
        return code;
    svc.cfg = &rt.cfg;

    st = inv_store_create(&svc.store);
    if (st == CH_OK)
        st = service_connect(&rt);
    svc.bus = rt.bus;
    if (st == CH_OK)
        st = inventory_events_start(&svc);
    if (st == CH_OK)
        st = service_create_server(&rt);
    if (st == CH_OK)
        st = inventory_rpc_register(rt.server, &svc);
    if (st == CH_OK)
        st = service_serve(&rt);

    inventory_events_stop(&svc); /* the writer before the bus it uses */
    service_shutdown(&rt);
    inv_store_destroy(svc.store);
    if (st != CH_OK && st != CH_CANCELLED) {
        log_error("exiting on error", "status", ch_status_str(st), NULL);
        return 1;
    }
    return 0;
}
