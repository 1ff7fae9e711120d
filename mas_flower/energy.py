"""Energy and carbon of a piece of work, measured with carbontracker 2.4.x (no Flower here).

`EnergyMeter` wraps one `CarbonTracker` as a single epoch around the work, and makes it safe to use
inside a long-lived server or client process:

* offline: carbontracker looks its location up over the network (geocoder) when it starts; we patch
  that look-up, for the duration of the constructor only, to the chosen country, so it takes the
  country's intensity from its own bundled table (United Kingdom by default, as the paper) with no
  network call. A fixed g/kWh may be given instead.
* never exits the process: `ignore_errors=True` (otherwise it calls `os._exit(70)`), and components
  the machine lacks are removed before carbontracker sees them (its monitoring thread would fail and
  delete the tracker under our feet).
* fast: which handler serves each component (NVML, RAPL, or the CPU table after py-cpuinfo, which
  spawns a Python subprocess: ~1.3 s) is probed once per process, or once per machine boot with a
  `probe_cache` folder (a deployed node starts a fresh process per message); stop joins
  carbontracker's threads and closes its log files.
* honest: `estimated` is True unless every requested component was read from a power sensor (NVML,
  Intel RAPL, Apple powermetrics); `method` says what the numbers are.

Energy is read from the tracker's in-memory samples after its thread has joined (its log is written
before the join, so a sample in flight could be missing there), as mean power x duration x PUE, the
formula carbontracker uses, except that several devices of one component (RAPL package + DRAM, or
several GPUs) are summed: carbontracker 2.4.7 flattens their samples into one list and averages them.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import importlib.metadata
import importlib.resources
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mas_flower.files import write_text_atomic

#: Fallback when carbontracker cannot run at all: assumed power of one training process (W).
ASSUMED_CLIENT_WATTS = 30.0
#: carbontracker's `constants.PUE_2023` (read from it at run time when it imports).
PUE = 1.58
#: carbontracker 2.4.7's bundled United Kingdom intensity (2024), used only if its table can't be read.
UK_INTENSITY_G_PER_KWH = 210.89114
#: How often carbontracker samples power while measuring (s); the first sample is taken at start.
UPDATE_INTERVAL_S = 0.5
_COMPONENTS = ("gpu", "cpu")
_SENSOR_HANDLERS = {"NvidiaGPU": "NVML", "IntelCPU": "Intel RAPL", "AppleSiliconCPU": "Apple powermetrics",
                    "AppleSiliconGPU": "Apple powermetrics"}
_LOCK = threading.Lock()  # carbontracker construction patches class attributes for its duration


@dataclass(frozen=True)
class EnergyReport:
    energy_kwh: float  # includes the PUE
    co2_g: float  # energy_kwh x intensity_g_per_kwh
    estimated: bool  # False only if every requested component was read from a power sensor
    method: str  # what was measured or assumed, in words
    intensity_g_per_kwh: float
    pue: float
    carbontracker_version: str | None = None
    components: tuple[str, ...] = ()  # components read from a power sensor ("gpu", "cpu")
    country: str | None = None  # ISO alpha-2 whose bundled intensity was used; None for a fixed intensity
    seconds: float = 0.0  # measured duration
    mean_power_w: float = 0.0  # machine power over the window, before the PUE
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # diagnostics, JSON-safe

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields (components as a list)."""
        return {"energy_kwh": self.energy_kwh, "co2_g": self.co2_g, "estimated": self.estimated,
                "method": self.method, "intensity_g_per_kwh": self.intensity_g_per_kwh, "pue": self.pue,
                "carbontracker_version": self.carbontracker_version, "components": list(self.components),
                "country": self.country, "seconds": self.seconds, "mean_power_w": self.mean_power_w}


