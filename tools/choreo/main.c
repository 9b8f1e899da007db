/* choreo: the command-line client of the choreo services.
 *
 *   choreo health ADDR [SERVICE]
 *   choreo orders create -c CUSTOMER -i SKU:QTY:PRICE_CENTS [-i ...] [-k IDEMPOTENCY_KEY]
 *   choreo <service> <Method> [field=value ...]   any unary method, e.g.
 *       choreo inventory SetStock sku=apple available=100
 *       choreo orders GetOrderHistory order_id=ord-...
 *   choreo events follow                     every event, live, one line each
 *   choreo events timeline ORDER_ID          one order's saga with the time between steps
 *
 * Services are found at $CHOREO_<SERVICE>_ADDR or 127.0.0.1:5005{1,2,3,4}; NATS
 * at $CHOREO_NATS_URL or nats://127.0.0.1:4222. Replies are printed as one
 * line of JSON; errors as "error: CODE: message" with exit status 1 (2 for
 * usage). */
#include <ctype.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "choreo/inventory/v1/inventory.pb-c.h"
#include "choreo/notifications/v1/notifications.pb-c.h"
#include "choreo/orders/v1/orders.pb-c.h"
#include "choreo/payment/v1/payment.pb-c.h"
#include "cli.h"
#include "grpc/health/v1/health.pb-c.h"
#include "pb_json.h"
#include "rpc_client.h"

#define CLI_TIMEOUT_MS 10000
#define CLI_MAX_ITEMS  100

static const struct cli_service {
    const char *name; /* as typed: "orders" */
    const char *env;  /* address override */
    const char *default_addr;
    const ProtobufCServiceDescriptor *desc;
} services[] = {
    {"orders", "CHOREO_ORDERS_ADDR", "127.0.0.1:50051", &choreo__orders__v1__orders__descriptor},
    {"inventory", "CHOREO_INVENTORY_ADDR", "127.0.0.1:50052", &choreo__inventory__v1__inventory__descriptor},
    {"payment", "CHOREO_PAYMENT_ADDR", "127.0.0.1:50053", &choreo__payment__v1__payment__descriptor},
    {"notifications", "CHOREO_NOTIFICATIONS_ADDR", "127.0.0.1:50054",
     &choreo__notifications__v1__notifications__descriptor},
};

static int usage(void)
{
    fputs("usage:\n"
          "  choreo health ADDR [SERVICE]\n"
          "  choreo orders create -c CUSTOMER -i SKU:QTY:PRICE_CENTS [-i ...] [-k IDEMPOTENCY_KEY]\n"
          "  choreo SERVICE METHOD [field=value ...]   (SERVICE: orders, inventory, payment, notifications)\n"
          "  choreo SERVICE                            lists the methods and their request fields\n"
          "  choreo events follow\n"
          "  choreo events timeline ORDER_ID\n",
          stderr);
    return 2;
}

static const char *service_addr(const struct cli_service *s)
{
    const char *a = getenv(s->env);
    return a && a[0] ? a : s->default_addr;
}

/* One unary call; prints the reply as JSON (or hands it over in *keep). */
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
        fprintf(stderr, "error: %s: %s (%s at %s)\n", ch_status_str(st),
                res.details[0] ? res.details : "(no message)", method, addr);
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

