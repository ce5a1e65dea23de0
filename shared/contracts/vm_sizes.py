"""The Azure VM sizes a request or the deployment may name: what each node brings, the defaults,
and the sizes Azure retired or rlq no longer offers with their replacements.

This table changes when Azure retires or adds sizes; the request and record schema in
:mod:`shared.contracts.request` validates ``vm_size`` fields against it.
"""

from __future__ import annotations

from typing import NamedTuple


class VmSize(NamedTuple):
    """What one node of a VM size brings (Azure's published figures)."""

    cpus: int
    gpus: int
    memory_gib: int


# The one VM table: every size a request may name, upper case as Azure ML reports them. Current
# series only (Azure VM size docs): GPU NCasT4_v3 (T4), NC A100 v4, NC H100 v5; CPU Dv5, Dasv5, Fsv2.
VM_SIZES: dict[str, VmSize] = {
    # GPU: NCasT4_v3
    "STANDARD_NC4AS_T4_V3": VmSize(4, 1, 28),
    "STANDARD_NC8AS_T4_V3": VmSize(8, 1, 56),
    "STANDARD_NC16AS_T4_V3": VmSize(16, 1, 110),
    "STANDARD_NC64AS_T4_V3": VmSize(64, 4, 440),
    # GPU: NC A100 v4
    "STANDARD_NC24ADS_A100_V4": VmSize(24, 1, 220),
    "STANDARD_NC48ADS_A100_V4": VmSize(48, 2, 440),
    "STANDARD_NC96ADS_A100_V4": VmSize(96, 4, 880),
    # GPU: NC H100 v5
    "STANDARD_NC40ADS_H100_V5": VmSize(40, 1, 320),
    "STANDARD_NC80ADIS_H100_V5": VmSize(80, 2, 640),
    # CPU: Dv5 (Intel)
    "STANDARD_D2_V5": VmSize(2, 0, 8),
    "STANDARD_D4_V5": VmSize(4, 0, 16),
    "STANDARD_D8_V5": VmSize(8, 0, 32),
    "STANDARD_D16_V5": VmSize(16, 0, 64),
    # CPU: Dasv5 (AMD)
    "STANDARD_D2AS_V5": VmSize(2, 0, 8),
    "STANDARD_D4AS_V5": VmSize(4, 0, 16),
    "STANDARD_D8AS_V5": VmSize(8, 0, 32),
    "STANDARD_D16AS_V5": VmSize(16, 0, 64),
    # CPU: Fsv2 (compute optimised)
    "STANDARD_F2S_V2": VmSize(2, 0, 4),
    "STANDARD_F4S_V2": VmSize(4, 0, 8),
    "STANDARD_F8S_V2": VmSize(8, 0, 16),
    "STANDARD_F16S_V2": VmSize(16, 0, 32),
}

DEFAULT_HEAD_VM_SIZE = "STANDARD_NC4AS_T4_V3"
DEFAULT_WORKER_VM_SIZE = "STANDARD_D2AS_V5"

_NC_RETIRED = "was retired on 6 September 2023 (NC series, K80)"
_NCV2_RETIRED = "was retired on 6 September 2023 (NCv2 series, P100)"
_NCV3_RETIRED = "was retired on 30 September 2025 (NCv3 series, V100)"
_PREVIOUS = "is a previous-generation size rlq no longer offers"

