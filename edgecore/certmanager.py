"""The node's certificate: load it, and renew it with a NEW key before it expires.

Renewal runs at a random 70-90% of the certificate's lifetime, over mTLS with
the current certificate (no token needed), and then tells the hub connection
to move to the new certificate. Until then the certificate is only read with
certs.peek: cryptography (11 MB of RSS) is imported when a renewal happens.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

from certs import CertError, peek, tls
from certs.peek import CertSummary
from certs.rotation import rotation_deadline
from moorage.aio import sleep_or_stop
from moorage.backoff import doubling
from moorage.enroll import Endpoint, EnrollError, request_certificate

log = logging.getLogger("edgecore.certs")

NODE_CN_PREFIX = "system:node:"  # certs.pki.NODE_CN_PREFIX, without importing cryptography


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class CertManager:
    def __init__(self, *, node_name: str, ca_file: Path, cert_file: Path, key_file: Path,
                 enrollment: Endpoint, ciphers: list[str], passphrase: bytes | None) -> None:
        self.node_name, self.enrollment = node_name, enrollment
        self.ca_file, self.cert_file, self.key_file = ca_file, cert_file, key_file
        self.ciphers, self.passphrase = ciphers, passphrase

    def current(self) -> CertSummary:
        try:
            data = self.cert_file.read_bytes()
        except OSError as exc:
            raise CertError(f"cannot read {self.cert_file}: {exc.strerror}") from None
        return peek.summary(data, str(self.cert_file))

    def client_context(self) -> ssl.SSLContext:
        return tls.client_context(ca_file=self.ca_file, cert_file=self.cert_file,
                                  key_file=self.key_file, passphrase=self.passphrase,
                                  ciphers=self.ciphers)

    def check(self) -> None:
        """Refuse to start with a certificate that cannot work, saying what to do."""
        self.client_context()  # the key matches the certificate and the passphrase opens it
        cert = self.current()
        expected = NODE_CN_PREFIX + self.node_name
        if cert.common_name != expected:
            raise CertError(f"{self.cert_file} is for {cert.common_name!r}, not "
                            f"{expected!r}: re-enroll with `moorage join --force`")
        if cert.not_after <= _now():
            raise CertError(f"the node certificate expired at {cert.not_after}: "
                            "get a fresh token (`moorage gettoken` on the cloud) and run "
                            "`moorage join --force`")

    def renew(self) -> CertSummary:
        """Blocking: new key, CSR, signed over mTLS with the current certificate, saved."""
        from certs import pki  # cryptography: only now, not for the daemon's whole life

        key = pki.generate_key()
        csr = pki.make_csr(key, pki.node_subject(self.node_name))
        cert_pem = request_certificate(
            self.enrollment, self.ca_file.read_bytes(), self.node_name, pki.csr_to_der(csr),
            client_cert=str(self.cert_file), client_key=str(self.key_file),
            passphrase=self.passphrase)
        issued = pki.Issued(key, pki.cert_from_bytes(cert_pem))
        pki.save_pair(issued, pki.PairPaths(self.cert_file, self.key_file), self.passphrase)
        return peek.summary(cert_pem, str(self.cert_file))

    async def run(self, on_rotated: Callable[[], Awaitable[None]],
                  stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            cert = self.current()
            deadline = rotation_deadline(cert.not_before, cert.not_after)
            wait = max(0.0, (deadline - _now()).total_seconds())
            log.info("certificate %s valid until %s; renewal in %.1fs",
                     format(cert.serial, "X"), cert.not_after.isoformat(), wait)
            if await sleep_or_stop(wait, stopping):
                return
            delays = doubling(2.0, 32.0)
            while not stopping.is_set():
                try:
                    issued = await asyncio.to_thread(self.renew)
                    break
                except (EnrollError, CertError, OSError) as exc:
                    delay = next(delays)
                    left = cert.not_after - _now()
                    log.warning("certificate renewal failed (%s); retrying in %.0fs, "
                                "%s before the current one expires", exc, delay,
                                max(left, dt.timedelta(0)))
                    if await sleep_or_stop(min(delay, max(0.5, left.total_seconds() / 4)),
                                            stopping):
                        return
            else:
                return
            log.info("certificate renewed with a new key: serial %s, valid until %s",
                     format(issued.serial, "X"), issued.not_after.isoformat())
            await on_rotated()
