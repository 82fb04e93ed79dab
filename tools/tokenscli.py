"""``aiot tokens``: the REST API's tokens file (``gateway/api/tokens.py``).

``aiot tokens new`` prints a fresh random token (give it to the client) and, on a second
line, its ``sha256:`` form (for the tokens file, which then holds no secret). ``aiot
tokens hash`` prints the ``sha256:`` form of a token read from standard input (asked for
without echo on a terminal), never from the command line, where other users and the
shell's history would see it.
"""

from __future__ import annotations

import argparse
import getpass
import secrets
import sys
from typing import Any

from aiotkit.boards.errors import UsageError

__all__ = ["register"]

TOKEN_BYTES = 32  # 256 random bits, 43 characters of URL-safe base64


def cmd_new(args: argparse.Namespace) -> int:
    from aiotkit.gateway.api.tokens import token_line_form

    token = secrets.token_urlsafe(TOKEN_BYTES)
    print(token)
    print(token_line_form(token))
    return 0


def cmd_hash(args: argparse.Namespace) -> int:
    from aiotkit.gateway.api.tokens import MIN_TOKEN_CHARS, token_line_form

    if sys.stdin.isatty():
        token = getpass.getpass("token: ")
    else:
        token = sys.stdin.readline().rstrip("\r\n")
    if len(token.strip()) < MIN_TOKEN_CHARS or token != token.strip():
        raise UsageError(f"a token is {MIN_TOKEN_CHARS} characters at least, without"
                         " spaces around it (read from standard input)")
    print(token_line_form(token))
    return 0


def register(subparsers: Any) -> None:
    """Add ``aiot tokens ...`` to the aiot parser."""
    tk = subparsers.add_parser(
        "tokens", help="make REST API tokens and their sha256: form for the tokens file",
        description="Lines of the REST API's tokens file are ROLE TOKEN [NAME] "
        "[expires=TIME] [revoked]; TOKEN may be sha256:HEX so the file holds no secret.")
    sub = tk.add_subparsers(dest="tokens_command", metavar="ACTION")
    sub.required = True
    sub.add_parser("new", help="print a new random token, then its sha256: form"
                   ).set_defaults(func=cmd_new)
    sub.add_parser("hash", help="print the sha256: form of the token on standard input"
                   ).set_defaults(func=cmd_hash)
