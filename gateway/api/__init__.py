"""The operators' REST API (``rest``: ``RestApi``, bearer ``Token``s with a ``Role``),
described in ``openapi.json`` beside it. aiohttp is imported when the API starts."""

from .rest import ApiError, RestApi, Role, Token, load_tokens, parse_tokens

__all__ = ["ApiError", "RestApi", "Role", "Token", "load_tokens", "parse_tokens"]
