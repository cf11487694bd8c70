"""The dev cluster's PKI: one CA, the apiserver's serving cert, client certs, the SA key pair.

ECDSA P-256 keys keep generation in the milliseconds; every component accepts them
(service-account tokens are then signed with ES256). The certs live only as long as the
cluster's state directory, so they are valid for a year and never rotated.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CERT_VALIDITY = datetime.timedelta(days=365)
#: Backdating absorbs small clock differences between the issuing and checking processes.
CLOCK_SKEW = datetime.timedelta(minutes=5)

#: Names the apiserver answers to: the loopback address clients use, plus the in-cluster
#: names and the first service IP, as kubeadm puts them in its serving cert.
APISERVER_DNS_NAMES: tuple[str, ...] = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)


#: The only front-proxy client name the apiserver accepts (`--requestheader-allowed-names`).
FRONT_PROXY_CLIENT_NAME = "front-proxy-client"


@dataclass(frozen=True)
class CertKey:
    """A PEM certificate and its PEM private key."""

    cert_pem: bytes
    key_pem: bytes


@dataclass(frozen=True)
class ClusterPki:
    """Every credential the control plane needs, as PEM bytes."""

    ca: CertKey
    apiserver: CertKey
    admin: CertKey
    controller_manager: CertKey
    scheduler: CertKey
    kwok: CertKey
    front_proxy_ca: CertKey
    front_proxy_client: CertKey
    service_account_private_pem: bytes
    service_account_public_pem: bytes


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str, organizations: Iterable[str] = ()) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def new_ca(common_name: str, now: datetime.datetime) -> CertKey:
    """A self-signed CA that signs both serving and client certs."""
    key = _new_key()
    name = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + CERT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
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
    return CertKey(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue_cert(
    ca: CertKey,
    common_name: str,
    now: datetime.datetime,
    *,
    organizations: Iterable[str] = (),
    dns_names: Iterable[str] = (),
    ip_addresses: Iterable[str] = (),
) -> CertKey:
    """A leaf cert signed by `ca`.

    Kubernetes reads the user name from CN and the groups from O. A cert with SANs is usable
    for serving as well as for client auth.
    """
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError("the dev cluster CA key must be an EC key")
    key = _new_key()
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if sans:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, organizations))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + CERT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return CertKey(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def new_cluster_pki(now: datetime.datetime, service_ip: str = "10.96.0.1") -> ClusterPki:
    """All credentials of one dev cluster."""
    ca = new_ca("slmpack-dev-cluster-ca", now)
    # A second CA for the aggregation layer, as kubeadm sets it up: the apiserver trusts
    # X-Remote-User headers only from a client this CA signed.
    front_proxy_ca = new_ca("slmpack-dev-cluster-front-proxy-ca", now)
    sa_key = _new_key()
    return ClusterPki(
        ca=ca,
        apiserver=issue_cert(
            ca,
            "kube-apiserver",
            now,
            dns_names=APISERVER_DNS_NAMES,
            ip_addresses=("127.0.0.1", service_ip),
        ),
        # system:masters bypasses RBAC: the admin kubeconfig and the kwok controller (which
        # writes node and pod status across the cluster) get it.
        admin=issue_cert(ca, "slmpack-admin", now, organizations=("system:masters",)),
        kwok=issue_cert(ca, "kwok-controller", now, organizations=("system:masters",)),
        # The bootstrap RBAC policy grants these user names exactly what each component needs.
        controller_manager=issue_cert(ca, "system:kube-controller-manager", now),
        scheduler=issue_cert(ca, "system:kube-scheduler", now),
        front_proxy_ca=front_proxy_ca,
        front_proxy_client=issue_cert(front_proxy_ca, FRONT_PROXY_CLIENT_NAME, now),
        service_account_private_pem=_key_pem(sa_key),
        service_account_public_pem=sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )


@dataclass(frozen=True)
class PkiFiles:
    """Paths of the PEM files the control-plane flags point at."""

    ca_cert: Path
    ca_key: Path
    apiserver_cert: Path
    apiserver_key: Path
    service_account_private_key: Path
    service_account_public_key: Path
    admin_cert: Path
    admin_key: Path
    front_proxy_ca_cert: Path
    front_proxy_client_cert: Path
    front_proxy_client_key: Path


def pki_file_paths(directory: Path) -> PkiFiles:
    """Where `write_pki` puts each file (also used to restart a component of a running
    cluster with the files it already has)."""
    return PkiFiles(
        ca_cert=directory / "ca.crt",
        ca_key=directory / "ca.key",
        apiserver_cert=directory / "apiserver.crt",
        apiserver_key=directory / "apiserver.key",
        service_account_private_key=directory / "sa.key",
        service_account_public_key=directory / "sa.pub",
        admin_cert=directory / "admin.crt",
        admin_key=directory / "admin.key",
        front_proxy_ca_cert=directory / "front-proxy-ca.crt",
        front_proxy_client_cert=directory / "front-proxy-client.crt",
        front_proxy_client_key=directory / "front-proxy-client.key",
    )


def write_pki(pki: ClusterPki, directory: Path) -> PkiFiles:
    """Write the files the flags refer to; private keys are readable by the owner only."""
    directory.mkdir(parents=True, exist_ok=True)
    files = pki_file_paths(directory)
    contents = {
        files.ca_cert: pki.ca.cert_pem,
        files.ca_key: pki.ca.key_pem,
        files.apiserver_cert: pki.apiserver.cert_pem,
        files.apiserver_key: pki.apiserver.key_pem,
        files.service_account_private_key: pki.service_account_private_pem,
        files.service_account_public_key: pki.service_account_public_pem,
        files.admin_cert: pki.admin.cert_pem,
        files.admin_key: pki.admin.key_pem,
        files.front_proxy_ca_cert: pki.front_proxy_ca.cert_pem,
        files.front_proxy_client_cert: pki.front_proxy_client.cert_pem,
        files.front_proxy_client_key: pki.front_proxy_client.key_pem,
    }
    for path, data in contents.items():
        path.write_bytes(data)
        path.chmod(0o600)
    return files
