"""The REST API over TLS (``[rest] tls_cert`` / ``tls_key``): a self-signed certificate
made here, an https client trusting only it, and plain HTTP refused on that port."""

from __future__ import annotations

import asyncio
import datetime
import http.client
import ipaddress
import json
import ssl
import urllib.error
import urllib.request

import pytest
from aiotkit.gateway.config import check_runnable
from aiotkit.gateway.errors import ConfigError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from test_rest_security import VIEWER


def self_signed(folder) -> tuple[str, str]:
    """A certificate for 127.0.0.1 / localhost, its own CA: (cert.pem, key.pem)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aiot test gateway")])
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(public).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public),
                           critical=False)
            .sign(key, hashes.SHA256()))
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (folder / "key.pem").chmod(0o600)
    return "cert.pem", "key.pem"


@pytest.fixture
def tls_config(gateway_config, tmp_path):
    (tmp_path / "tokens").write_text(f"viewer {VIEWER} vera\n")
    (tmp_path / "tokens").chmod(0o600)

    def make(cert: str, key: str) -> object:
        return gateway_config('[rest]\nenabled = true\nport = 0\ntokens_file = "tokens"\n'
                              f'tls_cert = "{cert}"\ntls_key = "{key}"\n')

    return make


def _get(url: str, context: ssl.SSLContext | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {VIEWER}"})
    with urllib.request.urlopen(request, timeout=5, context=context) as resp:
        return resp.status, json.loads(resp.read())


async def test_the_api_is_served_over_https_with_the_configured_certificate(
        tls_config, running_gateway, tmp_path):
    cert, key = self_signed(tmp_path)
    cfg = tls_config(cert, key)
    check_runnable(cfg, allow_nosec=True)  # 'aiot gateway check' loads them too
    async with running_gateway(cfg) as gw:
        assert gw.rest.url.startswith("https://127.0.0.1:")
        trust = ssl.create_default_context(cafile=str(tmp_path / cert))
        status, body = await asyncio.to_thread(_get, gw.rest.url + "/api/v1", trust)
        assert (status, body["role"], body["token"]) == (200, "viewer", "vera")
        with pytest.raises(urllib.error.URLError) as refused:  # an untrusting client
            await asyncio.to_thread(_get, gw.rest.url + "/api/v1",
                                    ssl.create_default_context())
        assert isinstance(refused.value.reason, ssl.SSLCertVerificationError)
        plain = gw.rest.url.replace("https://", "http://") + "/api/v1"
        with pytest.raises((OSError, http.client.HTTPException)):  # no HTTP answer
            await asyncio.to_thread(_get, plain)
        status, _ = await asyncio.to_thread(_get, gw.rest.url + "/api/v1", trust)
        assert status == 200  # and it still serves


async def test_a_certificate_that_cannot_be_used_stops_the_start_with_one_line(
        tls_config, running_gateway, tmp_path):
    cert, key = self_signed(tmp_path)
    (tmp_path / "other.pem").write_text("-----BEGIN PRIVATE KEY-----\nnope\n")
    for c, k in ((cert, "other.pem"), ("missing.pem", key)):
        cfg = tls_config(c, k)
        with pytest.raises(ConfigError, match="rest.tls_cert / rest.tls_key"):
            check_runnable(cfg, allow_nosec=True)
        with pytest.raises(ConfigError, match="rest.tls_cert / rest.tls_key"):
            async with running_gateway(cfg):
                pass
