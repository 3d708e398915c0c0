"""How the client reaches a server: through the HTTP proxy the environment names (unless
NO_PROXY says otherwise); over TLS, where an untrusted certificate is a clear, immediate
error rather than a minute of retries ending in "run the same command again to resume"; and
a URL that is no edgestore or tus server at all, which is said as such."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgestore.client import Client, RetryPolicy
from edgestore.errors import ConfigError, InvalidInput, ProtocolMismatch
from tests.certs import https_server
from tests.faults import FaultProxy
from tests.helpers import KiB, random_bytes, sha256_hex, write_file
from tests.server import ServerProcess

PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


def test_uploads_and_downloads_go_through_the_http_proxy_of_the_environment(
    server, proxy: FaultProxy, no_proxy_env, tmp_path, hints_dir
) -> None:
    """HTTP_PROXY was ignored (a transport of our own turns httpx's reading of it off): behind
    a proxy that is the only way out, nothing could be uploaded."""
    no_proxy_env.setenv("HTTP_PROXY", proxy.url)
    data = random_bytes(300 * KiB, seed=91)
    client = Client(server.url, state_dir=hints_dir)
    r = client.upload(write_file(tmp_path / "via-proxy.bin", data), workers=2)
    d = client.download(r.object_id, tmp_path / "back.bin")
    assert d.sha256 == sha256_hex(data) and d.verified
    # A forward proxy receives absolute URLs: these requests went to the server through it.
    assert proxy.count("POST", rf"^{server.url}/v1/uploads/[^/]+/finalize$") == 1
    assert proxy.count("PUT", rf"^{server.url}/v1/uploads/[^/]+/chunks/") >= 1
    assert proxy.count("GET", rf"^{server.url}/ids/{r.object_id}") >= 1


def test_no_proxy_reaches_the_server_directly(
    server, proxy: FaultProxy, no_proxy_env, tmp_path, hints_dir
) -> None:
    no_proxy_env.setenv("HTTP_PROXY", proxy.url)
    no_proxy_env.setenv("NO_PROXY", "127.0.0.1")
    client = Client(server.url, state_dir=hints_dir)
    client.upload(write_file(tmp_path / "direct.bin", b"direct"))
    assert proxy.log == []


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory):
    """A real edgestore server over HTTPS with a self-signed certificate (the openssl CLI)."""
    server, cert = https_server(tmp_path_factory.mktemp("client-tls"))
    try:
        yield server, cert
    finally:
        server.stop()


def test_an_untrusted_certificate_fails_at_once_with_what_to_do(
    tls_server: tuple[ServerProcess, Path], no_proxy_env, tmp_path: Path
) -> None:
    """It was retried like a dropped connection (55 s with the default policy), then reported
    as an interruption to resume (exit code 7)."""
    server, _cert = tls_server
    no_proxy_env.delenv("SSL_CERT_FILE", raising=False)
    src = write_file(tmp_path / "f.bin", b"over tls")
    client = Client(server.url, retry=RetryPolicy(base=5.0), state_dir=tmp_path / "hints")
    started = time.monotonic()
    with pytest.raises(InvalidInput, match=r"TLS certificate is not trusted.*SSL_CERT_FILE"):
        client.upload(src)
    with pytest.raises(InvalidInput, match="TLS certificate is not trusted"):
        client.download(f"{server.url}/objects/default/f.bin", tmp_path / "out.bin")
    assert time.monotonic() - started < 5


def test_ssl_cert_file_trusts_a_private_certificate(
    tls_server: tuple[ServerProcess, Path], no_proxy_env, tmp_path: Path
) -> None:
    """What the error above advises works."""
    server, cert = tls_server
    no_proxy_env.setenv("SSL_CERT_FILE", str(cert))
    data = random_bytes(100 * KiB, seed=92)
    client = Client(server.url, state_dir=tmp_path / "hints")
    r = client.upload(write_file(tmp_path / "f.bin", data))
    assert client.download(r.object_id, tmp_path / "back.bin").sha256 == sha256_hex(data)


@pytest.mark.parametrize(
    ("protocol", "says"),
    [
        ("native", "is not an edgestore server .*--protocol tus"),
        ("tus", "is not a tus endpoint .*/files/"),
    ],
)
def test_a_server_that_is_neither_is_named_so(
    web_root, no_proxy_env, tmp_path: Path, protocol: str, says: str
) -> None:
    """Its '501 Unsupported method' was reported as a server storage error (exit code 6)."""
    src = write_file(tmp_path / "f.bin", b"bytes")
    client = Client(web_root[0], state_dir=tmp_path / "hints")
    with pytest.raises(ProtocolMismatch, match=says):
        client.upload(src, protocol=protocol)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("client-auth")
    server = ServerProcess(
        home=base / "home", database_url=f"sqlite:///{base / 'meta.db'}", auth=True
    ).start()
    try:
        yield server
    finally:
        server.stop()


def test_an_api_key_with_a_line_break_is_sent_without_it(
    auth_server: ServerProcess, tmp_path: Path
) -> None:
    """A key from a file or a secret often ends with a newline: it was a traceback that
    printed the key (httpx: Illegal header value b'Bearer esk_…\\n')."""
    assert auth_server.admin_key
    client = Client(auth_server.url, f"{auth_server.admin_key}\n", state_dir=tmp_path / "h")
    r = client.upload(write_file(tmp_path / "f.bin", b"with a key"))
    assert r.version == 1


@pytest.mark.parametrize("bad", ["esk_secret\x00part", "esk_sécret"])
def test_an_unsendable_api_key_is_refused_without_echoing_it(
    auth_server: ServerProcess, tmp_path: Path, bad: str
) -> None:
    client = Client(auth_server.url, bad, state_dir=tmp_path / "h")
    with pytest.raises(InvalidInput, match="API key holds characters") as info:
        client.upload(write_file(tmp_path / "f.bin", b"x"))
    assert "secret" not in str(info.value) and "sécret" not in str(info.value)


def test_a_proxy_that_refuses_the_tunnel_is_named_without_a_traceback(
    tls_server: tuple[ServerProcess, Path], web_root, no_proxy_env, tmp_path: Path
) -> None:
    """HTTPS_PROXY naming a host that is no proxy (it answers CONNECT with 501): httpx's
    ProxyError was neither retried nor mapped, and ended the command in a traceback."""
    server, _cert = tls_server
    no_proxy_env.setenv("HTTPS_PROXY", web_root[0])
    client = Client(server.url, state_dir=tmp_path / "hints")
    with pytest.raises(InvalidInput, match=r"proxy refused \(501.*HTTPS_PROXY"):
        client.upload(write_file(tmp_path / "f.bin", b"x"))


def test_a_socks_proxy_without_its_package_is_named_not_a_traceback(
    server, no_proxy_env, tmp_path: Path
) -> None:
    """ALL_PROXY=socks5://…: httpx needs the socksio package for it, and its ImportError ended
    the command in a traceback."""
    try:
        import socksio  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("socksio is installed here: SOCKS proxies work")
    no_proxy_env.setenv("ALL_PROXY", "socks5://user:pw@127.0.0.1:1080")
    client = Client(server.url, state_dir=tmp_path / "hints")
    with pytest.raises(ConfigError, match=r"SOCKS.*socksio.*ALL_PROXY") as info:
        client.upload(write_file(tmp_path / "f.bin", b"x"))
    assert "pw" not in str(info.value)  # the proxy's password is not printed
    with pytest.raises(ConfigError, match="socksio"):
        client.download("default/f.bin", tmp_path / "out.bin")


def test_a_proxy_of_an_unknown_scheme_is_named(server, no_proxy_env, tmp_path: Path) -> None:
    no_proxy_env.setenv("HTTP_PROXY", "ftp://127.0.0.1:21")
    client = Client(server.url, state_dir=tmp_path / "hints")
    with pytest.raises(ConfigError, match=r"proxy ftp://127.0.0.1.*HTTP_PROXY"):
        client.upload(write_file(tmp_path / "f.bin", b"x"))


def test_ca_cert_trusts_a_private_certificate(
    tls_server: tuple[ServerProcess, Path], no_proxy_env, tmp_path: Path
) -> None:
    """`ca_cert` (the CLI's --ca-cert): a private CA without SSL_CERT_FILE, file or directory."""
    server, cert = tls_server
    no_proxy_env.delenv("SSL_CERT_FILE", raising=False)
    no_proxy_env.delenv("SSL_CERT_DIR", raising=False)
    data = random_bytes(100 * KiB, seed=93)
    client = Client(server.url, state_dir=tmp_path / "hints", ca_cert=cert)
    r = client.upload(write_file(tmp_path / "f.bin", data), key="ca/f.bin")
    assert client.download(r.object_id, tmp_path / "back.bin").sha256 == sha256_hex(data)
    with pytest.raises(InvalidInput, match=r"TLS certificate is not trusted.*--ca-cert"):
        Client(server.url, state_dir=tmp_path / "hints").download(r.object_id, tmp_path / "x")


def test_a_ca_cert_that_is_not_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no such file"):
        Client("https://127.0.0.1:1", ca_cert=tmp_path / "none.pem")
    bad = write_file(tmp_path / "bad.pem", b"not a certificate")
    with pytest.raises(InvalidInput, match="no CA certificate"):
        Client("https://127.0.0.1:1", ca_cert=bad)
