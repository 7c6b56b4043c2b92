"""`intelbus up --tls`: a certificate authority for the local stack and the broker's certificate.

Production brings its own CA and certificates (docs/deploy.md, "Transport encryption"); this
exists so the same client code is tested once against a TLS listener on this machine:

    <stack dir>/tls/ca.pem      the CA's certificate: what clients trust (ssl.ca.location)
    <stack dir>/tls/ca.key      the CA's private key (0600; only used to sign broker.pem)
    <stack dir>/tls/broker.pem  the broker's PKCS#8 key and certificate chain (0600), for Kafka's
                                PEM keystore (ssl.keystore.type=PEM), valid for 127.0.0.1 and localhost

Made once; running it again keeps what exists (`down --purge` removes it with the stack).
"""
from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path


def tls_dir(settings) -> Path:
    return settings.stack_path / "tls"


def client_settings(settings, port: int) -> dict[str, str]:
    """What a client adds to reach the local TLS listener (INTELBUS_KAFKA_SECURITY's content)."""
    return {"bootstrap.servers": f"127.0.0.1:{port}", "security.protocol": "SASL_SSL",
            "ssl.ca.location": str(tls_dir(settings) / "ca.pem")}


def ensure_tls(settings, *, days: int = 825) -> Path:
    """The CA and the broker's certificate under <stack dir>/tls (idempotent); the folder."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    from ops.secrets import _write_private

    folder = tls_dir(settings)
    if (folder / "broker.pem").exists() and (folder / "ca.pem").exists():
        return folder
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "intelbus local stack"),
                         x509.NameAttribute(NameOID.COMMON_NAME, "intelbus local CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now)
          .not_valid_after(now + dt.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "intelbus local stack"),
                                     x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    pkcs8 = dict(encoding=pem, format=serialization.PrivateFormat.PKCS8,
                 encryption_algorithm=serialization.NoEncryption())
    _write_private(folder / "ca.key", ca_key.private_bytes(**pkcs8).decode())
    _write_private(folder / "broker.pem", key.private_bytes(**pkcs8).decode() + cert.public_bytes(pem).decode()
                   + ca.public_bytes(pem).decode())
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    return folder
