"""The OTA service's one error type: what a caller (the REST API) answers with."""

from __future__ import annotations

from ..errors import GatewayError


class OtaServiceError(GatewayError):
    """A request to the OTA service that cannot be done: ``status`` (HTTP), ``kind`` (a
    stable code), the message; ``reason`` for a refused image (``ota.image.REASONS``)."""

    def __init__(self, status: int, kind: str, message: str,
                 reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.reason = reason
