"""Argument types the ``aiot`` sub-commands share: each turns a command-line word into a
value or raises ``argparse.ArgumentTypeError``, which argparse prints as one usage line
with exit status 2."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be greater than 0")
    return v


def nonneg_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"{text} must be 0 or more")
    return v


def host_port(text: str, default_port: int = 1883) -> tuple[str, int]:
    """``HOST[:PORT]`` (``[V6ADDR]:PORT`` for IPv6) as an argparse type; the port is
    optional."""
    host, port = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] not in ("", ":"):
            raise argparse.ArgumentTypeError(f"{text!r}: expected [IPV6]:PORT")
        host, port = text[1:end], text[end + 2 :]
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host:
        raise argparse.ArgumentTypeError(f"{text!r}: no host (expected HOST[:PORT])")
    if not port:
        return host, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r}: port must be 1..65535")
    return host, int(port)


def port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0..65535)")
    return int(text)
