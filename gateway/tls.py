"""TLS: the listeners' certificates, read from files (a Kubernetes Secret, cert-manager) and reloaded when they change
without a restart and without a failed handshake; and the client side for backends reached over (mutual) TLS.

Reload: each consumer holds its own :class:`CertificateFiles`, which looks at the files' identity (mtime, inode,
size) at most every ``check_s`` seconds, and only when a new handshake begins:

* REST and admin (uvicorn, ssl): the server context's SNI callback runs at the start of every handshake (with or
  without SNI); on a change it loads the new pair into the *same* SSLContext, which applies to every handshake
  after it (connections made keep their session; the handshake in progress completes with the previous pair).
* gRPC: grpc's dynamic server credentials ask a fetcher at each new connection; it returns the new pair.

A pair is used only once the key is proven to match the certificate (a rotation that writes the certificate, then
the key, is seen half-written for a moment): until then the previous pair keeps serving, and the check is retried.
The checked PEM is handed to OpenSSL through an in-memory file (memfd), never through a file that may change
between the check and the load.
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
import time
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

log = logging.getLogger("gateway.tls")

Pem = tuple[bytes, bytes]  # (certificate chain, private key)


class TLSSetupError(ValueError):
    """The certificate files cannot be used (unreadable, not PEM, key not matching); the message says which."""


class CertificateFiles:
    def __init__(self, cert_file: Path, key_file: Path, check_s: float = 1.0) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.check_s = check_s
        self._seen = self._identity()
        self.pem = read_pair(cert_file, key_file)  # at start: unusable files stop the process
        self.loads = 1  # how many pairs were taken (the first one included)
        self._next_check = time.monotonic() + check_s
        self._refused: object = None

    def _identity(self) -> tuple[tuple[int, int, int], ...]:
        out = []
        for path in (self.cert_file, self.key_file):
            try:
                st = path.stat()  # follows symlinks: a Secret's ..data swap changes the inode
                out.append((st.st_mtime_ns, st.st_ino, st.st_size))
            except OSError:
                out.append((-1, -1, -1))
        return tuple(out)

    def changed(self) -> Pem | None:
        """The new pair when the files changed (and match) since the last pair was taken; else None. Cheap when
        called more often than ``check_s``: one clock read."""
        now = time.monotonic()
        if now < self._next_check:
            return None
        self._next_check = now + self.check_s
        seen = self._identity()
        if seen == self._seen:
            return None
        try:
            pem = read_pair(self.cert_file, self.key_file)
        except TLSSetupError as exc:
            if self._refused != seen:  # once per state of the files, not on every handshake
                self._refused = seen
                log.warning("TLS: %s; the previous certificate keeps serving (checked again within %g s)", exc,
                            self.check_s)
            return None
        self._seen, self.pem = seen, pem
        self.loads += 1
        log.info("TLS: certificate reloaded from %s (%s)", self.cert_file, describe(pem[0]))
        return pem


def read_pair(cert_file: Path, key_file: Path) -> Pem:
    """The chain and the key, checked: PEM, and the key is the certificate's."""
    try:
        chain, key = cert_file.read_bytes(), key_file.read_bytes()
    except OSError as exc:
        raise TLSSetupError(f"cannot read {exc.filename}: {exc.strerror}") from None
    try:
        leaf = x509.load_pem_x509_certificates(chain)[0]
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError, IndexError) as exc:
        raise TLSSetupError(f"{cert_file} / {key_file}: not a PEM certificate chain and unencrypted key "
                            f"({type(exc).__name__})") from None

    def spki(public: object) -> bytes:
        return public.public_bytes(serialization.Encoding.DER,  # type: ignore[attr-defined, no-any-return]
                                   serialization.PublicFormat.SubjectPublicKeyInfo)

    if spki(leaf.public_key()) != spki(private.public_key()):
        raise TLSSetupError(f"the key in {key_file} is not the key of the certificate in {cert_file}")
    return chain, key


def describe(chain: bytes) -> str:
    leaf = x509.load_pem_x509_certificates(chain)[0]
    return f"subject {leaf.subject.rfc4514_string()}, serial {leaf.serial_number:x}, valid until " \
           f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"


def _load(context: ssl.SSLContext, pem: Pem) -> None:
    """load_cert_chain wants a path: the checked bytes go through an in-memory file (no disk, no race)."""
    chain, key = pem
    data = key + b"\n" + chain
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("gateway-tls", os.MFD_CLOEXEC)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            context.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory() as private:  # 0700; elsewhere than Linux
        path = Path(private) / "pair.pem"
        path.write_bytes(data)
        context.load_cert_chain(path)


def server_context(files: CertificateFiles, alpn: tuple[str, ...] = ("http/1.1",)) -> ssl.SSLContext:
    """A TLS server context (1.2 or later) that takes a new pair at the first handshake after the files change."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(list(alpn))
    _load(context, files.pem)

    def on_client_hello(connection: object, server_name: str | None, ctx: ssl.SSLContext) -> None:
        try:
            pem = files.changed()
            if pem is not None:
                _load(context, pem)
        except Exception:  # a handshake must never fail over a reload: the previous pair stays
            log.exception("TLS: reloading %s failed; the previous certificate keeps serving", files.cert_file)

    context.sni_callback = on_client_hello
    return context


class UvicornContext:
    """uvicorn's ``ssl_context_factory``: called by every worker process (after the fork) for its listener.
    An object, not a closure: uvicorn hands its config to spawned workers by pickling it."""

    def __init__(self, cert_file: Path, key_file: Path, check_s: float) -> None:
        self.cert_file, self.key_file, self.check_s = cert_file, key_file, check_s

    def __call__(self, config: object, default: object) -> ssl.SSLContext:
        return server_context(CertificateFiles(self.cert_file, self.key_file, self.check_s))


def grpc_server_credentials(files: CertificateFiles) -> grpc.ServerCredentials:
    """Credentials whose pair grpc asks for at every new connection: the new one once the files changed."""

    def configuration(pem: Pem) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(pem[1], pem[0])])

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        try:
            pem = files.changed()
        except Exception:
            log.exception("TLS: reloading %s failed; the previous certificate keeps serving", files.cert_file)
            return None
        return None if pem is None else configuration(pem)

    return grpc.dynamic_ssl_server_credentials(configuration(files.pem), fetch)


# --- clients: backends over TLS or mutual TLS -----------------------------------------------------------------------

def client_context(ca_file: Path | None, cert_file: Path | None, key_file: Path | None) -> ssl.SSLContext:
    """Verifies the server against ``ca_file`` (else the system's CAs); presents ``cert_file`` for mutual TLS."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    if cert_file is not None:
        context.load_cert_chain(cert_file, key_file)
    return context


def channel_credentials(ca_file: Path | None, cert_file: Path | None,
                        key_file: Path | None) -> grpc.ChannelCredentials:
    def read(path: Path | None) -> bytes | None:
        return None if path is None else path.read_bytes()

    return grpc.ssl_channel_credentials(root_certificates=read(ca_file), private_key=read(key_file),
                                        certificate_chain=read(cert_file))
