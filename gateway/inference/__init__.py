"""Inference on the gateway: the shadow check of the nodes' on-device decisions
(``shadow``: ``ShadowChecker`` replays each decision through the same models with
tflite-micro; ``ShadowUnavailable`` when numpy or tflite-micro is missing)."""

from .shadow import ShadowChecker, ShadowUnavailable

__all__ = ["ShadowChecker", "ShadowUnavailable"]
