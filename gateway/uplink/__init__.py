"""The cloud uplink: the storage's durable outbox published over MQTT 5 with QoS 1
(``mqtt``: ``Uplink``; ``TopicScheme``, the topics and payloads; ``Backoff``)."""

from .mqtt import KEEP_CONFIRMED, Backoff, TopicScheme, Uplink

__all__ = ["KEEP_CONFIRMED", "Backoff", "TopicScheme", "Uplink"]
