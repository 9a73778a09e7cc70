"""Throwaway PKI for a local control plane (the tests, `lmjob cluster`): CAs, serving and
client certs, SA signing keys.

ECDSA P-256 throughout: key generation takes microseconds, so a fresh PKI per
control plane costs nothing and no key outlives its cluster.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = dt.timedelta(days=7)

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class KeyPair:
    """PEM files of one certificate and its private key."""

    cert: Path
    key: Path

    def cert_pem(self) -> bytes:
        return self.cert.read_bytes()

    def key_pem(self) -> bytes:
        return self.key.read_bytes()


@dataclass(frozen=True)
class Pki:
    """Everything the control plane's components need to trust each other."""

    serving_ca: KeyPair  # signs the apiserver's serving cert; what clients trust
    serving: KeyPair  # kube-apiserver's TLS cert for 127.0.0.1 / localhost
    client_ca: KeyPair  # --client-ca-file: signs every client cert below
    admin: KeyPair  # CN=lmjob-test-admin, O=system:masters
    controller_manager: KeyPair  # CN=system:kube-controller-manager
    scheduler: KeyPair  # CN=system:kube-scheduler
    front_proxy_ca: KeyPair  # --requestheader-client-ca-file (aggregated APIs)
    front_proxy_client: KeyPair  # the apiserver's identity towards aggregated APIs
    sa_private: Path  # service-account token signing key (PEM, PKCS#8)
    sa_public: Path  # its public half, for --service-account-key-file


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, cert: x509.Certificate, key: PrivateKey) -> KeyPair:
    cert_path, key_path = path.with_suffix(".crt"), path.with_suffix(".key")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    # RSA keys as PKCS#1 ("RSA PRIVATE KEY"): the only form some readers take (cert-controller).
    key_format = (
        serialization.PrivateFormat.TraditionalOpenSSL
        if isinstance(key, rsa.RSAPrivateKey)
        else serialization.PrivateFormat.PKCS8
    )
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, key_format, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return KeyPair(cert_path, key_path)


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key, validity: dt.timedelta = VALIDITY
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        # Backdate a little: components on the same host can disagree by a clock tick.
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + validity)
    )


