"""Which Microsoft certificates ``sbctl enroll-keys --microsoft`` writes, by sbctl version.

sbctl embeds them (``certs/microsoft/{KEK,db}``) and enrolls them with
Microsoft's owner GUID. Releases 0.13 to 0.16 carry the three 2011
certificates; 0.17 added the four 2023 ones (checked against the tags of
Foxboron/sbctl; the files are byte-identical across releases). The SHA-256
is that of the DER certificate, which is what ``list-enrolled-keys --json``
returns as ``Raw``, so an enrollment can be checked certificate by
certificate.
"""

from __future__ import annotations

from dataclasses import dataclass

MICROSOFT_2023_SINCE = (0, 17)


@dataclass(frozen=True)
class VendorCert:
    """One certificate sbctl can enroll for a vendor."""

    var: str
    name: str
    sha256: str
    since: tuple[int, int]


MICROSOFT: tuple[VendorCert, ...] = (
    VendorCert(
        "KEK",
        "Microsoft Corporation KEK CA 2011",
        "a1117f516a32cefcba3f2d1ace10a87972fd6bbe8fe0d0b996e09e65d802a503",
        (0, 0),
    ),
    VendorCert(
        "KEK",
        "Microsoft Corporation KEK 2K CA 2023",
        "3cd3f0309edae228767a976dd40d9f4affc4fbd5218f2e8cc3c9dd97e8ac6f9d",
        MICROSOFT_2023_SINCE,
    ),
    VendorCert(
        "db",
        "Microsoft Corporation UEFI CA 2011",
        "48e99b991f57fc52f76149599bff0a58c47154229b9f8d603ac40d3500248507",
        (0, 0),
    ),
    VendorCert(
        "db",
        "Microsoft Windows Production PCA 2011",
        "e8e95f0733a55e8bad7be0a1413ee23c51fcea64b3c8fa6a786935fddcc71961",
        (0, 0),
    ),
    VendorCert(
        "db",
        "Microsoft Option ROM UEFI CA 2023",
        "e5be3e64c6e66a281457ecdece0d6d0787577aad2a3a0144262c10c14ba8d8f1",
        MICROSOFT_2023_SINCE,
    ),
    VendorCert(
        "db",
        "Microsoft UEFI CA 2023",
        "f6124e34125bee3fe6d79a574eaa7b91c0e7bd9d929c1a321178efd611dad901",
        MICROSOFT_2023_SINCE,
    ),
    VendorCert(
        "db",
        "Windows UEFI CA 2023",
        "076f1fea90ac29155ebf77c17682f75f1fdd1be196da302dc8461e350a9ae330",
        MICROSOFT_2023_SINCE,
    ),
)
MICROSOFT_SHA256 = {c.sha256: c for c in MICROSOFT}


def microsoft_certs(version: tuple[int, ...] | None) -> list[VendorCert]:
    """The Microsoft certificates this sbctl version enrolls (None: unknown, so all it may)."""
    if version is None:
        return list(MICROSOFT)
    return [c for c in MICROSOFT if version >= c.since]
