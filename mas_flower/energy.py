"""Energy and carbon of a run.

Placeholder until carbontracker is wired in (issue: every method, measured energy and carbon):
a plain estimate from the clients' training seconds at an assumed average power, with the
carbontracker-style PUE and the United Kingdom intensity the paper used. Every result it produces
says `energy_estimated: true` and how it was estimated.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Assumed average power of one client's training process (W): a share of a CPU package's TDP.
ASSUMED_CLIENT_WATTS = 30.0
#: Power usage effectiveness carbontracker applies by default.
PUE = 1.58
#: Carbon intensity (gCO2eq/kWh) used when nothing is measured: the UK average carbontracker bundles.
UK_INTENSITY_G_PER_KWH = 217.0


@dataclass(frozen=True)
class EnergyReport:
    energy_kwh: float
    co2_g: float
    estimated: bool
    method: str
    intensity_g_per_kwh: float
    pue: float


def estimate_from_seconds(client_seconds: float) -> EnergyReport:
    kwh = client_seconds * ASSUMED_CLIENT_WATTS * PUE / 3.6e6
    return EnergyReport(kwh, kwh * UK_INTENSITY_G_PER_KWH, True,
                        f"estimate: {ASSUMED_CLIENT_WATTS:g} W x client training seconds x PUE {PUE}",
                        UK_INTENSITY_G_PER_KWH, PUE)
