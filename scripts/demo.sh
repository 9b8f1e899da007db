#!/usr/bin/env bash
# The choreo demo: the whole choreographed saga on a local stack.
#
# Starts NATS and the four services (scripts/stack.sh, fresh data under
# .data/demo), seeds stock and credit, places orders that succeed, run out of
# stock and get declined, cancels a confirmed one, then prints the event flow,
# each order's final state, stock, balances and notifications, and how to call
# the services yourself. The stack keeps running afterwards: `make down` stops it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BUILD_DIR=${CHOREO_BUILD_DIR:-build}
CLI=$BUILD_DIR/tools/choreo/choreo
export CHOREO_DATA_DIR=${CHOREO_DATA_DIR:-.data/demo}
mkdir -p .run
EVENTS_LOG=.run/demo-events.log

if [ -t 1 ]; then BOLD=$'\033[1m' OFF=$'\033[0m'; else BOLD="" OFF=""; fi
step() { printf '\n%s== %s ==%s\n' "$BOLD" "$*" "$OFF"; }
run() {
    printf '$ choreo %s\n' "$*"
    "$CLI" "$@"
}
field() { # field NAME < json: the first "NAME":"value" (or number)
    grep -o "\"$1\":\"\?[^\",}]*" | head -n 1 | sed 's/.*:"\{0,1\}//'
}

step "Starting NATS JetStream and the four services (fresh data in $CHOREO_DATA_DIR)"
bash scripts/stack.sh down >/dev/null 2>&1 || true
rm -rf "$CHOREO_DATA_DIR"
bash scripts/stack.sh up

# Watch the whole flow while the demo runs.
"$CLI" events follow >"$EVENTS_LOG" 2>/dev/null &
FOLLOW=$!
trap 'kill $FOLLOW 2>/dev/null || true' EXIT
sleep 0.3

step "Seeding stock and credit"
run inventory SetStock sku=apple available=100
run inventory SetStock sku=pear available=50
run inventory SetStock sku=unicorn available=0
run payment CreditAccount customer_id=alice amount_cents=100000 idempotency_key=seed-alice
run payment CreditAccount customer_id=bob amount_cents=500 idempotency_key=seed-bob

create() { # create CUSTOMER ITEM... -> prints the order id
    local customer=$1
    shift
    local args=(orders create -c "$customer")
    for it in "$@"; do args+=(-i "$it"); done
    printf '$ choreo %s\n' "${args[*]}" >&2
    "$CLI" "${args[@]}" | tee /dev/stderr | field order_id
}

wait_status() { # wait_status ORDER_ID STATUS...: polls until one of them (10 s)
    local id=$1 status=""
    shift
    for _ in $(seq 100); do
        status=$("$CLI" orders GetOrder order_id="$id" | field status)
        for want in "$@"; do
            [ "$status" = "ORDER_STATUS_$want" ] && return 0
        done
        sleep 0.1
    done
    echo "demo: order $id is still $status" >&2
    return 1
}

step "Placing orders"
echo "# alice buys 2 apples: stock and money are there, so it is confirmed"
HAPPY=$(create alice apple:2:1500)
echo "# alice wants a unicorn: none in stock, so inventory.failed cancels it"
NOSTOCK=$(create alice unicorn:1:99900)
echo "# bob buys 3 pears with 5.00 on his account: payment declines, the reservation is released"
DECLINED=$(create bob pear:3:1000)
echo "# alice buys a pear, and cancels it once it is confirmed: refund and restock"
CANCEL=$(create alice pear:1:800)

wait_status "$HAPPY" CONFIRMED
wait_status "$NOSTOCK" CANCELLED
wait_status "$DECLINED" CANCELLED
wait_status "$CANCEL" CONFIRMED
run orders CancelOrder order_id="$CANCEL" reason="changed my mind"
wait_status "$CANCEL" CANCELLED
sleep 0.5 # let the notifications land

step "The event flow, as it happened (choreo events follow)"
cat "$EVENTS_LOG"

step "One order's saga with the time between steps (choreo events timeline $CANCEL)"
"$CLI" events timeline "$CANCEL"

step "Final state"
for id in "$HAPPY" "$NOSTOCK" "$DECLINED" "$CANCEL"; do
    run orders GetOrder order_id="$id"
done
run inventory ListStock
run payment GetAccount customer_id=alice
run payment GetAccount customer_id=bob
run notifications ListNotifications customer_id=alice
run notifications ListNotifications customer_id=bob

step "Try it yourself"
cat <<TXT
The stack is still running (make status; make down stops it). With grpcurl
(no proto files needed: every service serves reflection):

  grpcurl -plaintext localhost:50051 list
  grpcurl -plaintext localhost:50051 describe choreo.orders.v1.Orders
  grpcurl -plaintext -d '{"customer_id":"alice","items":[{"sku":"apple","quantity":1,"unit_price_cents":1500}]}' \\
      localhost:50051 choreo.orders.v1.Orders/CreateOrder
  grpcurl -plaintext -d '{"order_id":"$CANCEL"}' localhost:50051 choreo.orders.v1.Orders/GetOrderHistory
  grpcurl -plaintext -d '{"sku":"apple"}' localhost:50052 choreo.inventory.v1.Inventory/GetStock
  grpcurl -plaintext -d '{"customer_id":"alice"}' localhost:50053 choreo.payment.v1.Payment/GetAccount
  grpcurl -plaintext -d '{"customer_id":"alice"}' localhost:50054 choreo.notifications.v1.Notifications/WatchNotifications

Or with the project's own client, which needs nothing else:

  $CLI orders create -c alice -i apple:1:1500
  $CLI orders GetOrderHistory order_id=$CANCEL
  $CLI events follow          # live, one line per event
  $CLI events timeline $CANCEL
TXT
