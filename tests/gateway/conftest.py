"""Gateway test wiring: in-process gateways and a CoAP client peer.

``gateway_config`` builds a real config file on a free UDP port with its own database; ``running_gateway`` starts a ``Gateway`` in the test's loop;
``coap_peer`` is an aiocoap client context (one UDP socket, so one source address).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiocoap
import pytest
from aiotkit.gateway.app import Gateway
from aiotkit.gateway.config import GatewayConfig, load_config
from plugins.services import free_port


@pytest.fixture
def gateway_config(tmp_path: Path) -> Callable[..., GatewayConfig]:
    """``make(extra_toml="", port=None)``: a nosec config on a free UDP port."""

    def make(extra: str = "", *, port: int | None = None, name: str = "gateway.toml",
             gateway_id: str = "test") -> GatewayConfig:
        path = tmp_path / name
        path.write_text(
            "[gateway]\n"
            f'id = "{gateway_id}"\n'
            'db = "gateway.db"\n'
            'security = "nosec"\n'
            "[coap]\n"
            f"port = {port or free_port()}\n" + extra
        )
        return load_config(path)

    return make


@contextlib.asynccontextmanager
async def _running_gateway(config: GatewayConfig, **kwargs: Any) -> AsyncIterator[Gateway]:
    kwargs.setdefault("allow_nosec", config.gateway.security == "nosec")
    gw = Gateway(config, **kwargs)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.shutdown()


@contextlib.asynccontextmanager
async def _coap_peer() -> AsyncIterator[aiocoap.Context]:
    ctx = await aiocoap.Context.create_client_context(transports=["udp6"])
    try:
        yield ctx
    finally:
        await ctx.shutdown()


class FakeClock:
    """Wall-clock time the test moves by hand."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Iterator[FakeClock]:
    yield FakeClock()


@pytest.fixture
def running_gateway() -> Callable[..., contextlib.AbstractAsyncContextManager[Gateway]]:
    """``async with running_gateway(config, clock=...) as gw``: started, then shut down."""
    return _running_gateway


@pytest.fixture
def coap_peer() -> Callable[[], contextlib.AbstractAsyncContextManager[aiocoap.Context]]:
    """``async with coap_peer() as ctx``: a CoAP client with one source address."""
    return _coap_peer
