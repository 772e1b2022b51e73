#!/usr/bin/env bash
# Fill a cart and place its order by producing `cart.updated` and `order.placed` with kcat, then read the cart back
# with the shop's storefront key (curl).
#
#   KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 ./kcat-place-order.sh
#   # and, to read the cart back: CART_URL=http://127.0.0.1:8102 STOREFRONT_KEY=ofs_... (same command)
#
# SHOP_ID, ORDER_ID and EVENT_ID may be set; a retry must reuse the same EVENT_ID (and ORDER_ID) so orderflow
# applies the order once. Ids are unique within a shop only: the storefront key (`orderflow shop credentials create
# SHOP --kind storefront`) names the shop whose cart is read. Prints `cart <cart_id> <status>` when it read the
# cart, then the order id.
set -euo pipefail

bootstrap="${KAFKA_BOOTSTRAP_SERVERS:?set KAFKA_BOOTSTRAP_SERVERS to host:port of the broker}"
new_uuid() { cat /proc/sys/kernel/random/uuid 2>/dev/null || uuidgen; }
shop_id="${SHOP_ID:-demo-shop}"
order_id="${ORDER_ID:-order-$(new_uuid | cut -c1-12)}"
cart_id="cart-$order_id"
event_id="${EVENT_ID:-$(new_uuid)}"
occurred_at="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

# One line of JSON per message: kcat -P sends one message per input line.
cart=$(cat <<JSON | tr -d '\n'
{"event_id": "$(new_uuid)", "occurred_at": "$occurred_at", "shop_id": "$shop_id", "cart_id": "$cart_id",
 "customer": {"email": "ada@example.com", "name": "Ada Lovelace"},
 "items": [{"sku": "MUG-1", "quantity": 2, "name": "Mug", "unit_price_cents": 1250}]}
JSON
)
order=$(cat <<JSON | tr -d '\n'
{"event_id": "$event_id", "occurred_at": "$occurred_at", "shop_id": "$shop_id",
 "order_id": "$order_id", "cart_id": "$cart_id",
 "customer": {"email": "ada@example.com", "name": "Ada Lovelace"},
 "items": [{"sku": "MUG-1", "name": "Mug", "quantity": 2, "unit_price_cents": 1250}],
 "total_cents": 2500, "currency": "EUR",
 "payment": {"method": "manual", "provider": "transfer"}}
JSON
)

# -X acks=all: the call returns once every in-sync replica has the message.
printf '%s\n' "$cart" | kcat -P -b "$bootstrap" -t cart.updated -k "$cart_id" -X acks=all
printf '%s\n' "$order" | kcat -P -b "$bootstrap" -t order.placed -k "$order_id" -X acks=all

if [[ -n "${CART_URL:-}" && -n "${STOREFRONT_KEY:-}" ]]; then
  # GET /carts/{cart_id} with the storefront key; 404 until the cart service has applied cart.updated.
  for _ in $(seq 1 150); do
    status=$(curl -s -o /tmp/cart-$$.json -w '%{http_code}' -H "Authorization: Bearer $STOREFRONT_KEY" \
      "${CART_URL%/}/carts/$cart_id")
    [[ "$status" != 404 ]] && break
    sleep 0.2
  done
  [[ "$status" == 200 ]] || { echo "GET /carts/$cart_id answered $status: $(cat /tmp/cart-$$.json)" >&2; exit 1; }
  echo "cart $cart_id $(python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])' < /tmp/cart-$$.json)"
  rm -f /tmp/cart-$$.json
fi
echo "$order_id"
