"""The operators' REST API (``rest``: ``RestApi``, its route table ``ROUTES``), its bearer
tokens (``tokens``: ``Token``s with a ``Role``, the tokens file), its audit log
(``audit``) and TLS (``tls``), described in ``openapi.json`` beside it. aiohttp is imported
when the API starts."""

from .rest import ROUTES, ApiError, RestApi, minimum_role
from .tokens import Role, Token, load_tokens, parse_tokens

__all__ = ["ROUTES", "ApiError", "RestApi", "Role", "Token", "load_tokens", "minimum_role",
           "parse_tokens"]
