// Place one order by producing `order.placed` with kafkajs, keyed by its order id.
//
//   npm ci && KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 node produce.mjs
//
// SHOP_ID, ORDER_ID and EVENT_ID may be set; a retry must reuse the same EVENT_ID so orderflow applies it once.
// Prints the order id.
import { randomUUID } from "node:crypto";
import { Kafka, logLevel } from "kafkajs";

const brokers = (process.env.KAFKA_BOOTSTRAP_SERVERS ?? "").split(",").filter(Boolean);
if (brokers.length === 0) {
  console.error("set KAFKA_BOOTSTRAP_SERVERS to host:port of the broker");
  process.exit(2);
}

const orderId = process.env.ORDER_ID || `order-${randomUUID().slice(0, 12)}`;
const event = {
  event_id: process.env.EVENT_ID || randomUUID(), // keep it when retrying
  occurred_at: new Date().toISOString(),
  shop_id: process.env.SHOP_ID || "demo-shop",
  order_id: orderId,
  cart_id: `cart-${orderId}`,
  customer: { email: "ada@example.com", name: "Ada Lovelace" },
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
  await producer.send({
    topic: "order.placed",
    acks: -1,
    messages: [{ key: event.order_id, value: JSON.stringify(event) }],
  });
} finally {
  await producer.disconnect();
}
console.log(orderId);