def carbontracker_version() -> str | None:
    try:
        return importlib.metadata.version("carbontracker")
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def host_id() -> str:
    """Identifier of the machine whose power meters this process sees.

    Linux's boot_id: every process and container on one running kernel shares it (and shares RAPL,
    NVML and the CPU), and it differs between machines and VMs. Hostnames would differ between
    containers on one machine. Falls back to machine-id, then hostname + MAC.
    """
    for path in ("/proc/sys/kernel/random/boot_id", "/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            value = Path(path).read_text().strip()
        except OSError:
            continue
        if value:
            return f"{'boot' if 'boot_id' in path else 'machine'}-{value}"
    return f"host-{socket.gethostname()}-{uuid.getnode():012x}"


@functools.lru_cache(maxsize=1)
def _bundled_intensities() -> dict[str, float]:
    """carbontracker's per-country table (alpha-2 -> gCO2eq/kWh), read without importing its tracker."""
    path = importlib.resources.files("carbontracker").joinpath("data", "carbon-intensities.csv")
    with path.open("r", encoding="utf-8") as f:
        return {row["alpha-2"].strip().upper(): float(row["Carbon intensity of electricity (gCO2eq/kWh)"])
                for row in csv.DictReader(f) if row.get("alpha-2")}


def resolve_intensity(country: str | None = "GB", intensity_g_per_kwh: float | None = None) -> tuple[float, str | None]:
    """(g/kWh, country or None): a fixed intensity wins; else carbontracker's bundled value for the country."""
    if intensity_g_per_kwh is not None:
        value = float(intensity_g_per_kwh)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"intensity_g_per_kwh must be a finite number >= 0, got {intensity_g_per_kwh!r}")
        return value, None
    code = (country or "").strip().upper()
    if len(code) != 2 or not code.isalpha():
        raise ValueError(f"country must be an ISO 3166 alpha-2 code such as 'GB', got {country!r}")
    try:
        table = _bundled_intensities()
    except (OSError, ModuleNotFoundError, KeyError, ValueError) as err:
        if code == "GB":
            return UK_INTENSITY_G_PER_KWH, code
        raise ValueError(f"cannot read carbontracker's bundled intensities ({err}); pass intensity_g_per_kwh") from err
    if code not in table:
        raise ValueError(f"carbontracker {carbontracker_version()} bundles no carbon intensity for country {code!r} "
                         "(data/carbon-intensities.csv); pass intensity_g_per_kwh=<gCO2eq/kWh> instead")
    return table[code], code


def estimate_from_seconds(seconds: float, *, watts: float = ASSUMED_CLIENT_WATTS, country: str | None = "GB",
                          intensity_g_per_kwh: float | None = None, reason: str = "nothing measured") -> EnergyReport:
    """Last resort when carbontracker cannot run: `watts` x seconds x PUE, flagged as an estimate."""
    intensity, code = resolve_intensity(country, intensity_g_per_kwh)
    kwh = seconds * watts * PUE / 3.6e6
    return EnergyReport(kwh, kwh * intensity, True,
                        f"estimate ({reason}): assumed {watts:g} W x {seconds:.3f} s x PUE {PUE}", intensity, PUE,
                        carbontracker_version(), (), code, float(seconds), float(watts))


# ---------------------------------------------------------------------------------------------- hardware


@dataclass(frozen=True)
class _Part:
    """How carbontracker would measure one component on this machine."""

    name: str
    handler: str  # carbontracker handler class, "" if the component is absent
    sensor: bool  # read from a power sensor, as opposed to a table estimate
    devices: tuple[str, ...] = ()
    note: str = ""  # what the estimate is, for `method`
    sim_cpu: tuple[str, float] | None = None  # (brand, TDP W): stand in for unreadable RAPL


def _strip_console(loggers: Any) -> None:
    """Drop carbontracker's console handlers (its log files, if any, keep everything)."""
    for lg in loggers:
        for h in list(lg.handlers):
            if type(h) is logging.StreamHandler:
                lg.removeHandler(h)
        if not lg.handlers:  # else logging's last-resort handler prints warnings to stderr
            lg.addHandler(logging.NullHandler())


