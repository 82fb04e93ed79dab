"""The cloud uplink: the storage's durable outbox published over MQTT 5 with QoS 1
(``mqtt``: ``Uplink``; ``TopicScheme``, the topics and payloads; ``Backoff`` and
``TokenBucket``, reconnects and catch-up pacing; ``sparkplug``: the Sparkplug B 3.0
format; ``consumer_example``: a consumer that de-duplicates by message id)."""

from .mqtt import KEEP_CONFIRMED, Backoff, TokenBucket, TopicScheme, Uplink

__all__ = ["KEEP_CONFIRMED", "Backoff", "TokenBucket", "TopicScheme", "Uplink"]
