"""gateway.tls: certificate pairs checked before use, and a server context that takes a rotated pair at the next
handshake, never failing one: a real asyncio TLS server on 127.0.0.1, handshakes from a thread during rotation."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from pathlib import Path

import pytest

from gateway.tls import CertificateFiles, TLSSetupError, read_pair, server_context

from ..securitykit import CA, serial_of


def test_a_key_that_is_not_the_certificates_is_refused(tmp_path: Path) -> None:
    ca = CA()
    one, two = ca.issue(), ca.issue()
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(one.cert_pem)
    key.write_bytes(two.key_pem)
    with pytest.raises(TLSSetupError, match="is not the key of the certificate"):
        read_pair(cert, key)
    key.write_bytes(b"not pem")
    with pytest.raises(TLSSetupError, match="not a PEM certificate chain"):
        read_pair(cert, key)
    with pytest.raises(TLSSetupError, match="cannot read"):
        read_pair(tmp_path / "missing.crt", key)


async def test_rotation_mid_traffic_fails_no_handshake(tmp_path: Path) -> None:
    ca = CA()
    ca_file = ca.write(tmp_path / "ca.pem")
    first, second = ca.issue(), ca.issue()
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    first.write(cert, key)
    files = CertificateFiles(cert, key, check_s=0.02)
    context = server_context(files)

    async def hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(hello, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    client = ssl.create_default_context(cafile=str(ca_file))
    seen: list[int] = []
    failures: list[str] = []
    stop = threading.Event()

    def handshakes() -> None:
        while not stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                        client.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                    seen.append(serial_of(tls.getpeercert(binary_form=True) or b""))
                    assert tls.recv(2) == b"ok"
            except Exception as exc:
                failures.append(repr(exc))

    thread = threading.Thread(target=handshakes)
    thread.start()
    try:
        await _until(lambda: len(seen) >= 20)
        # The rotation as a careless tool does it: the certificate first, the key a little later. In between the
        # pair does not match: refused, the first pair keeps serving.
        cert.write_bytes(second.cert_pem)
        mismatch_seen = len(seen)
        await _until(lambda: len(seen) >= mismatch_seen + 20)
        assert files.loads == 1 and set(seen) == {first.serial}
        key.write_bytes(second.key_pem)
        await _until(lambda: seen[-1] == second.serial)
        rotated_at = len(seen)
        await _until(lambda: len(seen) >= rotated_at + 20)
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 10)
        server.close()
        await server.wait_closed()
    assert failures == [], failures[:3]
    switch = seen.index(second.serial)
    assert set(seen[:switch]) == {first.serial} and set(seen[switch:]) == {second.serial}, "served a mix"
    assert files.loads == 2
    print(f"{len(seen)} handshakes, 0 failed; certificate {first.serial:x} -> {second.serial:x} after "
          f"{switch} handshakes")


async def _until(check: object, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():  # type: ignore[operator]
            await asyncio.sleep(0.01)
