"""The node's certificate: load it, and renew it with a NEW key before it expires.

Renewal runs at a random 70-90% of the certificate's lifetime, over mTLS with
the current certificate (no token needed), and then tells the hub connection
to move to the new certificate.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

from certs import CertError, pki, tls
from certs.rotation import rotation_deadline
from moorage.aio import sleep_or_stop
from moorage.backoff import doubling
from moorage.enroll import Endpoint, EnrollError, request_certificate

log = logging.getLogger("edgecore.certs")


class CertManager:
    def __init__(self, *, node_name: str, ca_file: Path, cert_file: Path, key_file: Path,
                 enrollment: Endpoint, ciphers: list[str], passphrase: bytes | None) -> None:
        self.node_name, self.enrollment = node_name, enrollment
        self.ca_file, self.paths = ca_file, pki.PairPaths(cert_file, key_file)
        self.ciphers, self.passphrase = ciphers, passphrase

    def current(self) -> pki.Issued:
        return pki.load_pair(self.paths, self.passphrase)

    def client_context(self) -> ssl.SSLContext:
        return tls.client_context(ca_file=self.ca_file, cert_file=self.paths.cert,
                                  key_file=self.paths.key, passphrase=self.passphrase,
                                  ciphers=self.ciphers)

    def check(self) -> None:
        """Refuse to start with a certificate that cannot work, saying what to do."""
        cert = self.current().cert
        expected = pki.NODE_CN_PREFIX + self.node_name
        if pki.common_name(cert) != expected:
            raise CertError(f"{self.paths.cert} is for {pki.common_name(cert)!r}, not "
                            f"{expected!r}: re-enroll with `moorage join --force`")
        if pki.not_valid_after(cert) <= pki.utcnow():
            raise CertError(f"the node certificate expired at {pki.not_valid_after(cert)}: "
                            "get a fresh token (`moorage gettoken` on the cloud) and run "
                            "`moorage join --force`")

    def renew(self) -> pki.Issued:
        """Blocking: new key, CSR, signed over mTLS with the current certificate, saved."""
        key = pki.generate_key()
        csr = pki.make_csr(key, pki.node_subject(self.node_name))
        cert_pem = request_certificate(
            self.enrollment, self.ca_file.read_bytes(), self.node_name, pki.csr_to_der(csr),
            client_cert=str(self.paths.cert), client_key=str(self.paths.key),
            passphrase=self.passphrase)
        issued = pki.Issued(key, pki.cert_from_bytes(cert_pem))
        pki.save_pair(issued, self.paths, self.passphrase)
        return issued

    async def run(self, on_rotated: Callable[[], Awaitable[None]],
                  stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            cert = self.current().cert
            deadline = rotation_deadline(pki.not_valid_before(cert), pki.not_valid_after(cert))
            wait = max(0.0, (deadline - pki.utcnow()).total_seconds())
            log.info("certificate %s valid until %s; renewal in %.1fs",
                     pki.serial_hex(cert.serial_number), pki.not_valid_after(cert).isoformat(),
                     wait)
            if await sleep_or_stop(wait, stopping):
                return
            delays = doubling(2.0, 32.0)
            while not stopping.is_set():
                try:
                    issued = await asyncio.to_thread(self.renew)
                    break
                except (EnrollError, CertError, OSError) as exc:
                    delay = next(delays)
                    left = pki.not_valid_after(cert) - pki.utcnow()
                    log.warning("certificate renewal failed (%s); retrying in %.0fs, "
                                "%s before the current one expires", exc, delay,
                                max(left, dt.timedelta(0)))
                    if await sleep_or_stop(min(delay, max(0.5, left.total_seconds() / 4)),
                                            stopping):
                        return
            else:
                return
            log.info("certificate renewed with a new key: serial %s, valid until %s",
                     pki.serial_hex(issued.cert.serial_number),
                     pki.not_valid_after(issued.cert).isoformat())
            await on_rotated()
