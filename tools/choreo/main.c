/* choreo: the command-line client of the choreo services.
 *
 *   choreo health ADDR [SERVICE]
 *   choreo orders create [-a ADDR] -c CUSTOMER -i SKU:QTY:PRICE_CENTS [-i ...] [-k KEY]
 *   choreo orders get|history [-a ADDR] ORDER_ID
 *   choreo orders list [-a ADDR] [-c CUSTOMER] [-n PAGE_SIZE] [-t PAGE_TOKEN]
 *
 * Replies are printed as one line of JSON; errors as "error: CODE: message"
 * with exit status 1 (2 for usage). ADDR defaults to $CHOREO_ORDERS_ADDR or
 * 127.0.0.1:50051. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "choreo/orders/v1/orders.pb-c.h"
#include "grpc/health/v1/health.pb-c.h"
#include "pb_json.h"
#include "rpc_client.h"

#define CLI_TIMEOUT_MS 10000
#define CLI_MAX_ITEMS  100

static int usage(void)
{
    fputs(
        "usage:\n"
        "  choreo health ADDR [SERVICE]\n"
        "  choreo orders create [-a ADDR] -c CUSTOMER -i SKU:QTY:PRICE_CENTS [-i ...] [-k IDEMPOTENCY_KEY]\n"
        "  choreo orders get [-a ADDR] ORDER_ID\n"
        "  choreo orders history [-a ADDR] ORDER_ID\n"
        "  choreo orders list [-a ADDR] [-c CUSTOMER] [-n PAGE_SIZE] [-t PAGE_TOKEN]\n",
        stderr);
    return 2;
}

/* One unary call; prints the reply as JSON or the error. Returns the exit code. */
static int call(const char *addr, const char *method, const ProtobufCMessage *req,
                const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **keep)
{
    rpc_client *c = NULL;
    rpc_client_result res;
    ProtobufCMessage *resp = NULL;

    if (rpc_client_create(&c, addr) != CH_OK) {
        fprintf(stderr, "error: cannot open a channel to %s\n", addr);
        return 1;
    }
    ch_status st = rpc_client_call(c, method, NULL, 0, req, resp_desc, &resp, CLI_TIMEOUT_MS, &res);
    rpc_client_destroy(c);
    if (st != CH_OK) {
        fprintf(stderr, "error: %s: %s\n", ch_status_str(st), res.details[0] ? res.details : "(no message)");
        return 1;
    }
    if (keep) {
        *keep = resp;
        return 0;
    }
    pb_json_print(stdout, resp);
    fputc('\n', stdout);
    protobuf_c_message_free_unpacked(resp, NULL);
    return 0;
}

static int cmd_health(int argc, char **argv)
{
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;

    if (argc < 2 || argc > 3)
        return usage();
    req.service = argc == 3 ? argv[2] : (char *)"";
    int code = call(argv[1], "/grpc.health.v1.Health/Check", &req.base,
                    &grpc__health__v1__health_check_response__descriptor, &resp);
    if (code != 0)
        return code;
    int status = (int)((Grpc__Health__V1__HealthCheckResponse *)resp)->status;
    protobuf_c_message_free_unpacked(resp, NULL);
    puts(status == 1 ? "SERVING" : status == 2 ? "NOT_SERVING" : "UNKNOWN");
    return status == 1 ? 0 : 1;
}

/* Parses "SKU:QTY:PRICE_CENTS". */
static int parse_item(const char *s, Choreo__Orders__V1__LineItem *li, char *sku, size_t cap)
{
    const char *c1 = strchr(s, ':');
    const char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
    char *end;

    if (!c1 || !c2 || (size_t)(c1 - s) >= cap) {
        fprintf(stderr, "error: item \"%s\" is not SKU:QTY:PRICE_CENTS\n", s);
        return -1;
    }
    memcpy(sku, s, (size_t)(c1 - s));
    sku[c1 - s] = '\0';
    unsigned long qty = strtoul(c1 + 1, &end, 10);
    if (end != c2 || qty > UINT32_MAX) {
        fprintf(stderr, "error: item \"%s\": bad quantity\n", s);
        return -1;
    }
    long long price = strtoll(c2 + 1, &end, 10);
    if (*end != '\0') {
        fprintf(stderr, "error: item \"%s\": bad price\n", s);
        return -1;
    }
    *li = (Choreo__Orders__V1__LineItem)CHOREO__ORDERS__V1__LINE_ITEM__INIT;
    li->sku = sku;
    li->quantity = (uint32_t)qty;
    li->unit_price_cents = price;
    return 0;
}

