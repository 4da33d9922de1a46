"""Test credentials made at test time with the `cryptography` package (no openssl CLI): a CA and certificates for
127.0.0.1/localhost, JWT signing keys with their JWKS and tokens, an auth policy with API keys."""

from __future__ import annotations

import datetime
import ipaddress
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from gateway.auth.keys import key_digest


def _pem_key(key: Any) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,  # type: ignore[no-any-return]
                             serialization.NoEncryption())


@dataclass
class Issued:
    cert_pem: bytes
    key_pem: bytes
    serial: int

    def write(self, cert_file: Path, key_file: Path) -> None:
        cert_file.write_bytes(self.cert_pem)
        key_file.write_bytes(self.key_pem)


class CA:
    def __init__(self, name: str = "gateway test CA") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(minutes=5))
                     .not_valid_after(now + datetime.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def write(self, path: Path) -> Path:
        path.write_bytes(self.pem)
        return path

    def issue(self, common_name: str = "localhost", *, client: bool = False, names: tuple[str, ...] = ()) -> Issued:
        """A server certificate for localhost and 127.0.0.1 (or only for the DNS ``names``), or a client one."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
                   .issuer_name(self.cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1)))
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                                            critical=False)
        elif not client:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return Issued(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key), cert.serial_number)


def serial_of(der: bytes) -> int:
    return x509.load_der_x509_certificate(der).serial_number


class Issuer:
    """A JWT issuer: an RSA and an EC signing key, its JWKS, and tokens."""

    def __init__(self, issuer: str = "https://idp.test/", audience: str = "model-gateway") -> None:
        self.issuer, self.audience = issuer, audience
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid, key, alg in (("rsa-1", self.rsa, "RS256"), ("ec-1", self.ec, "ES256")):
            jwk = json.loads(jwt.algorithms.get_default_algorithms()[alg].to_jwk(key.public_key()))
            keys.append({**jwk, "kid": kid, "alg": alg, "use": "sig"})
        return {"keys": keys}

    def token(self, tenant: str, *, alg: str = "RS256", ttl_s: float = 300, claims: dict[str, Any] | None = None,
              kid: str | None = None, key: Any = None) -> str:
        now = int(time.time())
        body = {"iss": self.issuer, "aud": self.audience, "sub": f"user-of-{tenant}", "tenant": tenant,
                "iat": now, "nbf": now, "exp": now + int(ttl_s), **(claims or {})}
        signer = key if key is not None else (self.rsa if alg.startswith(("RS", "PS")) else self.ec)
        return jwt.encode(body, signer, algorithm=alg,
                          headers={"kid": kid or ("rsa-1" if alg.startswith(("RS", "PS")) else "ec-1")})

    def policy_jwt(self, jwks_file: Path) -> dict[str, Any]:
        return {"jwks_file": str(jwks_file), "algorithms": ["RS256", "ES256"], "issuer": self.issuer,
                "audience": self.audience, "leeway_s": 5}


def write_keys(path: Path, keys: dict[str, str], salt: bytes = b"\x5a" * 16) -> None:
    """The keys file for ``{key: tenant}``: salt and HMACs only."""
    path.write_text(yaml.safe_dump({"salt": salt.hex(), "keys": [
        {"id": f"{tenant}-{i}", "tenant": tenant, "hash": key_digest(salt, key.encode()).hex()}
        for i, (key, tenant) in enumerate(keys.items())]}))