static int cmd_orders_create(int argc, char **argv)
{
    const char *customer = "", *key = "";
    static Choreo__Orders__V1__LineItem items[CLI_MAX_ITEMS];
    static Choreo__Orders__V1__LineItem *item_ptrs[CLI_MAX_ITEMS];
    static char skus[CLI_MAX_ITEMS][80];
    size_t n_items = 0;
    int opt;

    optind = 1;
    while ((opt = getopt(argc, argv, "c:i:k:")) != -1) {
        switch (opt) {
        case 'c': customer = optarg; break;
        case 'k': key = optarg; break;
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
    Choreo__Orders__V1__CreateOrderRequest req = CHOREO__ORDERS__V1__CREATE_ORDER_REQUEST__INIT;
    req.customer_id = (char *)customer;
    req.idempotency_key = (char *)key;
    req.n_items = n_items;
    req.items = item_ptrs;
    return call(service_addr(&services[0]), "/choreo.orders.v1.Orders/CreateOrder", &req.base,
                &choreo__orders__v1__create_order_response__descriptor, NULL);
}

/* Sets one scalar field of msg from "name=value". */
static int set_field(ProtobufCMessage *msg, const char *arg)
{
    const char *eq = strchr(arg, '=');
    char name[64];

    if (!eq || (size_t)(eq - arg) >= sizeof name) {
        fprintf(stderr, "error: \"%s\" is not field=value\n", arg);
        return -1;
    }
    memcpy(name, arg, (size_t)(eq - arg));
    name[eq - arg] = '\0';
    const char *v = eq + 1;
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field_by_name(msg->descriptor, name);
    if (!f || f->label == PROTOBUF_C_LABEL_REPEATED || f->type == PROTOBUF_C_TYPE_MESSAGE) {
        fprintf(stderr, "error: %s has no settable field \"%s\"\n", msg->descriptor->name, name);
        return -1;
    }
    void *p = (char *)msg + f->offset;
    char *end = NULL;
    switch (f->type) {
    case PROTOBUF_C_TYPE_STRING: {
        char *copy = strdup(v);
        if (!copy)
            return -1;
        *(char **)p = copy; /* freed by protobuf_c_message_free_unpacked */
        return 0;
    }
    case PROTOBUF_C_TYPE_BOOL:
        *(protobuf_c_boolean *)p = strcmp(v, "true") == 0 || strcmp(v, "1") == 0;
        return 0;
    case PROTOBUF_C_TYPE_ENUM: {
        const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value_by_name(f->descriptor, v);
        if (!ev) {
            fprintf(stderr, "error: %s: no value \"%s\"\n", name, v);
            return -1;
        }
        *(int *)p = ev->value;
        return 0;
    }
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64: *(int64_t *)p = strtoll(v, &end, 10); break;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64: *(uint64_t *)p = strtoull(v, &end, 10); break;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32: *(uint32_t *)p = (uint32_t)strtoul(v, &end, 10); break;
    default: *(int32_t *)p = (int32_t)strtol(v, &end, 10); break;
    }
    if (!end || end == v || *end) {
        fprintf(stderr, "error: %s: \"%s\" is not a number\n", name, v);
        return -1;
    }
    return 0;
}

static void list_methods(const struct cli_service *s)
{
    for (unsigned i = 0; i < s->desc->n_methods; i++) {
        const ProtobufCMethodDescriptor *m = &s->desc->methods[i];
        printf("%s", m->name);
        for (unsigned k = 0; k < m->input->n_fields; k++)
            printf(" %s=", m->input->fields[k].name);
        putchar('\n');
    }
}

static int cmd_service(const struct cli_service *s, int argc, char **argv)
{
    if (argc < 2) {
        list_methods(s);
        return 0;
    }
    if (s == &services[0] && strcmp(argv[1], "create") == 0)
        return cmd_orders_create(argc - 1, argv + 1);
    const ProtobufCMethodDescriptor *m = protobuf_c_service_descriptor_get_method_by_name(s->desc, argv[1]);
    if (!m) {
        fprintf(stderr, "error: %s has no method %s; it has:\n", s->desc->name, argv[1]);
        list_methods(s);
        return 2;
    }
    ProtobufCMessage *req = calloc(1, m->input->sizeof_message);
    if (!req)
        return 1;
    protobuf_c_message_init(m->input, req);
    for (int i = 2; i < argc; i++) {
        if (set_field(req, argv[i]) != 0) {
            protobuf_c_message_free_unpacked(req, NULL);
            return 2;
        }
    }
    char path[256];
    snprintf(path, sizeof path, "/%s/%s", s->desc->name, m->name);
    int code = call(service_addr(s), path, req, m->output, NULL);
    protobuf_c_message_free_unpacked(req, NULL);
    return code;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return usage();
    if (strcmp(argv[1], "health") == 0)
        return cmd_health(argc - 1, argv + 1);
    if (strcmp(argv[1], "events") == 0)
        return cli_events(argc - 1, argv + 1);
    for (size_t i = 0; i < sizeof services / sizeof services[0]; i++)
        if (strcmp(argv[1], services[i].name) == 0)
            return cmd_service(&services[i], argc - 1, argv + 1);
    return usage();
}
