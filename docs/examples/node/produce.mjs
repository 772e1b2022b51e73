// Fill a cart and place its order by producing `cart.updated` and `order.placed` with kafkajs, then read the cart
// back with the shop's storefront key (fetch).
//
//   npm ci && KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 node produce.mjs
//   // and, to read the cart back: CART_URL=http://127.0.0.1:8102 STOREFRONT_KEY=ofs_... (same command)
//
// SHOP_ID, ORDER_ID and EVENT_ID may be set; a retry must reuse the same EVENT_ID so orderflow applies it once.
// Ids are unique within a shop only: the storefront key (`orderflow shop credentials create SHOP --kind
// storefront`) names the shop whose cart is read. Prints `cart <cart_id> <status>` when it read the cart, then the
// order id.
import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { Kafka, logLevel } from "kafkajs";

const brokers = (process.env.KAFKA_BOOTSTRAP_SERVERS ?? "").split(",").filter(Boolean);
if (brokers.length === 0) {
  console.error("set KAFKA_BOOTSTRAP_SERVERS to host:port of the broker");
  process.exit(2);
}

const shopId = process.env.SHOP_ID || "demo-shop";
const orderId = process.env.ORDER_ID || `order-${randomUUID().slice(0, 12)}`;
const cartId = `cart-${orderId}`;
const customer = { email: "ada@example.com", name: "Ada Lovelace" };
const cart = {
  event_id: randomUUID(),
  occurred_at: new Date().toISOString(),
  shop_id: shopId,
  cart_id: cartId,
  customer,
  items: [{ sku: "MUG-1", quantity: 2, name: "Mug", unit_price_cents: 1250 }],
};
const order = {
  event_id: process.env.EVENT_ID || randomUUID(), // keep it when retrying
  occurred_at: new Date().toISOString(),
  shop_id: shopId,
  order_id: orderId,
  cart_id: cartId,
  customer,
  items: [{ sku: "MUG-1", name: "Mug", quantity: 2, unit_price_cents: 1250 }],
  total_cents: 2500, // integer minor units
  currency: "EUR",
  payment: { method: "manual", provider: "transfer" },
};

const kafka = new Kafka({ clientId: "storefront-example", brokers, logLevel: logLevel.WARN });
// Idempotent producer: the client's own retries never write the message twice.
const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
await producer.connect();
try {
  await producer.send({ topic: "cart.updated", acks: -1, messages: [{ key: cartId, value: JSON.stringify(cart) }] });
  await producer.send({ topic: "order.placed", acks: -1, messages: [{ key: orderId, value: JSON.stringify(order) }] });
} finally {
  await producer.disconnect();
}

const { CART_URL: cartUrl, STOREFRONT_KEY: storefrontKey } = process.env;
if (cartUrl && storefrontKey) {
  // GET /carts/{cart_id} with the storefront key; 404 until the cart service has applied cart.updated.
  const url = `${cartUrl.replace(/\/$/, "")}/carts/${encodeURIComponent(cartId)}`;
  let response;
  for (let tries = 0; tries < 150; tries++) {
    response = await fetch(url, { headers: { Authorization: `Bearer ${storefrontKey}` } });
    if (response.status !== 404) break;
    await sleep(200);
  }
  if (response.status !== 200) {
    console.error(`GET /carts/${cartId} answered ${response.status}: ${await response.text()}`);
    process.exit(1);
  }
  const seen = await response.json();
  console.log(`cart ${seen.cart_id} ${seen.status}`);
}
console.log(orderId);