# Sizes a request may still name (the seed article's STANDARD_NC6 / STANDARD_D2_V2 among them) that
# are not offered: why, and the replacements, the first of which is taken when the request sets
# compute.allow_size_substitution (never silently). Each replacement has the GPUs of the original.
SUPERSEDED_VM_SIZES: dict[str, tuple[str, tuple[str, ...]]] = {
    "STANDARD_NC6": (_NC_RETIRED, ("STANDARD_NC4AS_T4_V3", "STANDARD_NC24ADS_A100_V4")),
    "STANDARD_NC12": (_NC_RETIRED, ("STANDARD_NC48ADS_A100_V4", "STANDARD_NC80ADIS_H100_V5")),
    "STANDARD_NC24": (_NC_RETIRED, ("STANDARD_NC64AS_T4_V3", "STANDARD_NC96ADS_A100_V4")),
    "STANDARD_NC24R": (_NC_RETIRED, ("STANDARD_NC64AS_T4_V3", "STANDARD_NC96ADS_A100_V4")),
    "STANDARD_NC6S_V2": (_NCV2_RETIRED, ("STANDARD_NC24ADS_A100_V4", "STANDARD_NC4AS_T4_V3")),
    "STANDARD_NC12S_V2": (_NCV2_RETIRED, ("STANDARD_NC48ADS_A100_V4", "STANDARD_NC80ADIS_H100_V5")),
    "STANDARD_NC24S_V2": (_NCV2_RETIRED, ("STANDARD_NC96ADS_A100_V4", "STANDARD_NC64AS_T4_V3")),
    "STANDARD_NC24RS_V2": (_NCV2_RETIRED, ("STANDARD_NC96ADS_A100_V4", "STANDARD_NC64AS_T4_V3")),
    "STANDARD_NC6S_V3": (_NCV3_RETIRED, ("STANDARD_NC24ADS_A100_V4", "STANDARD_NC40ADS_H100_V5")),
    "STANDARD_NC12S_V3": (_NCV3_RETIRED, ("STANDARD_NC48ADS_A100_V4", "STANDARD_NC80ADIS_H100_V5")),
    "STANDARD_NC24S_V3": (_NCV3_RETIRED, ("STANDARD_NC96ADS_A100_V4", "STANDARD_NC64AS_T4_V3")),
    "STANDARD_NC24RS_V3": (_NCV3_RETIRED, ("STANDARD_NC96ADS_A100_V4", "STANDARD_NC64AS_T4_V3")),
    "STANDARD_D1_V2": (_PREVIOUS, ("STANDARD_D2AS_V5", "STANDARD_D2_V5")),
    "STANDARD_D2_V2": (_PREVIOUS, ("STANDARD_D2AS_V5", "STANDARD_D2_V5")),
    "STANDARD_D3_V2": (_PREVIOUS, ("STANDARD_D4AS_V5", "STANDARD_D4_V5")),
    "STANDARD_D4_V2": (_PREVIOUS, ("STANDARD_D8AS_V5", "STANDARD_D8_V5")),
    "STANDARD_D5_V2": (_PREVIOUS, ("STANDARD_D16AS_V5", "STANDARD_D16_V5")),
    "STANDARD_D2S_V3": (_PREVIOUS, ("STANDARD_D2AS_V5", "STANDARD_D2_V5")),
    "STANDARD_D4S_V3": (_PREVIOUS, ("STANDARD_D4AS_V5", "STANDARD_D4_V5")),
    "STANDARD_D8S_V3": (_PREVIOUS, ("STANDARD_D8AS_V5", "STANDARD_D8_V5")),
    "STANDARD_D16S_V3": (_PREVIOUS, ("STANDARD_D16AS_V5", "STANDARD_D16_V5")),
}


def check_vm_size(v: str, *, in_request: bool = True) -> str:
    """``v`` upper-cased when it is in :data:`VM_SIZES`; else why not, naming the replacements."""
    up = v.upper()
    if up in SUPERSEDED_VM_SIZES:
        why, replacements = SUPERSEDED_VM_SIZES[up]
        hint = (
            f" (or set compute.allow_size_substitution: true to run on {replacements[0]})"
            if in_request
            else ""
        )
        raise ValueError(f"{v!r} {why}; use {' or '.join(replacements)}{hint}")
    if up not in VM_SIZES:
        raise ValueError(f"{v!r} is not an allowed VM size; allowed: {', '.join(sorted(VM_SIZES))}")
    return up


def substitute_vm_size(v: str) -> str | None:
    """The size a superseded ``v`` runs on when the request allows substitution, else None."""
    entry = SUPERSEDED_VM_SIZES.get(v.upper()) if isinstance(v, str) else None
    return entry[1][0] if entry else None
