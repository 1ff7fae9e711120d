"""The fallback energy estimate (carbontracker could not run) by hand: watts × seconds × PUE, priced
at the given intensity; unequal factors, so that a dropped or swapped one fails."""

from __future__ import annotations

import pytest

from mas_flower.energy import PUE, estimate_from_seconds


def test_estimate_is_watts_times_seconds_times_pue() -> None:
    assert PUE == 1.58
    report = estimate_from_seconds(90.0, watts=40.0, intensity_g_per_kwh=200.0, country=None)
    # 40 W × 90 s = 3600 J = 0.001 kWh, × PUE 1.58 = 0.00158 kWh; × 200 g/kWh = 0.316 g
    assert report.energy_kwh == pytest.approx(0.00158)
    assert report.co2_g == pytest.approx(0.316)
    assert report.estimated and report.pue == 1.58 and report.intensity_g_per_kwh == 200.0
    assert report.seconds == 90.0 and report.mean_power_w == 40.0  # the power before the PUE
