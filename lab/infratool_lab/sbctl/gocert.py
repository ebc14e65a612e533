"""Go's ``encoding/json`` view of ``crypto/x509.Certificate`` (list-enrolled-keys --json).

sbctl marshals ``map[string][]*x509.Certificate`` as is, so every exported
field of Go's struct appears, in declaration order. The emulator writes the
fields a reader can rely on (the raw DER parts, algorithms, public key,
serial, names, validity, extensions, basic constraints, key IDs) with Go's
encodings: ``[]byte`` as base64, ``*big.Int`` as a JSON number, ``time.Time``
as RFC 3339, enums as their integer values; the remaining fields (name
constraints, policies, URLs) are left out. See docs/secure-boot.md.
"""

from __future__ import annotations

import base64
from typing import Any

# crypto/x509's SignatureAlgorithm and PublicKeyAlgorithm enums.
_SIG_ALGS = {
    "1.2.840.113549.1.1.4": 2,  # MD5WithRSA
    "1.2.840.113549.1.1.5": 3,  # SHA1WithRSA
    "1.2.840.113549.1.1.11": 4,  # SHA256WithRSA
    "1.2.840.113549.1.1.12": 5,  # SHA384WithRSA
    "1.2.840.113549.1.1.13": 6,  # SHA512WithRSA
    "1.2.840.10045.4.1": 9,  # ECDSAWithSHA1
    "1.2.840.10045.4.3.2": 10,  # ECDSAWithSHA256
    "1.2.840.10045.4.3.3": 11,  # ECDSAWithSHA384
    "1.2.840.10045.4.3.4": 12,  # ECDSAWithSHA512
    "1.3.101.112": 16,  # PureEd25519
}
_KEY_USAGE_BITS = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
    "encipher_only",
    "decipher_only",
)
# pkix.Name's fields, by attribute OID (crypto/x509/pkix FillFromRDNSequence).
_NAME_FIELDS = {
    "2.5.4.6": "Country",
    "2.5.4.10": "Organization",
    "2.5.4.11": "OrganizationalUnit",
    "2.5.4.7": "Locality",
    "2.5.4.8": "Province",
    "2.5.4.9": "StreetAddress",
    "2.5.4.17": "PostalCode",
}


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def _oid(dotted: str) -> list[int]:
    return [int(x) for x in dotted.split(".")]


def _name(name: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {f: None for f in _NAME_FIELDS.values()}
    fields.update(SerialNumber="", CommonName="")
    names = []
    for rdn in name.rdns:
        for attr in rdn:
            oid = attr.oid.dotted_string
            names.append({"Type": _oid(oid), "Value": attr.value})
            if oid in _NAME_FIELDS:
                key = _NAME_FIELDS[oid]
                fields[key] = [*(fields[key] or []), attr.value]
            elif oid == "2.5.4.3":
                fields["CommonName"] = attr.value
            elif oid == "2.5.4.5":
                fields["SerialNumber"] = attr.value
    order = ["Country", "Organization", "OrganizationalUnit", "Locality", "Province", "StreetAddress"]
    out = {k: fields[k] for k in order}
    out.update(PostalCode=fields["PostalCode"], SerialNumber=fields["SerialNumber"])
    out.update(CommonName=fields["CommonName"], Names=names or None, ExtraNames=None)
    return out


def _time(cert: Any, which: str) -> str:
    # *_utc arrived in cryptography 42; lab hosts run Debian's 38 (naive UTC).
    value = getattr(cert, f"{which}_utc", None) or getattr(cert, which)
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def go_certificate(der: bytes) -> dict[str, Any]:
    """The JSON object Go's encoding/json makes of ``x509.ParseCertificate(der)``."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    cert = x509.load_der_x509_certificate(der)
    key = cert.public_key()
    spki = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if isinstance(key, rsa.RSAPublicKey):
        algo, public = 1, {"N": key.public_numbers().n, "E": key.public_numbers().e}
    elif isinstance(key, ec.EllipticCurvePublicKey):
        nums = key.public_numbers()
        algo, public = 3, {"Curve": {}, "X": nums.x, "Y": nums.y}
    elif isinstance(key, ed25519.Ed25519PublicKey):
        algo, public = 4, _b64(key.public_bytes(Encoding.Raw, PublicFormat.Raw))
    else:
        algo, public = 0, None
    key_usage, basic, is_ca, max_path, ski, aki = 0, False, False, -1, None, None
    extensions = []
    for ext in cert.extensions:
        extensions.append(
            {
                "Id": _oid(ext.oid.dotted_string),
                "Critical": ext.critical,
                "Value": _b64(ext.value.public_bytes()),
            }
        )
        value = ext.value
        if isinstance(value, x509.KeyUsage):
            for bit, attr in enumerate(_KEY_USAGE_BITS):
                try:
                    if getattr(value, attr):
                        key_usage |= 1 << bit
                except ValueError:  # encipher/decipher_only without key_agreement
                    pass
        elif isinstance(value, x509.BasicConstraints):
            basic, is_ca = True, value.ca
            max_path = -1 if value.path_length is None else value.path_length
        elif isinstance(value, x509.SubjectKeyIdentifier):
            ski = _b64(value.digest)
        elif isinstance(value, x509.AuthorityKeyIdentifier):
            aki = _b64(value.key_identifier)
    tbs = cert.tbs_certificate_bytes
    return {
        "Raw": _b64(der),
        "RawTBSCertificate": _b64(tbs),
        "RawSubjectPublicKeyInfo": _b64(spki),
        "RawSubject": _b64(cert.subject.public_bytes()),
        "RawIssuer": _b64(cert.issuer.public_bytes()),
        "Signature": _b64(cert.signature),
        "SignatureAlgorithm": _SIG_ALGS.get(cert.signature_algorithm_oid.dotted_string, 0),
        "PublicKeyAlgorithm": algo,
        "PublicKey": public,
        "Version": cert.version.value + 1,
        "SerialNumber": cert.serial_number,
        "Issuer": _name(cert.issuer),
        "Subject": _name(cert.subject),
        "NotBefore": _time(cert, "not_valid_before"),
        "NotAfter": _time(cert, "not_valid_after"),
        "KeyUsage": key_usage,
        "Extensions": extensions or None,
        "ExtraExtensions": None,
        "UnhandledCriticalExtensions": None,
        "BasicConstraintsValid": basic,
        "IsCA": is_ca,
        "MaxPathLen": max_path if basic else 0,
        "MaxPathLenZero": basic and max_path == 0,
        "SubjectKeyId": ski,
        "AuthorityKeyId": aki,
    }
