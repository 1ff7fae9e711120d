"""The run's energy is described once, briefly: per-round parts metered alike are grouped, and the
log line says measured or estimated, what was measured, mean power x seconds x PUE."""

from __future__ import annotations

from mas_flower.strategy.outputs import distinct_methods, energy_brief

FALLBACK = "carbontracker 2.4.7: cpu {w} W NOT measured: fallback; gpu: none (0 W); x {s} s x PUE 1.58"
RAPL = "carbontracker 2.4.7: cpu {w} W via Intel RAPL (package-0; {n} samples); x {s} s x PUE 1.58 (measured)"


def part(method: str, seconds: float, watts: float, components: list[str], estimated: bool) -> dict:
    return {"method": method, "seconds": seconds, "mean_power_w": watts, "components": components,
            "estimated": estimated, "pue": 1.58}


def test_rounds_metered_alike_are_said_once_with_their_count() -> None:
    methods = [FALLBACK.format(w="35.61", s="2.8"), RAPL.format(w="12.5", n=40, s="3.1"),
               FALLBACK.format(w="35.61", s="3.05"), RAPL.format(w="14.25", n=7, s="0.4"),
               FALLBACK.format(w="35.61", s="12")]
    out = distinct_methods(methods)
    assert out == [methods[0] + " (first of 3 parts metered alike)", methods[1] + " (first of 2 parts metered alike)"]
    assert distinct_methods([methods[0]]) == [methods[0]]
    assert distinct_methods([]) == []


def test_the_brief_line_weights_power_by_seconds_and_names_what_was_measured() -> None:
    parts = [part("a", 10.0, 20.0, ["cpu"], False), part("b", 30.0, 40.0, ["cpu", "gpu"], False)]
    line = energy_brief({"energy_parts": parts, "energy_estimated": False, "energy_method": "x"})
    # (20 W x 10 s + 40 W x 30 s) / 40 s = 35 W
    assert line == "measured (measured: cpu, gpu): mean 35.0 W x 40 s x PUE 1.58; how: results.json energy_method"
    estimated = energy_brief({"energy_parts": [part("c", 4.0, 35.6, [], True)], "energy_estimated": True,
                              "energy_method": "c"})
    assert estimated.startswith("ESTIMATED (no component measured, a constant power assumed): mean 35.6 W x 4 s")
    assert energy_brief({"energy_parts": [], "energy_estimated": True, "energy_method": "nothing measured"}) == \
        "estimated: nothing measured"
