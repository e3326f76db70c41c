"""Errors raised by the PKI package.

    CertError
    ├── KeyFileError        a key or certificate file is missing, unreadable or malformed
    ├── PassphraseError     an encrypted key without (or with the wrong) passphrase
    ├── CSRError            a certificate signing request that cannot be signed
    └── TLSConfigError      a TLS setting outside what Moorage allows
"""


class CertError(Exception):
    """Base class of every error raised by :mod:`certs`."""


class KeyFileError(CertError):
    pass


class PassphraseError(CertError):
    pass


class CSRError(CertError):
    pass


class TLSConfigError(CertError):
    pass
