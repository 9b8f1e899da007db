/* choreo-notifications: the notifications service. Reads its configuration,
 * folds its notifications from its stream, reacts to order.confirmed and
 * order.cancelled, serves gRPC until SIGTERM. */
#include <stdlib.h>

#include "log.h"
#include "notifications.h"
#include "service.h"

int main(int argc, char **argv)
{
    service_runtime rt;
    notifications_service svc = {0};
    ch_status st;

    int code = service_boot(&rt, argc, argv, "notifications", NOTIFICATIONS_SERVICE_NAME, "0.0.0.0:50054");
    if (code >= 0)
        return code;

    st = notifications_service_init(&svc, &rt.cfg);
    if (st == CH_OK)
        st = service_connect(&rt);
    svc.bus = rt.bus;
    if (st == CH_OK)
        st = notifications_events_start(&svc);
    if (st == CH_OK)
        st = service_create_server(&rt);
    if (st == CH_OK)
        st = notifications_rpc_register(rt.server, &svc);
    if (st == CH_OK)
        st = service_serve(&rt);

    notifications_events_stop(&svc); /* the writer before the bus it uses; the watchers are gone */
    service_shutdown(&rt);
    notifications_service_cleanup(&svc);
    if (st != CH_OK && st != CH_CANCELLED) {
        log_error("exiting on error", "status", ch_status_str(st), NULL);
        return 1;
    }
    return 0;
}
