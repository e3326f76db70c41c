"""The cloud's certificate authority: signs node certificates and remembers their serials."""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass

from cryptography import x509

from certs import pki
from certs.errors import CSRError
from cloudcore.objects import ObjectStore

log = logging.getLogger("cloudcore.authority")

# Kubernetes node names: DNS-1123 subdomains.
_NODE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def check_node_name(name: str) -> str:
    if not name or len(name) > 253 or not _NODE_NAME.match(name):
        raise CSRError(
            f"invalid node name {name!r}: use lowercase letters, digits, '-' and '.', "
            "starting and ending with a letter or digit (at most 253 characters)"
        )
    return name


@dataclass
class Authority:
    ca: pki.Issued
    store: ObjectStore
    edge_cert_validity: dt.timedelta

    async def sign_node_csr(self, csr_data: bytes, node_name: str) -> x509.Certificate:
        """Sign a node CSR. The subject is ours to set: only the public key is taken."""
        check_node_name(node_name)
        csr = pki.load_csr(csr_data)
        cn = pki.common_name(csr)
        if cn and cn != pki.NODE_CN_PREFIX + node_name:
            raise CSRError(f"the CSR is for {cn!r}, but the request names node {node_name!r}")
        cert = pki.sign(self.ca, pki.node_subject(node_name), csr.public_key(),
                        lifetime=self.edge_cert_validity, client=True)
        await self.store.record_cert(pki.serial_hex(cert.serial_number), node_name,
                               pki.not_valid_after(cert).timestamp())
        log.info("signed a certificate for node %s (serial %s, valid until %s)", node_name,
                 pki.serial_hex(cert.serial_number), pki.not_valid_after(cert).isoformat())
        return cert