def _close(logger: Any) -> None:
    for lg in (logger.logger, logger.logger_output, logger.logger_err):
        for h in list(lg.handlers):
            lg.removeHandler(h)
            h.close()


@functools.lru_cache(maxsize=1)
def _quiet_logger_class() -> type:
    """carbontracker's Logger without console output: a tracker per training call would print every time."""
    from carbontracker import loggerutil

    class QuietLogger(loggerutil.Logger):
        def _setup(self, *args: Any, **kwargs: Any) -> Any:
            loggers = super()._setup(*args, **kwargs)
            _strip_console(loggers)
            return loggers

    return QuietLogger


@functools.lru_cache(maxsize=1)
def _cpu_brand() -> str:
    """CPU brand as carbontracker's generic handler detects it (py-cpuinfo in a subprocess: once per process)."""
    return _generic_cls().get_cpu_brand(None)  # type: ignore[arg-type]  # does not use self


def _generic_cpu() -> tuple[str, float, str]:
    """(brand, TDP W, table row) of carbontracker's CPU fallback, which draws 50% of that TDP."""
    brand = _cpu_brand()
    with _patched(_generic_cls(), "get_cpu_brand", lambda self: brand):
        cpu = _generic_cls()(pids=[], devices_by_pid=False)
    cpu.init()
    short = cpu.cpu_brand.split("@")[0].strip()
    row = cpu.cpu_brand if cpu.cpu_brand in cpu.cpu_power_data else next(
        (name for name in cpu.cpu_power_data if short in name), "average of its table")
    return cpu.cpu_brand, 2.0 * float(cpu.tdp), row


@functools.cache
def _probe(name: str) -> _Part:
    """Which carbontracker handler serves `name` here, tried in carbontracker's own order."""
    from carbontracker import exceptions
    from carbontracker.components import component

    for make in component.handlers_by_name(name):
        if make.__name__ == "GenericCPU":
            brand, tdp, row = _generic_cpu()
            return _Part(name, "GenericCPU", False, (brand,), _generic_note(brand, tdp, row))
        handler = make(pids=[], devices_by_pid=False)
        try:
            if not handler.available():
                continue
            handler.init()
            devices = tuple(str(d) for d in handler.devices())
            if make.__name__ == "IntelCPU":
                try:
                    handler._get_measurements()
                except exceptions.IntelRaplPermissionError as err:  # carbontracker would record 0 W
                    brand, tdp, row = _generic_cpu()
                    return _Part(name, "SimulatedCPUHandler", False, (brand,),
                                 f"Intel RAPL present but unreadable ({', '.join(err.file_names)}); "
                                 + _generic_note(brand, tdp, row), sim_cpu=(brand, tdp))
            handler.shutdown()
        except Exception:  # a handler that cannot start is absent, as carbontracker treats it
            continue
        return _Part(name, make.__name__, make.__name__ in _SENSOR_HANDLERS, devices)
    return _Part(name, "", False)


