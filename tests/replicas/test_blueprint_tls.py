"""TLS at the load balancer, read from outside as a client sees it: Mozilla's "intermediate"
profile (TLS 1.2 and 1.3 only, forward-secret AEAD suites, no session tickets), HTTP/2 offered,
and no HSTS with the self-signed certificate the replicas get."""

from __future__ import annotations

import socket
import ssl

import pytest

from tests.replicas.conftest import fact, first

# The TLS 1.2 suites of Mozilla's intermediate profile (nginx/nginx.conf.j2), in OpenSSL's names.
INTERMEDIATE_TLS12 = {
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
}  # fmt: skip


def handshake(address: str, version: ssl.TLSVersion, ciphers: str | None = None, alpn=None) -> ssl.SSLSocket:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the replicas' certificate is self-signed
    context.minimum_version = context.maximum_version = version
    if ciphers:
        context.set_ciphers(ciphers)
    if alpn:
        context.set_alpn_protocols(alpn)
    raw = socket.create_connection((address, fact("nginx_https_port")), timeout=10)
    return context.wrap_socket(raw, server_hostname=fact("blueprint_server_name"))


@pytest.fixture(scope="module")
def lb(converged, stack) -> str:
    return stack.address(first("lb"))


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_tls_before_1_2_is_refused(lb, version):
    # The client offers them only at OpenSSL's lowest security level; nginx answers with an alert.
    with pytest.raises(ssl.SSLError, match="PROTOCOL_VERSION"):
        handshake(lb, version, ciphers="DEFAULT:@SECLEVEL=0").close()


def test_tls_1_2_negotiates_an_intermediate_suite_without_a_session_ticket(lb):
    # Offered everything OpenSSL has, the server agrees only to a suite of the profile.
    with handshake(lb, ssl.TLSVersion.TLSv1_2, ciphers="ALL:@SECLEVEL=0") as tls:
        name, version, _ = tls.cipher()
        tls.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        tls.recv(1024)
        print(f"\nfigure: TLS 1.2 with every suite offered: {name}")
        assert version == "TLSv1.2"
        assert name in INTERMEDIATE_TLS12
        assert not tls.session.has_ticket


def test_a_tls_1_2_suite_outside_the_profile_is_refused(lb):
    with pytest.raises(ssl.SSLError, match="HANDSHAKE_FAILURE"):
        handshake(lb, ssl.TLSVersion.TLSv1_2, ciphers="AES128-SHA:@SECLEVEL=0").close()


def test_tls_1_3_and_http2_are_offered(lb):
    with handshake(lb, ssl.TLSVersion.TLSv1_3, alpn=["h2", "http/1.1"]) as tls:
        assert tls.version() == "TLSv1.3"
        assert tls.selected_alpn_protocol() == "h2"


def test_no_hsts_with_the_self_signed_certificate(lb):
    with handshake(lb, ssl.TLSVersion.TLSv1_3) as tls:
        tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := tls.recv(4096):
            answer += chunk
    headers = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert headers.startswith(b"http/1.1 ")
    assert b"strict-transport-security" not in headers
