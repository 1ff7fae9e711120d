"""One GPU check: throughput, data path, bf16 affinity, lookahead overhead, NVML energy, a simulation.

Run on a machine with a CUDA device (any); it exits with an error naming the problem elsewhere.
Finishes within about 8 minutes on one GPU and prints one table (and writes it as JSON with --json):

  train    samples/s of `train_local` vs a bare PyTorch loop over the same batches already on the
           device (xception, 256 px, sdnkterca, batch 64), bf16 and fp32; goal >= 0.9 of the bare loop
  data     the data path alone (host gather + pinned copy + device decode and flip), samples/s;
           goal >= 3x the bf16 training throughput
  affinity Z of one batch at the same weights: train_local under bf16 (float32 lookahead) and the
           bf16-gradients variant, each vs float32: sign agreement and median |dZ| / median |Z|
  overhead the lookahead's extra time per local epoch at rho = 5, exact and first order, in percent
  energy   one local epoch metered through NVML by carbontracker (GPU component; estimated must be false)
  flwr     a 2-round `flwr run` simulation (MAS-2 on sdnkt) with 4 nodes sharing the GPU
           (client-resources-num-gpus=0.25): final status, wall time, peak GPU memory (NVML)

    python benchmarks/bench_gpu.py [--views 400] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

TASKS = "sdnkterca"
#: The paper's network and size; `--smoke` shrinks them to check this script on a CPU.
SETUP = {"model": "xception", "size": 256, "batch": 64}


def _require_cuda() -> torch.device:
    if not torch.cuda.is_available():
        sys.exit("bench_gpu: no CUDA device is available on this machine (torch.cuda.is_available() is "
                 f"False, torch {torch.__version__}, CUDA build {torch.version.cuda}); run it on a GPU machine")
    return torch.device("cuda")


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _sync_time(fn) -> float:
    _sync()
    t = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - t


def _fresh_net():
    from mas_flower.models import build_model

    return build_model(SETUP["model"], TASKS, image_size=SETUP["size"])


def bench_train(split, device, rows: list) -> dict:
    """train_local vs a bare loop (same steps, same batches pre-decoded on the device)."""
    from mas_flower.losses import task_losses
    from mas_flower.training import TrainConfig, train_local

    out = {}
    for precision in ("bf16", "fp32"):
        cfg = TrainConfig(lr=0.1, epochs=2, batch_size=SETUP["batch"], precision=precision, seed=0)
        net = _fresh_net()
        train_local(net, split, cfg, device)  # warm-up: cuDNN autotuning, allocator, lazy imports
        times = [_sync_time(lambda net=net, cfg=cfg: train_local(net, split, cfg, device)) for _ in range(3)]
        samples = cfg.epochs * len(split)
        ours = samples / statistics.median(times)
        batches = list(split.device_batches(device, SETUP["batch"], shuffle=True, augment=True,
                                            generator=torch.Generator().manual_seed(0)))
        bare = _fresh_net().to(device, memory_format=torch.channels_last).train()
        opt = torch.optim.SGD(bare.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

        def loop(bare=bare, opt=opt, amp=amp, batches=batches, epochs=cfg.epochs) -> None:
            for _ in range(epochs):
                for b in batches:
                    with amp:
                        losses = task_losses(bare(b["rgb"]), b, TASKS)
                    opt.zero_grad(set_to_none=True)
                    torch.stack(list(losses.values())).sum().backward()
                    opt.step()

        loop()
        bare_rate = samples / statistics.median([_sync_time(loop) for _ in range(3)])
        out[precision] = (ours, bare_rate)
        rows.append((f"train {precision}", f"{ours:.1f} samples/s vs bare loop {bare_rate:.1f}",
                     f"ratio {ours / bare_rate:.2f} (goal >= 0.9)"))
    return out


def bench_data(split, device, train_rate: float, rows: list) -> None:
    def epoch() -> None:
        for _ in split.device_batches(device, SETUP["batch"], shuffle=True, augment=True,
                                      generator=torch.Generator().manual_seed(1)):
            pass

    epoch()
    rate = len(split) / statistics.median([_sync_time(epoch) for _ in range(5)])
    rows.append(("data path", f"{rate:.1f} samples/s (gather + pinned copy + decode)",
                 f"{rate / train_rate:.1f}x bf16 training (goal >= 3x)"))


def bench_affinity(split, device, rows: list) -> None:
    from mas_flower.affinity import batch_affinity
    from mas_flower.training import TrainConfig, train_local

    net = _fresh_net()
    train_local(net, split, TrainConfig(lr=0.1, epochs=2, batch_size=SETUP["batch"], precision="bf16"), device)  # warm
    off = ~np.eye(len(TASKS), dtype=bool)

    def compare(name: str, z: np.ndarray, ref: np.ndarray) -> None:
        sign = np.mean(np.sign(z[off]) == np.sign(ref[off]))
        med = np.median(np.abs(z[off] - ref[off]))
        rows.append((f"Z {name} vs fp32", f"sign agreement {100 * sign:.1f} %",
                     f"median |dZ| {med:.2e} = {med / np.median(np.abs(ref[off])):.3f} median |Z|"))

    for lr in (0.1, 0.01):
        z = {}
        for precision in ("fp32", "bf16"):
            cfg = TrainConfig(lr=lr, epochs=1, batch_size=SETUP["batch"], affinity_every=10_000,
                              precision=precision, seed=2)
            z[precision] = train_local(copy.deepcopy(net), split, cfg, device).affinity
        compare(f"train_local bf16 (lr {lr})", z["bf16"], z["fp32"])
    batch = next(split.device_batches(device, SETUP["batch"], shuffle=True, generator=torch.Generator().manual_seed(3)))
    gpu_net = copy.deepcopy(net).to(device, memory_format=torch.channels_last).train()
    ref = batch_affinity(gpu_net, batch, lr=0.1, weight_decay=1e-4)
    compare("bf16 gradients only (lr 0.1)", batch_affinity(gpu_net, batch, lr=0.1, weight_decay=1e-4,
                                                          bf16_gradients=True), ref)


def bench_overhead(split, device, rows: list) -> None:
    from mas_flower.training import TrainConfig, train_local

    base = None
    for mode, every in (("none", 0), ("exact", 5), ("first_order", 5)):
        cfg = TrainConfig(lr=0.1, epochs=1, batch_size=SETUP["batch"], affinity_every=every,
                          affinity_mode="exact" if mode == "none" else mode, seed=0)
        net = _fresh_net()
        train_local(net, split, cfg, device)
        seconds = statistics.median([_sync_time(lambda net=net, cfg=cfg: train_local(net, split, cfg, device))
                                     for _ in range(3)])
        if base is None:
            base = seconds
            rows.append(("epoch (auto precision)", f"{seconds:.3f} s for {len(split)} samples", ""))
        else:
            batches = -(-len(split) // SETUP["batch"])
            rows.append((f"lookahead {mode}, rho=5", f"+{100 * (seconds / base - 1):.1f} % per local epoch",
                         f"{-(-batches // 5)} lookahead batch(es) of {batches}"))


def bench_energy(split, device, rows: list) -> None:
    from mas_flower.energy import EnergyMeter
    from mas_flower.training import TrainConfig, train_local

    net = _fresh_net()
    train_local(net, split, TrainConfig(lr=0.1, batch_size=SETUP["batch"]), device)
    one = _sync_time(lambda: train_local(net, split, TrainConfig(lr=0.1, batch_size=SETUP["batch"]), device))
    epochs = max(1, int(np.ceil(15.0 / one)))  # carbontracker samples every few seconds: meter >= 15 s
    with tempfile.TemporaryDirectory() as logs:
        meter = EnergyMeter(logs, components="gpu")
        meter.start()
        cfg = TrainConfig(lr=0.1, epochs=epochs, batch_size=SETUP["batch"])
        _sync_time(lambda: train_local(net, split, cfg, device))
        report = meter.stop()
    rows.append(("energy, one local epoch", f"{report.energy_kwh / epochs * 1000:.4f} Wh "
                 f"({report.mean_power_w:.0f} W mean, PUE {report.pue})",
                 f"energy_estimated={report.estimated}; {report.method}"))


class _PeakGpuMemory:
    """Polls NVML for the device's used memory (all processes: Ray actors included)."""

    def __init__(self) -> None:
        import pynvml

        pynvml.nvmlInit()
        self.nvml, self.handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        self.peak, self.stop = 0, threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self.stop.wait(0.2):
            self.peak = max(self.peak, self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used)

    def __enter__(self) -> _PeakGpuMemory:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def bench_flwr(data_root: Path, work: Path, rows: list, timeout: float) -> None:
    # `mas_flower.tools.launch` (= `mas-flower run`) starts and stops a SuperLink of its own, on free ports.
    env = {**os.environ, "MAS_FLOWER_HOME": str(work / "mas"), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    config = (f"method='mas' task-set='sdnkt' splits=2 num-rounds=2 merge-rounds=1 affinity-rounds=1 "
              f"clients-per-round=4 local-epochs=1 batch-size={SETUP['batch']} model='{SETUP['model']}' "
              f"image-size={SETUP['size']} "
              f"data-root='{data_root}' output-dir='{work / 'out'}'")
    cmd = [sys.executable, "-m", "mas_flower", "run", "--nodes", "4", "--cpus-per-node", "2",
           "--gpus-per-node", "0.25", "--", "--run-config", config]
    t = time.perf_counter()
    with _PeakGpuMemory() as peak:
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
            log = proc.stdout + proc.stderr
            status = next((line.split(": ", 1)[1] for line in reversed(log.splitlines())
                           if line.startswith("run ") and ": " in line), f"no status (exit {proc.returncode})")
        except subprocess.TimeoutExpired:
            status, log = f"timed out after {timeout:.0f} s", ""
    wall = time.perf_counter() - t
    (work / "flwr.log").write_text(log)
    rows.append(("flwr run, 4 nodes x 0.25 GPU", f"{status}, wall {wall:.0f} s",
                 f"peak GPU memory {peak.peak / 2**30:.1f} GiB (NVML, all processes)"))
    if "completed" not in status:
        print(log[-4000:], file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--views", type=int, default=400, help="synthetic views per building (4 buildings)")
    parser.add_argument("--json", type=Path, help="also write the table here")
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    parser.add_argument("--smoke", action="store_true",
                        help="check this script itself on the CPU: tiny model, 32 px, no simulation (no figures)")
    args = parser.parse_args()
    if args.smoke:
        SETUP.update(model="tiny", size=32, batch=8)
        device = torch.device("cpu")
        torch.set_num_threads(1)  # tiny tensors: spinning OpenMP threads cost more than they give
    else:
        device = _require_cuda()
    from mas_flower.data import list_buildings, open_building
    from mas_flower.synthetic import generate_dataset

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    name = "CPU smoke test" if args.smoke else torch.cuda.get_device_name(device)
    rows: list[tuple[str, str, str]] = [("device", name, f"torch {torch.__version__}, CUDA {torch.version.cuda}")]
    started = time.perf_counter()
    t = time.perf_counter()
    root = work / "data"
    generate_dataset(root, buildings=4, views=args.views, size=SETUP["size"], seed=0,
                     workers=max(1, (os.cpu_count() or 2) - 1))
    building = open_building(root, list_buildings(root)[0], TASKS, SETUP["size"], cache_dir=work / "cache")
    split = building.split("train")
    rows.append(("setup", f"{4 * args.views} synthetic views at {SETUP['size']} px, cache built",
                 f"{time.perf_counter() - t:.0f} s; train split {len(split)} samples"))
    sections = [
        ("train", lambda: bench_train(split, device, rows)),
        ("data", lambda: bench_data(split, device, results["train"]["bf16"][0], rows)),
        ("affinity", lambda: bench_affinity(split, device, rows)),
        ("overhead", lambda: bench_overhead(split, device, rows)),
        ("energy", lambda: bench_energy(split, device, rows)),
        ("flwr", lambda: bench_flwr(root, work, rows, timeout=max(60.0, 470 - (time.perf_counter() - started)))),
    ][: 5 if args.smoke else 6]
    results: dict = {}
    failed = 0
    for name, fn in sections:
        try:
            results[name] = fn()
        except Exception as err:  # one broken section must not hide the others' figures
            failed += 1
            rows.append((name, f"FAILED: {type(err).__name__}: {err}"[:200], ""))
        print(f"[{time.perf_counter() - started:.0f} s] {name} done", file=sys.stderr, flush=True)
    width = max(len(r[0]) for r in rows)
    print(f"\n{'check':<{width}}  result")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value}" + (f"   [{note}]" if note else ""))
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps([{"check": r[0], "result": r[1], "note": r[2]} for r in rows], indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
