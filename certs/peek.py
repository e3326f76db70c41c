"""A certificate's serial, subject common name and validity, read without cryptography.

edgecore needs only these at start (to check its certificate and schedule its
renewal), and importing ``cryptography.x509`` costs about 11 MB of resident
memory, a quarter of edgecore's budget. Renewal itself, which is rare, still
uses cryptography. This reads just enough DER (X.509, RFC 5280) for the fields
above; anything it cannot read raises :class:`CertError` naming the file.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from dataclasses import dataclass

from certs.errors import CertError

COMMON_NAME_OID = bytes([0x55, 0x04, 0x03])  # 2.5.4.3
_STRING_TAGS = {0x0C: "utf-8", 0x13: "ascii", 0x16: "ascii", 0x14: "latin-1",
                0x1E: "utf-16-be"}


@dataclass(frozen=True)
class CertSummary:
    serial: int
    common_name: str
    not_before: dt.datetime
    not_after: dt.datetime


class _Malformed(Exception):
    pass


def _tlv(data: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of the value, end of the value) of the element at ``at``."""
    if at + 2 > len(data):
        raise _Malformed("truncated")
    tag, first = data[at], data[at + 1]
    at += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if not 1 <= count <= 4 or at + count > len(data):
            raise _Malformed("bad length")
        length = int.from_bytes(data[at:at + count], "big")
        at += count
    if at + length > len(data):
        raise _Malformed("truncated")
    return tag, at, at + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out, at = [], start
    while at < end:
        tag, value_start, value_end = _tlv(data, at)
        if value_end > end:
            raise _Malformed("element overruns its parent")
        out.append((tag, value_start, value_end))
        at = value_end
    return out


def _time(tag: int, text: bytes) -> dt.datetime:
    value = text.decode("ascii")
    if tag == 0x17 and len(value) == 13 and value.endswith("Z"):  # UTCTime YYMMDDHHMMSSZ
        year = int(value[:2])
        value = f"{1900 + year if year >= 50 else 2000 + year}{value[2:]}"
    elif not (tag == 0x18 and len(value) == 15 and value.endswith("Z")):
        raise _Malformed("unsupported time")
    return dt.datetime.strptime(value, "%Y%m%d%H%M%SZ").replace(tzinfo=dt.UTC)


def _common_name(data: bytes, start: int, end: int) -> str:
    for _, set_start, set_end in _children(data, start, end):  # RDNs
        for _, pair_start, pair_end in _children(data, set_start, set_end):
            parts = _children(data, pair_start, pair_end)
            if len(parts) == 2 and parts[0][0] == 0x06 and \
                    data[parts[0][1]:parts[0][2]] == COMMON_NAME_OID:
                tag, value_start, value_end = parts[1]
                encoding = _STRING_TAGS.get(tag)
                if encoding is None:
                    raise _Malformed("unsupported string type")
                return data[value_start:value_end].decode(encoding)
    return ""


def _der(data: bytes) -> bytes:
    marker = b"-----BEGIN CERTIFICATE-----"
    if marker not in data:
        return data
    body = data.split(marker, 1)[1].split(b"-----END CERTIFICATE-----", 1)[0]
    return base64.b64decode(b"".join(body.split()), validate=True)


def summary(data: bytes, source: str) -> CertSummary:
    """The summary of the first certificate in ``data`` (PEM or DER)."""
    try:
        der = _der(data)
        tag, start, _ = _tlv(der, 0)
        if tag != 0x30:
            raise _Malformed("not a sequence")
        tbs_tag, tbs_start, tbs_end = _tlv(der, start)
        if tbs_tag != 0x30:
            raise _Malformed("no TBSCertificate")
        fields = _children(der, tbs_start, tbs_end)
        if fields and fields[0][0] == 0xA0:  # [0] version
            fields = fields[1:]
        if len(fields) < 5 or fields[0][0] != 0x02 or fields[3][0] != 0x30 or \
                fields[4][0] != 0x30:
            raise _Malformed("unexpected TBSCertificate layout")
        serial = int.from_bytes(der[fields[0][1]:fields[0][2]], "big", signed=True)
        validity = _children(der, fields[3][1], fields[3][2])
        if len(validity) != 2:
            raise _Malformed("bad validity")
        not_before, not_after = (_time(tag, der[s:e]) for tag, s, e in validity)
        return CertSummary(serial, _common_name(der, fields[4][1], fields[4][2]), not_before,
                           not_after)
    except (_Malformed, ValueError, UnicodeDecodeError, binascii.Error) as exc:
        raise CertError(f"{source} is not a readable X.509 certificate ({exc}): enroll again "
                        "with `moorage join --force`") from None
