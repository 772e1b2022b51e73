#!/usr/bin/env bash
# Place one order by producing `order.placed` with kcat, keyed by its order id.
#
#   KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 ./kcat-place-order.sh
#
# SHOP_ID, ORDER_ID and EVENT_ID may be set; a retry must reuse the same EVENT_ID (and ORDER_ID) so orderflow
# applies the order once. Prints the order id.
set -euo pipefail

bootstrap="${KAFKA_BOOTSTRAP_SERVERS:?set KAFKA_BOOTSTRAP_SERVERS to host:port of the broker}"
new_uuid() { cat /proc/sys/kernel/random/uuid 2>/dev/null || uuidgen; }
shop_id="${SHOP_ID:-demo-shop}"
order_id="${ORDER_ID:-order-$(new_uuid | cut -c1-12)}"
event_id="${EVENT_ID:-$(new_uuid)}"
occurred_at="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

# One line of JSON: kcat -P sends one message per input line.
value=$(cat <<JSON | tr -d '\n'
{"event_id": "$event_id", "occurred_at": "$occurred_at", "shop_id": "$shop_id",
 "order_id": "$order_id", "cart_id": "cart-$order_id",
 "customer": {"email": "ada@example.com", "name": "Ada Lovelace"},
 "items": [{"sku": "MUG-1", "name": "Mug", "quantity": 2, "unit_price_cents": 1250}],
 "total_cents": 2500, "currency": "EUR",
 "payment": {"method": "manual", "provider": "transfer"}}
JSON
)

# -X acks=all: the call returns once every in-sync replica has the message.
printf '%s\n' "$value" | kcat -P -b "$bootstrap" -t order.placed -k "$order_id" -X acks=all
echo "$order_id"