def _ca(
    path: Path,
    common_name: str,
    validity: dt.timedelta = VALIDITY,
    dns_name: str | None = None,
    key: PrivateKey | None = None,
) -> tuple[KeyPair, x509.Certificate, PrivateKey]:
    key = key or _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = _builder(name, name, key.public_key(), validity)
    if dns_name:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False
        )
    cert = (
        builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _write(path, cert, key), cert, key


def _leaf(
    path: Path,
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    *,
    common_name: str,
    organizations: tuple[str, ...] = (),
    usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName] | None = None,
    validity: dt.timedelta = VALIDITY,
) -> KeyPair:
    key = _new_key()
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    builder = (
        _builder(x509.Name(attrs), ca_cert.subject, key.public_key(), validity)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return _write(path, builder.sign(ca_key, hashes.SHA256()), key)


def build_pki(directory: Path, *, service_ip: str) -> Pki:
    """Write a fresh PKI into `directory`; `service_ip` is the `kubernetes` Service's IP."""
    directory.mkdir(parents=True, exist_ok=True)
    serving_ca, serving_ca_cert, serving_ca_key = _ca(
        directory / "serving-ca", "lmjob-test-serving-ca"
    )
    client_ca, client_ca_cert, client_ca_key = _ca(directory / "client-ca", "lmjob-test-client-ca")
    # Without a front-proxy CA every component that delegates authentication
    # logs "missing content for CA bundle" forever, and aggregated APIs fail.
    front_proxy_ca, front_proxy_ca_cert, front_proxy_ca_key = _ca(
        directory / "front-proxy-ca", "lmjob-test-front-proxy-ca"
    )

    # In-cluster clients reach the apiserver by the Service names and IP, so
    # the cert covers them too, not only the loopback address tests use.
    sans: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address(service_ip)),
        x509.DNSName("localhost"),
        x509.DNSName("kubernetes"),
        x509.DNSName("kubernetes.default"),
        x509.DNSName("kubernetes.default.svc"),
        x509.DNSName("kubernetes.default.svc.cluster.local"),
    ]
    serving = _leaf(
        directory / "apiserver",
        serving_ca_cert,
        serving_ca_key,
        common_name="kube-apiserver",
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        sans=sans,
    )

    def client(name: str, common_name: str, *orgs: str) -> KeyPair:
        return _leaf(
            directory / name,
            client_ca_cert,
            client_ca_key,
            common_name=common_name,
            organizations=orgs,
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        )

    sa_key = _new_key()
    sa_private, sa_public = directory / "sa.key", directory / "sa.pub"
    sa_private.write_bytes(
        sa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    sa_private.chmod(0o600)
    sa_public.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return Pki(
        serving_ca=serving_ca,
        serving=serving,
        client_ca=client_ca,
        # The bootstrap RBAC policy binds these exact user names to their roles.
        admin=client("admin", "lmjob-test-admin", "system:masters"),
        controller_manager=client("controller-manager", "system:kube-controller-manager"),
        scheduler=client("scheduler", "system:kube-scheduler"),
        front_proxy_ca=front_proxy_ca,
        front_proxy_client=_leaf(
            directory / "front-proxy-client",
            front_proxy_ca_cert,
            front_proxy_ca_key,
            common_name="front-proxy-client",
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        ),
        sa_private=sa_private,
        sa_public=sa_public,
    )


def build_kubelet_serving(directory: Path) -> KeyPair:
    """A serving cert for a test kubelet on 127.0.0.1 (its own CA: the API server, given no
    --kubelet-certificate-authority, does not verify kubelets)."""
    directory.mkdir(parents=True, exist_ok=True)
    _, ca_cert, ca_key = _ca(directory / "kubelet-ca", "lmjob-test-kubelet-ca")
    return _leaf(
        directory / "kubelet",
        ca_cert,
        ca_key,
        common_name="lmjob-test-kubelet",
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        sans=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")],
    )


def build_webhook_serving(
    directory: Path,
    common_name: str,
    *,
    ca_name: str | None = None,
    dns_names: tuple[str, ...] = (),
    validity: dt.timedelta = VALIDITY,
    rsa_ca: bool = False,
) -> tuple[KeyPair, KeyPair]:
    """(CA, serving cert) for a webhook server on 127.0.0.1, written as `ca.crt`/`ca.key` and
    `tls.crt`/`tls.key` (controller-runtime's default file names) in `directory`.

    The API server dials webhooks by the URL in their configuration and checks the serving
    cert against that configuration's caBundle: the CA's PEM. `ca_name` (the CA's CN and
    DNS name), `dns_names`, `validity` and `rsa_ca` (an RSA CA key, in PKCS#1) let a
    component's own cert manager accept the pair as one it could have made (Kueue's:
    docs/testing.md, "Kueue")."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048) if rsa_ca else None
    ca, ca_cert, ca_key = _ca(
        directory / "ca", ca_name or f"{common_name}-ca", validity, dns_name=ca_name, key=ca_key
    )
    sans: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.DNSName("localhost"),
        *(x509.DNSName(n) for n in dns_names),
    ]
    serving = _leaf(
        directory / "tls",
        ca_cert,
        ca_key,
        common_name=common_name,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        sans=sans,
        validity=validity,
    )
    return ca, serving


def issue_client_cert(pki_dir: Path, name: str, common_name: str, *organizations: str) -> KeyPair:
    """A client cert signed by the control plane's client CA (in `pki_dir`, as `build_pki`
    left it), for a component started after the control plane (e.g. Kueue)."""
    ca_cert = x509.load_pem_x509_certificate((pki_dir / "client-ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key(
        (pki_dir / "client-ca.key").read_bytes(), password=None
    )
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
    return _leaf(
        pki_dir / name,
        ca_cert,
        ca_key,
        common_name=common_name,
        organizations=organizations,
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
    )