def _probe_file(cache_dir: Path) -> Path:
    """One file per machine boot, user, visible GPUs and carbontracker version: what can change the probe."""
    key = "\n".join([host_id(), str(os.getuid()) if hasattr(os, "getuid") else "",
                     os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"), str(carbontracker_version())])
    return cache_dir / f"energy-probe-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def _probed_parts(names: tuple[str, ...], cache_dir: Path | None) -> tuple[_Part, ...]:
    """`_probe` of each name, read from (and saved to) `cache_dir` when given; delete the file to probe again."""
    if cache_dir is None:
        return tuple(_probe(n) for n in names)
    path = _probe_file(Path(cache_dir))
    try:
        saved = {p["name"]: _Part(**{**p, "devices": tuple(p["devices"]),
                                     "sim_cpu": tuple(p["sim_cpu"]) if p["sim_cpu"] else None})
                 for p in json.loads(path.read_text())}
    except (OSError, ValueError, KeyError, TypeError):
        saved = {}
    if any(n not in saved for n in names):
        saved.update({n: _probe(n) for n in names})
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps([vars(p) for p in saved.values()]))
    return tuple(saved[n] for n in names)


def _generic_note(brand: str, tdp: float, row: str) -> str:
    return (f"carbontracker's CPU fallback: constant {tdp / 2:g} W = 50% of TDP {tdp:g} W from its table "
            f"for CPU '{brand}' (row '{row}'), whatever the load or the cores this machine has")


@contextmanager
def _patched(owner: Any, attr: str, value: Any) -> Iterator[None]:
    """Temporarily replace an attribute, failing loudly if carbontracker no longer has it."""
    if not hasattr(owner, attr):
        raise RuntimeError(f"carbontracker {carbontracker_version()} has no {owner.__name__}.{attr}: "
                           "mas_flower.energy needs updating")
    own, old = attr in owner.__dict__, owner.__dict__.get(attr)
    setattr(owner, attr, value)
    try:
        yield
    finally:
        if own:
            setattr(owner, attr, old)
        else:
            delattr(owner, attr)


# ---------------------------------------------------------------------------------------------- the meter


@dataclass
class _Run:
    tracker: Any  # carbontracker.tracker.CarbonTracker
    thread: Any  # its CarbonTrackerThread (the tracker deletes its own reference when it stops)
    intensity: Any  # its CarbonIntensityThread
    logger: Any


class EnergyMeter:
    """Measures this machine's energy between `start()` and `stop()` with carbontracker.

    Power is machine-wide: two meters running at once on one machine each count the whole machine.
    `components` is carbontracker's: "all" (= "gpu,cpu"), "gpu", "cpu" or "gpu,cpu". `probe_cache`: a
    folder where the hardware probe is kept per machine boot (saves ~1.3 s in every fresh process).
    """

    def __init__(self, log_dir: Path | str | None = None, *, country: str | None = "GB",
                 intensity_g_per_kwh: float | None = None, components: str = "all",
                 update_interval_s: float = UPDATE_INTERVAL_S, probe_cache: Path | str | None = None) -> None:
        self.intensity, self.country = resolve_intensity(country, intensity_g_per_kwh)
        self.probe_cache = None if probe_cache is None else Path(probe_cache)
        names = components.replace(" ", "").lower()
        wanted = list(_COMPONENTS) if names == "all" else names.split(",")
        if not wanted or any(n not in _COMPONENTS for n in wanted) or len(set(wanted)) != len(wanted):
            raise ValueError(f"components must be 'all', 'gpu', 'cpu' or 'gpu,cpu', got {components!r}")
        if not update_interval_s > 0:
            raise ValueError(f"update_interval_s must be > 0, got {update_interval_s!r}")
        self.requested = tuple(n for n in _COMPONENTS if n in wanted)
        self.log_dir = None if log_dir is None else Path(log_dir)
        self.update_interval_s = float(update_interval_s)
        self.report: EnergyReport | None = None
        self._t0: float | None = None
        self._run: _Run | None = None
        self._parts: tuple[_Part, ...] = ()
        self._failure = ""

    @property
    def running(self) -> bool:
        return self._t0 is not None

    def start(self) -> None:
        if self._t0 is not None:
            raise RuntimeError("EnergyMeter.start() called twice without stop()")
        self.report, self._run, self._failure = None, None, ""
        try:
            with _LOCK:
                self._parts = _probed_parts(self.requested, self.probe_cache)
            present = [p for p in self._parts if p.handler]
            if present:
                self._run = self._construct(present)
        except (Exception, SystemExit) as err:  # carbontracker itself unusable: fall back, say why
            self._failure = f"carbontracker could not start: {type(err).__name__}: {err}"
            self._run = None
        self._t0 = time.perf_counter()
        if self._run is not None:
            try:
                self._run.tracker.epoch_start()
            except (Exception, SystemExit) as err:
                self._failure = f"carbontracker epoch_start failed: {type(err).__name__}: {err}"

    def _construct(self, present: list[_Part]) -> _Run:
        from carbontracker import tracker as ct
        from carbontracker.emissions.intensity.fetcher import IntensityFetch
        from carbontracker.emissions.intensity.intensity import IntensityService
        from carbontracker.emissions.intensity.location import Location

        country = self.country or "GB"  # any bundled country; a fixed intensity replaces its value below
        offline = Location(ok=True, address=f"offline ({country}, set by mas_flower)", country=country)
        sim = next((p.sim_cpu for p in present if p.sim_cpu), None)
        brand = next((p.devices[0] for p in present if p.handler == "GenericCPU"), "")  # probed: no subprocess
        with _LOCK, _patched(IntensityService, "_fetch_geo_location", lambda self: offline), \
                _patched(_generic_cls(), "get_cpu_brand", lambda self: brand), \
                _patched(ct.loggerutil, "Logger", _quiet_logger_class()):
            tracker = ct.CarbonTracker(
                epochs=1, epochs_before_pred=0, monitor_epochs=1, update_interval=self.update_interval_s,
                interpretable=False, ignore_errors=True, components=",".join(p.name for p in present),
                log_dir=None if self.log_dir is None else str(self.log_dir), verbose=0, api_keys={},
                sim_cpu=sim[0] if sim else None, sim_cpu_tdp=sim[1] if sim else None,
                sim_cpu_util=0.5 if sim else None)
        if tracker.deleted:
            raise RuntimeError("CarbonTracker stopped during construction (see its log)")
        run = _Run(tracker, tracker.tracker, tracker.intensity_updater, tracker.logger)
        service = run.intensity.carbon_intensity_service
        if self.country is None:  # fixed intensity: make carbontracker's own log and CO2 agree with ours
            service.default_carbon_intensity = IntensityFetch(
                carbon_intensity=self.intensity, address="fixed by caller", country="fixed",
                is_fetched=False, is_localized=False)
        elif abs(service.default_carbon_intensity.carbon_intensity - self.intensity) > 1e-6:
            raise RuntimeError(f"carbontracker chose {service.default_carbon_intensity.carbon_intensity} g/kWh "
                               f"for {self.country}, expected its bundled {self.intensity}")
        return run

    def stop(self) -> EnergyReport:
        if self._t0 is None:
            raise RuntimeError("EnergyMeter.stop() called before start()")
        wall = time.perf_counter() - self._t0
        run, self._t0, self._run = self._run, None, None
        if run is None:
            self.report = self._unmeasured(wall)
            return self.report
        try:
            self.report = self._finish(run, wall)
        finally:
            _shutdown(run)
        return self.report

    def _finish(self, run: _Run, wall: float) -> EnergyReport:
        import numpy as np
        from carbontracker import constants

        thread, tracker = run.thread, run.tracker
        if not tracker.deleted:  # a window shorter than the thread's wake-up: let the first samples land
            t = time.perf_counter()
            while any(not (c.power_usages and c.power_usages[-1]) for c in thread.components) \
                    and thread.is_alive() and time.perf_counter() - t < 3.0:
                time.sleep(0.001)
            thread.cur_epoch_time += time.perf_counter() - t  # keep the wait out of its epoch duration
            try:
                tracker.epoch_end()  # logs the epoch and "Actual consumption", then stops and joins
            except (Exception, SystemExit) as err:
                self._failure = f"carbontracker epoch_end failed: {type(err).__name__}: {err}"
        if self._failure or not thread.epoch_times:
            return self._unmeasured(wall, self._failure or "carbontracker stopped monitoring early (see its log)")
        seconds = float(sum(thread.epoch_times))
        pue = float(constants.PUE_2023)
        parts = {p.name: p for p in self._parts}
        power, texts, sensed, estimated = 0.0, [], [], False
        for comp in thread.components:
            part = parts[comp.name]
            samples = np.asarray([w for epoch in comp.power_usages for w in epoch], dtype=float)
            n = max(1, len(part.devices))
            watts = (float(samples.reshape(-1, n).mean(axis=0).sum()) if samples.size and samples.size % n == 0
                     else float(samples.mean()) if samples.size else 0.0)
            power += watts
            if part.sensor:
                sensed.append(comp.name)
                via = _SENSOR_HANDLERS[part.handler]
                texts.append(f"{comp.name} {watts:.2f} W via {via} ({', '.join(part.devices)}; "
                             f"{samples.size // n} samples)")
            else:
                estimated = True
                texts.append(f"{comp.name} {watts:.2f} W NOT measured: {part.note}")
        texts += [f"{p.name}: none on this machine (0 W)" for p in self._parts if not p.handler]
        energy = power * seconds * pue / 3.6e6
        own = float(np.sum(thread.total_energy_per_epoch()))
        if not math.isclose(own, energy, rel_tol=1e-9, abs_tol=1e-15):
            texts.append(f"carbontracker's own total {own:.6g} kWh averages devices instead of summing")
        version = carbontracker_version()
        method = (f"carbontracker {version}: {'; '.join(texts)}; x {seconds:.3f} s x PUE {pue:g}"
                  + ("" if estimated else " (measured)"))
        return EnergyReport(energy, energy * self.intensity, estimated, method, self.intensity, pue, version,
                            tuple(sensed), self.country, seconds, power,
                            {"carbontracker_kwh": own, "wall_seconds": wall, "host_id": host_id()})

    def _unmeasured(self, wall: float, failure: str = "") -> EnergyReport:
        failure = failure or self._failure
        if failure:
            return estimate_from_seconds(wall, country=self.country, intensity_g_per_kwh=None if self.country
                                         else self.intensity, reason=failure)
        absent = ", ".join(self.requested)
        pue = _pue()
        return EnergyReport(0.0, 0.0, True, f"nothing measured: carbontracker finds no {absent} on this machine "
                            f"(requested components={','.join(self.requested)!r}); counted as 0 kWh",
                            self.intensity, pue, carbontracker_version(), (), self.country, wall, 0.0)

    def __enter__(self) -> EnergyMeter:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.running:
            self.stop()


@contextmanager
def measure_energy(log_dir: Path | str | None = None, **kwargs: Any) -> Iterator[EnergyMeter]:
    """`with measure_energy(dir) as m: work()` -> `m.report`; the meter stops even if the work raises."""
    meter = EnergyMeter(log_dir, **kwargs)
    with meter:
        yield meter


@functools.cache
def _generic_cls() -> type:
    """carbontracker's CPU fallback handler, its console logging removed (every lookup would be printed
    to stdout; `method` carries the facts)."""
    from carbontracker.components.cpu import generic

    _strip_console((generic.logger.logger, generic.logger.logger_output, generic.logger.logger_err))
    return generic.GenericCPU


def _pue() -> float:
    try:
        from carbontracker import constants

        return float(constants.PUE_2023)
    except Exception:  # noqa: BLE001 - the documented constant stands in
        return PUE


def _shutdown(run: _Run) -> None:
    """Make sure carbontracker's threads are gone and its log files closed, whatever happened."""
    try:
        if not run.tracker.deleted:
            run.tracker.stop()
    except (Exception, SystemExit):
        pass
    run.thread.shutdown_event.set()
    run.thread.measuring_event.set()
    run.thread.join(timeout=5.0)
    run.intensity.stop_event.set()
    run.intensity.join(timeout=5.0)
    _close(run.logger)


__all__ = ["EnergyMeter", "EnergyReport", "carbontracker_version", "estimate_from_seconds", "host_id",
           "measure_energy", "resolve_intensity"]
