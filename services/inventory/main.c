/* choreo-inventory: the inventory service. Reads its configuration, replays
 * its ledger, reacts to the saga's events and serves gRPC until SIGTERM. */
#include <pthread.h>

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
    pthread_mutex_init(&svc.mu, NULL);

    st = inv_store_create(&svc.store);
    if (st == CH_OK)
        st = service_connect(&rt);
    svc.bus = rt.bus;
    if (st == CH_OK)
        st = inventory_ledger_open(&svc);
    if (st == CH_OK)
        st = inventory_workers_start(&svc);
    if (st == CH_OK)
        st = service_create_server(&rt);
    if (st == CH_OK)
        st = inventory_rpc_register(rt.server, &svc);
    if (st == CH_OK)
        st = service_serve(&rt);

    inventory_workers_stop(&svc); /* before the bus goes */
    inventory_ledger_close(&svc);
    service_shutdown(&rt);
    inv_store_destroy(svc.store);
    pthread_mutex_destroy(&svc.mu);
    if (st != CH_OK && st != CH_CANCELLED) {
        log_error("exiting on error", "status", ch_status_str(st), NULL);
        return 1;
    }
    return 0;
}