static int cmd_orders(int argc, char **argv)
{
    const char *addr = getenv("CHOREO_ORDERS_ADDR") ? getenv("CHOREO_ORDERS_ADDR") : "127.0.0.1:50051";
    const char *customer = "", *key = "", *token = "";
    static Choreo__Orders__V1__LineItem items[CLI_MAX_ITEMS];
    static Choreo__Orders__V1__LineItem *item_ptrs[CLI_MAX_ITEMS];
    static char skus[CLI_MAX_ITEMS][80];
    size_t n_items = 0;
    unsigned page_size = 0;
    int opt;

    if (argc < 2)
        return usage();
    const char *sub = argv[1];
    optind = 2;
    while ((opt = getopt(argc, argv, "a:c:i:k:n:t:")) != -1) {
        switch (opt) {
        case 'a': addr = optarg; break;
        case 'c': customer = optarg; break;
        case 'k': key = optarg; break;
        case 't': token = optarg; break;
        case 'n': page_size = (unsigned)strtoul(optarg, NULL, 10); break;
        case 'i':
            if (n_items == CLI_MAX_ITEMS) {
                fprintf(stderr, "error: at most %d items\n", CLI_MAX_ITEMS);
                return 2;
            }
            if (parse_item(optarg, &items[n_items], skus[n_items], sizeof skus[n_items]) != 0)
                return 2;
            item_ptrs[n_items] = &items[n_items];
            n_items++;
            break;
        default: return usage();
        }
    }
    if (strcmp(sub, "create") == 0) {
        Choreo__Orders__V1__CreateOrderRequest req = CHOREO__ORDERS__V1__CREATE_ORDER_REQUEST__INIT;
        req.customer_id = (char *)customer;
        req.idempotency_key = (char *)key;
        req.n_items = n_items;
        req.items = item_ptrs;
        return call(addr, "/choreo.orders.v1.Orders/CreateOrder", &req.base,
                    &choreo__orders__v1__create_order_response__descriptor, NULL);
    }
    if (strcmp(sub, "list") == 0) {
        Choreo__Orders__V1__ListOrdersRequest req = CHOREO__ORDERS__V1__LIST_ORDERS_REQUEST__INIT;
        req.customer_id = (char *)customer;
        req.page_size = page_size;
        req.page_token = (char *)token;
        return call(addr, "/choreo.orders.v1.Orders/ListOrders", &req.base,
                    &choreo__orders__v1__list_orders_response__descriptor, NULL);
    }
    if (optind != argc - 1)
        return usage();
    char *id = argv[optind];
    if (strcmp(sub, "get") == 0) {
        Choreo__Orders__V1__GetOrderRequest req = CHOREO__ORDERS__V1__GET_ORDER_REQUEST__INIT;
        req.order_id = id;
        return call(addr, "/choreo.orders.v1.Orders/GetOrder", &req.base,
                    &choreo__orders__v1__get_order_response__descriptor, NULL);
    }
    if (strcmp(sub, "history") == 0) {
        Choreo__Orders__V1__GetOrderHistoryRequest req = CHOREO__ORDERS__V1__GET_ORDER_HISTORY_REQUEST__INIT;
        req.order_id = id;
        return call(addr, "/choreo.orders.v1.Orders/GetOrderHistory", &req.base,
                    &choreo__orders__v1__get_order_history_response__descriptor, NULL);
    }
    return usage();
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return usage();
    if (strcmp(argv[1], "health") == 0)
        return cmd_health(argc - 1, argv + 1);
    if (strcmp(argv[1], "orders") == 0)
        return cmd_orders(argc - 1, argv + 1);
    return usage();
}
