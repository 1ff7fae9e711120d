"""EnergyMeter against the real carbontracker: offline intensity, PUE, no exits, no network, fast stop."""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.resources
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mas_flower import energy
from mas_flower.energy import EnergyMeter, host_id, measure_energy

REPO = Path(__file__).resolve().parents[1]


def bundled(code: str) -> float:
    """carbontracker's own table, read here independently of mas_flower.energy."""
    path = importlib.resources.files("carbontracker").joinpath("data", "carbon-intensities.csv")
    with path.open() as f:
        return next(float(r["Carbon intensity of electricity (gCO2eq/kWh)"]) for r in csv.DictReader(f)
                    if r["alpha-2"] == code)


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    x = 0
    while time.perf_counter() < end:
        x += 1


def tracker_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(("CarbonTracker", "CarbonIntensity"))]


def logged(log_dir: Path, label: str) -> float:
    """A figure carbontracker wrote to its output log ("Energy" kWh or "CO2eq" g)."""
    (out,) = log_dir.glob("*_carbontracker_output.log")
    return float(re.search(rf"{label}:\s*([0-9.]+)", out.read_text()).group(1))


def run_script(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_busy_loop_is_measured_with_uk_intensity_and_pue(tmp_path: Path) -> None:
    from carbontracker import constants

    meter = EnergyMeter(tmp_path)
    meter.start()
    busy(1.2)
    r = meter.stop()
    assert r.energy_kwh > 0
    assert r.country == "GB" and r.intensity_g_per_kwh == pytest.approx(bundled("GB"))
    assert r.co2_g == pytest.approx(r.energy_kwh * r.intensity_g_per_kwh, rel=1e-12)
    assert r.pue == constants.PUE_2023 == 1.58
    assert r.carbontracker_version == importlib.metadata.version("carbontracker")
    assert 1.15 < r.seconds < 2.0
    assert r.energy_kwh == pytest.approx(r.mean_power_w * r.seconds * r.pue / 3.6e6, rel=1e-9)
    assert f"PUE {r.pue:g}" in r.method
    if not r.components:  # this machine: no NVML GPU, no RAPL -> carbontracker's TDP table estimate
        assert r.estimated and "NOT measured" in r.method and "TDP" in r.method
    # carbontracker's own log says the same (12 decimals), and its threads are gone
    assert logged(tmp_path, "Energy") == pytest.approx(r.energy_kwh, abs=2e-12)
    assert logged(tmp_path, "CO2eq") == pytest.approx(r.co2_g, abs=2e-12)
    assert tracker_threads() == []


def test_a_window_shorter_than_a_sample_still_counts() -> None:
    meter = EnergyMeter(None, components="cpu")
    meter.start()
    r = meter.stop()
    assert r.seconds < 0.5
    assert r.energy_kwh > 0 and r.mean_power_w > 0
    assert tracker_threads() == []


def test_fixed_intensity_reaches_carbontracker_too(tmp_path: Path) -> None:
    with measure_energy(tmp_path, intensity_g_per_kwh=100.0) as m:
        busy(0.3)
    r = m.report
    assert r is not None and r.intensity_g_per_kwh == 100.0 and r.country is None
    assert r.co2_g == pytest.approx(100.0 * r.energy_kwh, rel=1e-12)
    assert logged(tmp_path, "CO2eq") == pytest.approx(r.co2_g, abs=2e-12)


def test_countries_use_bundled_data_or_fail_clearly() -> None:
    assert EnergyMeter(country="de").intensity == pytest.approx(bundled("DE"))
    with pytest.raises(ValueError, match="'XX'.*intensity_g_per_kwh"):
        EnergyMeter(country="XX")
    with pytest.raises(ValueError, match="alpha-2"):
        EnergyMeter(country="GBR")
    with pytest.raises(ValueError, match="intensity_g_per_kwh"):
        EnergyMeter(intensity_g_per_kwh=-1)
    with pytest.raises(ValueError, match="'tpu'"):
        EnergyMeter(components="tpu")


def test_meter_misuse_and_context_manager_on_error() -> None:
    meter = EnergyMeter()
    with pytest.raises(RuntimeError, match="before start"):
        meter.stop()
    meter.start()
    with pytest.raises(RuntimeError, match="twice"):
        meter.start()
    meter.stop()
    with pytest.raises(KeyError), measure_energy() as m:
        raise KeyError("work failed")
    assert m.report is not None and not m.running and tracker_threads() == []


def test_overlapping_meters_in_one_process_and_no_leaked_files(tmp_path: Path) -> None:
    fds = len(os.listdir("/proc/self/fd"))
    outer = EnergyMeter(tmp_path / "outer")
    outer.start()
    with measure_energy(tmp_path / "inner") as inner:
        busy(0.3)
    busy(0.3)
    r = outer.stop()
    assert inner.report.energy_kwh > 0 and r.energy_kwh > inner.report.energy_kwh
    assert r.seconds > inner.report.seconds
    assert tracker_threads() == []
    assert len(os.listdir("/proc/self/fd")) <= fds


def test_missing_gpu_neither_exits_nor_raises(tmp_path: Path) -> None:
    code = (
        "import json\n"
        "from mas_flower.energy import EnergyMeter\n"
        f"m = EnergyMeter({str(tmp_path)!r}, components='gpu')\n"
        "m.start(); r = m.stop()\n"
        "print(json.dumps(r.as_dict()))\n"
    )
    proc = run_script(code)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        has_gpu = True
    except Exception:
        has_gpu = False
    if not has_gpu:
        assert r["components"] == [] and r["energy_kwh"] == 0.0 and r["estimated"]
        assert "no gpu" in r["method"]


def test_no_network_and_prompt_start_stop() -> None:
    code = (
        "import json, socket, time\n"
        "attempts = []\n"
        "def refuse(*a, **k):\n"
        "    attempts.append(repr(a)[:80]); raise OSError('network disabled by test')\n"
        "socket.socket.connect = socket.socket.connect_ex = refuse\n"
        "socket.create_connection = socket.getaddrinfo = refuse\n"
        "from mas_flower.energy import EnergyMeter\n"
        "times = []\n"
        "for _ in range(2):\n"
        "    m = EnergyMeter(None)\n"
        "    t = time.perf_counter(); m.start(); t1 = time.perf_counter(); time.sleep(0.2)\n"
        "    t2 = time.perf_counter(); r = m.stop(); t3 = time.perf_counter()\n"
        "    times.append([t1 - t, t3 - t2])\n"
        "print(json.dumps({'attempts': attempts, 'times': times, 'report': r.as_dict()}))\n"
    )
    proc = run_script(code)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["attempts"] == []
    r = out["report"]
    assert r["intensity_g_per_kwh"] == pytest.approx(bundled("GB")) and r["energy_kwh"] > 0
    assert "could not start" not in r["method"]
    (first_start, first_stop), (start, stop) = out["times"]
    assert first_start < 10 and start < 1.0 and first_stop < 1.0 and stop < 1.0  # first start detects the CPU


def test_host_id_is_stable_and_shared_by_processes_on_this_machine() -> None:
    assert host_id() == host_id() and len(host_id()) > 8
    proc = run_script("from mas_flower.energy import host_id; print(host_id())")
    assert proc.returncode == 0 and proc.stdout.strip() == host_id()


class FakeRapl:
    """A powercap tree whose counters advance at fixed watts (package and DRAM), written atomically."""

    def __init__(self, root: Path, watts: dict[str, float]) -> None:
        self.root, self.watts, self.stop = root, watts, threading.Event()
        for i, name in enumerate(watts):
            d = root / (f"intel-rapl:0:{i - 1}" if i else "intel-rapl:0")
            d.mkdir(parents=True)
            (d / "name").write_text(name + "\n")
        self.t0 = time.perf_counter()
        self.write()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def write(self) -> None:
        t = time.perf_counter() - self.t0
        for i, w in enumerate(self.watts.values()):
            d = self.root / (f"intel-rapl:0:{i - 1}" if i else "intel-rapl:0")
            (d / "tmp").write_text(str(int(1_000_000 + w * t * 1e6)))
            os.replace(d / "tmp", d / "energy_uj")

    def run(self) -> None:
        while not self.stop.wait(0.005):
            self.write()


def test_rapl_devices_are_summed_and_count_as_measured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """carbontracker's real Intel handler reads a fake sysfs: package 5 W + DRAM 2 W = 7 W."""
    from carbontracker.components.cpu import intel

    rapl = FakeRapl(tmp_path / "powercap", {"package-0": 5.0, "dram": 2.0})
    monkeypatch.setattr(intel, "RAPL_DIR", str(rapl.root) + "/")
    energy._probe.cache_clear()
    try:
        meter = EnergyMeter(tmp_path / "logs", components="cpu")
        meter.start()
        time.sleep(1.2)
        t = time.perf_counter()
        r = meter.stop()
        stop_s = time.perf_counter() - t
    finally:
        rapl.stop.set()
        energy._probe.cache_clear()
    assert r.components == ("cpu",) and not r.estimated and "Intel RAPL" in r.method
    assert r.mean_power_w == pytest.approx(7.0, abs=0.3)
    assert r.energy_kwh == pytest.approx(r.mean_power_w * r.seconds * 1.58 / 3.6e6, rel=1e-9)
    assert r.extra["carbontracker_kwh"] == pytest.approx(r.energy_kwh / 2, rel=0.05)  # it averages the two
    assert stop_s < 1.5  # at most one 1 s RAPL sample in flight
    assert tracker_threads() == []


def test_the_hardware_probe_is_kept_per_machine_boot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh process per deployed message: with a probe cache, only the first one probes (py-cpuinfo's
    subprocess, NVML, RAPL); the others read the same answer, and measure the same way."""
    cache = tmp_path / "cache"
    first = EnergyMeter(probe_cache=cache)
    with first:
        busy(0.05)
    saved = list(cache.glob("energy-probe-*.json"))
    assert len(saved) == 1

    def no_probe(name: str):
        raise AssertionError(f"probed {name} again although the probe was saved")

    monkeypatch.setattr(energy, "_probe", no_probe)
    again = EnergyMeter(probe_cache=cache)
    with again:
        busy(0.05)
    assert again.report.method == first.report.method and again.report.estimated == first.report.estimated

    # Other visible GPUs are another answer: probed anew (here the probe is ours, counting).
    calls: list[str] = []
    monkeypatch.setattr(energy, "_probe", lambda name: calls.append(name) or energy._Part(name, "", False))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    EnergyMeter(probe_cache=cache).start()
    assert calls == ["gpu", "cpu"] and len(list(cache.glob("energy-probe-*.json"))) == 2
    saved[0].write_text("{not json")  # a damaged file is probed again, not trusted
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    calls.clear()
    EnergyMeter(probe_cache=cache).start()
    assert calls == ["gpu", "cpu"]
