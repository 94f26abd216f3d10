"""Optional STARTTLS with the configured certificate and key."""

from __future__ import annotations

import datetime as dt
import ipaddress
import smtplib
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from helpers import Instance, make_mail


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "postdesk.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("postdesk.test"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_starttls_is_offered_and_mail_arrives_encrypted(instance: Instance) -> None:
    instance.dir.mkdir(parents=True)
    cert, key = self_signed(instance.dir)
    instance.write(gateway_extra=f"  starttls: {{cert: {cert.name}, key: {key.name}}}\n")
    instance.start()
    context = ssl.create_default_context(cafile=str(cert))
    with smtplib.SMTP("127.0.0.1", instance.smtp, local_hostname="client.test", timeout=30) as s:
        s.ehlo()
        assert s.has_extn("starttls")
        s.starttls(context=context)  # verifies the chain and 127.0.0.1 against the cert
        s.ehlo()
        s.sendmail("c@client.test", ["support@example.test"],
                   make_mail("Encrypted", message_id="<tls-1@c>"))
    [msg] = instance.messages()
    assert msg.subject == "Encrypted" and "with ESMTPS" in msg.received_header
