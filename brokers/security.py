"""How to authenticate to Kafka and encrypt the connection: deployment configuration.

:class:`KafkaSecurity` is read from the environment and handed to every aiokafka client
(:class:`brokers.kafka.KafkaSettings` carries it); a setting that cannot work is a
:class:`KafkaSecurityError` naming its variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from aiokafka.helpers import create_ssl_context

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class KafkaSecurityError(ValueError):
    """Kafka security settings that cannot work (named by their environment variable)."""


@dataclass(frozen=True)
class KafkaSecurity:
    """How to authenticate to Kafka and encrypt the connection: deployment configuration.

    Read from the environment, so every participant, the dashboard and the tools of one
    deployment pick it up without flags (and secrets stay out of command lines):
    ``WORLDLM_KAFKA_SECURITY_PROTOCOL`` (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL),
    ``WORLDLM_KAFKA_SASL_MECHANISM`` (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512),
    ``WORLDLM_KAFKA_USERNAME``, ``WORLDLM_KAFKA_PASSWORD`` and ``WORLDLM_KAFKA_CAFILE``
    (the CA bundle that signed the brokers' certificates; the system's when unset).
    """

    protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    cafile: str | None = None

    def __post_init__(self) -> None:
        env = "WORLDLM_KAFKA_"
        if self.protocol not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
            raise KafkaSecurityError(
                f"{env}SECURITY_PROTOCOL={self.protocol!r}: use PLAINTEXT, SSL, "
                "SASL_PLAINTEXT or SASL_SSL"
            )
        if self.protocol.startswith("SASL"):
            if self.sasl_mechanism not in SASL_MECHANISMS:
                raise KafkaSecurityError(
                    f"{env}SASL_MECHANISM={self.sasl_mechanism!r}: use one of {SASL_MECHANISMS}"
                )
            if not self.username or self.password is None:
                raise KafkaSecurityError(
                    f"{env}SECURITY_PROTOCOL={self.protocol} needs {env}USERNAME and {env}PASSWORD"
                )
        if self.cafile is not None and not self.protocol.endswith("SSL"):
            raise KafkaSecurityError(f"{env}CAFILE is set but {self.protocol} does not use TLS")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KafkaSecurity:
        env = os.environ if environ is None else environ
        protocol = env.get("WORLDLM_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT").upper()
        return cls(
            protocol=protocol,  # type: ignore[arg-type]  # checked in __post_init__
            sasl_mechanism=env.get("WORLDLM_KAFKA_SASL_MECHANISM") or None,
            username=env.get("WORLDLM_KAFKA_USERNAME") or None,
            password=env.get("WORLDLM_KAFKA_PASSWORD"),
            cafile=env.get("WORLDLM_KAFKA_CAFILE") or None,
        )

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka's producer, consumer and admin client."""
        kwargs: dict[str, Any] = {"security_protocol": self.protocol}
        if self.protocol.endswith("SSL"):
            kwargs["ssl_context"] = create_ssl_context(cafile=self.cafile)
        if self.protocol.startswith("SASL"):
            kwargs |= {
                "sasl_mechanism": self.sasl_mechanism,
                "sasl_plain_username": self.username,
                "sasl_plain_password": self.password,
            }
        return kwargs
