"""The parameters a client registers with (LwM2M TS Core §6.2.1), checked in one place.

Used by the registration interface (``lwm2m.server``), the bootstrap server and its
configuration (``lwm2m.bootstrap``). Endpoint names become MQTT topic levels, so
besides being 1..255 characters they hold no ``/``, ``+``, ``#`` or space, and follow
the MQTT rules for UTF-8 strings (MQTT 5.0 §1.5.4, 3.1.1 §1.5.3): no C0 or C1 control
(U+0000..U+001F, U+007F..U+009F), no Unicode noncharacter (U+FDD0..U+FDEF and the last
two code points of every plane, U+xxFFFE/U+xxFFFF), no surrogate. A broker closes the
connection on a topic that breaks them, which would stop the uplink for every node.
"""

from __future__ import annotations

import re

__all__ = [
    "DEFAULT_BINDING",
    "DEFAULT_LIFETIME",
    "DEFAULT_LWM2M_VERSION",
    "MAX_LIFETIME",
    "valid_binding",
    "valid_endpoint",
    "valid_lifetime",
    "valid_version",
]

DEFAULT_LIFETIME = 86400  # lt defaults to 86400 s
DEFAULT_LWM2M_VERSION = "1.0"  # an absent lwm2m parameter means 1.0
DEFAULT_BINDING = "U"
MAX_LIFETIME = 2**32 - 1
MAX_ENDPOINT = 255

# refused anywhere in an endpoint name (module docstring)
_NOT_IN_ENDPOINT = (r"\x00-\x20\x7f-\x9f/+#\ud800-\udfff\ufdd0-\ufdef"
                    + "".join(f"\\U{p:04x}fffe\\U{p:04x}ffff" for p in range(17)))
_ENDPOINT = re.compile(rf"[^{_NOT_IN_ENDPOINT}]{{1,{MAX_ENDPOINT}}}")
_VERSION = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}")
_BINDING = re.compile(r"[UMHTSNQ]{1,8}")
_LIFETIME = re.compile(r"[0-9]{1,10}")


def valid_endpoint(name: str) -> bool:
    """An endpoint client name the gateway accepts (module docstring)."""
    return _ENDPOINT.fullmatch(name) is not None


def valid_binding(text: str) -> bool:
    """Binding letters such as ``U`` or ``UQ`` (TS Core §6.2.1.1, 1.0 and 1.1 letters)."""
    return _BINDING.fullmatch(text) is not None


def valid_version(text: str) -> bool:
    """An LwM2M version such as ``1.1``."""
    return _VERSION.fullmatch(text) is not None


def valid_lifetime(text: str) -> bool:
    """A lifetime in whole seconds, 1..2^32-1, as written in a query."""
    return _LIFETIME.fullmatch(text) is not None and 1 <= int(text) <= MAX_LIFETIME
