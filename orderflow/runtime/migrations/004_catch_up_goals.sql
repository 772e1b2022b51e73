-- Written by `orderflow replay` / `rebuild` while a service's workers are stopped: the end offset, as of the reset,
-- each (consumer group, topic, partition) must reach. Until a topic's goals are reached, what waits for it waits:
-- the cart's abandon scanner (no "your cart is waiting" mail from a half-replayed state) and inventory's
-- order.status handler (stock.adjusted first, so no order is refused for an unknown SKU only because the replay
-- reached it before its restock).
CREATE TABLE IF NOT EXISTS catch_up_goals (
    consumer  text    NOT NULL,
    topic     text    NOT NULL,
    partition integer NOT NULL,
    goal      bigint  NOT NULL,
    PRIMARY KEY (consumer, topic, partition)
);
