"""The errors of aiotkit.ota: an image or a bundle that is refused, and a key or trust
file that is unusable. All are AiotErrors, so ``aiot ota`` prints them as one line."""

from __future__ import annotations

from aiotkit.boards.errors import AiotError, UsageError


class OtaError(AiotError):
    """Base of every error aiotkit.ota raises (exit status 1)."""


class ImageRejected(OtaError):
    """The image is refused. ``reason`` is one of ``aiotkit.ota.image.REASONS`` (a
    stable code a caller or a test can match); the message says what exactly."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"image rejected ({reason}): {message}")
        self.reason = reason
        self.detail = message


class ImageBuildError(UsageError):
    """What was asked of the image builder cannot be built (too large, a bad field)."""


class KeyFileError(UsageError):
    """A private key, public key or trust file that cannot be used (exit status 2)."""


class BundleError(OtaError):
    """A bundle is refused (or cannot be made). ``reason`` is one of
    ``aiotkit.ota.bundle.REASONS``; the message says what exactly."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"bundle rejected ({reason}): {message}")
        self.reason = reason
        self.detail = message
