"""Settings: defaults, and one clear line naming the variable when a value is wrong."""

from __future__ import annotations

import pytest

from orderflow.settings import SettingsError, load_settings


def load(**env: str):
    return load_settings("orders", "ORDERS_HTTP_PORT", 8101, env=env)


def test_defaults_follow_the_design():
    s = load()
    assert s.topic_partitions == 8
    assert s.abandon_after_seconds == 3600
    assert s.http_port == 8101
    assert s.app_id == "orderflow-orders"


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"TOPIC_PARTITIONS": "eight"}, "TOPIC_PARTITIONS"),
        ({"TOPIC_PARTITIONS": "0"}, "TOPIC_PARTITIONS"),
        ({"ORDERS_HTTP_PORT": "70000"}, "ORDERS_HTTP_PORT"),
        ({"KAFKA_BOOTSTRAP_SERVERS": "localhost"}, "KAFKA_BOOTSTRAP_SERVERS"),
        ({"DATABASE_URL": "mysql://x/y"}, "DATABASE_URL"),
        ({"SMTP_STARTTLS": "maybe"}, "SMTP_STARTTLS"),
        ({"PUBLIC_STORE_URL": "shop.example"}, "PUBLIC_STORE_URL"),
        ({"ABANDON_AFTER_SECONDS": "-5"}, "ABANDON_AFTER_SECONDS"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "KAFKA_SASL_MECHANISM"),
        ({"MAIL_SMTP_CONNECTIONS": "0"}, "MAIL_SMTP_CONNECTIONS"),
    ],
)
def test_a_wrong_value_names_its_variable_in_one_line(env, names):
    with pytest.raises(SettingsError) as caught:
        load(**env)
    message = str(caught.value)
    assert names in message
    assert "\n" not in message
