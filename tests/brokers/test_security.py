"""Kafka security settings from the environment: what reaches aiokafka, and clear mistakes."""

from __future__ import annotations

import re
import ssl

import pytest

from brokers.security import KafkaSecurity, KafkaSecurityError


def test_kafka_security_defaults_to_plaintext_and_reads_sasl_ssl_from_the_environment() -> None:
    assert KafkaSecurity.from_env({}).client_kwargs() == {"security_protocol": "PLAINTEXT"}
    env = {
        "WORLDLM_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
        "WORLDLM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "WORLDLM_KAFKA_USERNAME": "latin",
        "WORLDLM_KAFKA_PASSWORD": "s3cret",
    }
    security = KafkaSecurity.from_env(env)
    kwargs = security.client_kwargs()
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert (kwargs["sasl_mechanism"], kwargs["sasl_plain_username"]) == ("SCRAM-SHA-512", "latin")
    assert kwargs["sasl_plain_password"] == "s3cret"
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)
    assert "s3cret" not in repr(security)  # the password stays out of logs


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"WORLDLM_KAFKA_SECURITY_PROTOCOL": "TLS"}, "WORLDLM_KAFKA_SECURITY_PROTOCOL='TLS'"),
        (
            {"WORLDLM_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"},
            "WORLDLM_KAFKA_SASL_MECHANISM=None",
        ),
        (
            {
                "WORLDLM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "WORLDLM_KAFKA_SASL_MECHANISM": "PLAIN",
            },
            "needs WORLDLM_KAFKA_USERNAME and WORLDLM_KAFKA_PASSWORD",
        ),
        ({"WORLDLM_KAFKA_CAFILE": "/ca.pem"}, "PLAINTEXT does not use TLS"),
    ],
    ids=["unknown_protocol", "sasl_without_mechanism", "sasl_without_credentials", "ca_no_tls"],
)
def test_kafka_security_mistakes_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(KafkaSecurityError, match=re.escape(named)):
        KafkaSecurity.from_env(env)
