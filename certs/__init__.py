"""PKI for Moorage: CA, keys, CSRs, signing, rotation schedule and the TLS context factory."""

from certs.errors import CertError, CSRError, KeyFileError, PassphraseError, TLSConfigError

__all__ = ["CSRError", "CertError", "KeyFileError", "PassphraseError", "TLSConfigError"]
