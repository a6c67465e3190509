"""Spectrum on the switches' ports: DWDM channels as TAPI bands, and when a port can be shared.

The orchestrator's copy of the switch's rule (`qkdnode.tapi.model._clash`), so that it plans
direct links the switches accept: a module port carries one service; a line port (a fibre's) is
shared by services whose spectra are both given and disjoint (WDM); a service without a spectrum
(an O-band, broadband cross-connect) has its ports to itself.
"""

from __future__ import annotations

from .model import Interface
from .routing import _channels

__all__ = ["Band", "GRID_ORIGIN_MHZ", "GRID_STEP_MHZ", "band_text", "bands_overlap", "channel_band",
           "common_channel", "share_refusal"]

GRID_ORIGIN_MHZ = 190_000_000  # ITU-T G.694.1: channel n at 190 THz + n x 100 GHz
GRID_STEP_MHZ = 100_000

Band = tuple[int, int]  # [lower, upper) MHz


def channel_band(channel: int | None) -> Band | None:
    """The 100 GHz DWDM channel as a TAPI spectrum; None (broadband) off the grid."""
    if channel is None:
        return None
    centre = GRID_ORIGIN_MHZ + channel * GRID_STEP_MHZ
    return (centre - GRID_STEP_MHZ // 2, centre + GRID_STEP_MHZ // 2)


def common_channel(a: Interface, b: Interface) -> int | None:
    ca, cb = _channels(a.wavelength), _channels(b.wavelength)
    if ca is None or cb is None:
        return None
    both = sorted(ca & cb)
    return both[0] if both else None


def bands_overlap(a: Band | None, b: Band | None) -> bool:
    """None is the whole fibre, which overlaps everything."""
    return a is None or b is None or (a[0] < b[1] and b[0] < a[1])


def band_text(band: Band | None) -> str:
    return "the whole fibre" if band is None else f"{band[0]}-{band[1]} MHz"


def share_refusal(line: bool, held: Band | None, wanted: Band | None) -> str | None:
    """Why a port holding a service of spectrum `held` cannot take one more of spectrum `wanted`
    (None: it can). The switch's rule: a module port carries one service; a line port is shared
    only by services that both carry a spectrum, and disjoint ones."""
    if not line:
        return "a module port carries one service"
    if held is None or wanted is None:
        return (f"a line port is shared only by services with disjoint spectra (held: {band_text(held)}, "
                f"this link: {band_text(wanted)})")
    if bands_overlap(held, wanted):
        return f"wavelength collision: {band_text(wanted)} overlaps {band_text(held)}"
    return None
