"""Training throughput of every registered model: samples/second for forward + backward + SGD step.

Random images and targets of the right shapes for each task (sum of the task losses, as in training).
Prints the median over repeats and the parameter counts. Slow configurations get fewer steps: each
repeat runs at most `--budget` seconds (at least one step).

    .venv/bin/python benchmarks/bench_models.py --threads 1            # CPU, one core
    .venv/bin/python benchmarks/bench_models.py --device cuda          # GPU: fp32 and bf16+channels_last

CPU runs measure fp32 in the default (NCHW) and the channels_last memory format.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch

from mas_flower.losses import task_losses, total_loss
from mas_flower.models import build_model, count_parameters, list_models
from mas_flower.tasks import needs_mask, parse_tasks


def random_batch(tasks: str, batch: int, size: int, device: torch.device,
                 seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {"rgb": torch.rand(batch, 3, size, size, generator=g)}
    for t in parse_tasks(tasks):
        if t.is_classification:
            out[t.letter] = torch.randint(0, t.out_channels, (batch, size, size), generator=g)
        else:
            out[t.letter] = torch.randn(batch, t.out_channels, size, size, generator=g)
    if needs_mask(tasks):
        out["mask"] = torch.rand(batch, 1, size, size, generator=g) > 0.2
    return {k: v.to(device) for k, v in out.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


#: Measured modes: name -> (autocast to bf16, channels_last memory format).
MODES = {"fp32": (False, False), "fp32+channels_last": (False, True), "bf16+channels_last": (True, True)}


def bench(model: str, tasks: str, size: int, batch: int, device: torch.device, *, mode: str, steps: int,
          repeats: int, budget: float) -> dict:
    bf16, channels_last = MODES[mode]
    net = build_model(model, tasks, image_size=size, seed=0).to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=memory_format).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    data = random_batch(tasks, batch, size, device)
    x = data["rgb"].contiguous(memory_format=memory_format)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext())

    def step() -> None:
        with autocast:
            out = net(x)
        loss = total_loss(task_losses(out, data, tasks))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    step()  # warm-up (allocations, cuDNN autotuning), also sizes the slow runs
    _sync(device)
    step()
    _sync(device)
    per_step = (time.perf_counter() - t0) / 2
    n = max(1, min(steps, int(budget / max(per_step, 1e-9))))
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        _sync(device)
        rates.append(n * batch / (time.perf_counter() - t0))
    return {"model": model, "tasks": tasks, "size": size, "batch": batch, "device": device.type,
            "mode": mode, "threads": torch.get_num_threads(), "steps_per_repeat": n, "repeats": repeats,
            "samples_per_s": statistics.median(rates), "all_rates": [round(r, 2) for r in rates],
            "params": count_parameters(net), "encoder_params": count_parameters(net.encoder),
            "decoder_params": {c: count_parameters(d) for c, d in net.decoders.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(list_models()), help="comma-separated (default: all)")
    ap.add_argument("--tasks", default="sdnkt")
    ap.add_argument("--sizes", default="64,256")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20, help="steps per repeat (fewer when over --budget)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget", type=float, default=20.0, help="seconds per repeat at most (>= 1 step)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                    help="auto: CPU, and CUDA too when available")
    ap.add_argument("--cpu-modes", default="fp32,fp32+channels_last", help=f"of {', '.join(MODES)}")
    ap.add_argument("--cuda-modes", default="fp32,bf16+channels_last", help=f"of {', '.join(MODES)}")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = {"auto": ["cpu"] + (["cuda"] if torch.cuda.is_available() else []), "cpu": ["cpu"],
               "cuda": ["cuda"]}[args.device]
    print(f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}, tasks {args.tasks}, "
          f"batch {args.batch}, median of {args.repeats}")
    if "cuda" in devices:
        print(f"GPU: {torch.cuda.get_device_name(0)}")
    results = []
    print(f"{'model':<10}{'size':>5} {'device':<7}{'mode':<20}{'samples/s':>10}{'steps':>6}  "
          "params: total (encoder / each decoder)")
    for dev in devices:
        modes = (args.cuda_modes if dev == "cuda" else args.cpu_modes).split(",")
        for model in args.models.split(","):
            for size in (int(s) for s in args.sizes.split(",")):
                for mode in modes:
                    torch.manual_seed(0)
                    r = bench(model, args.tasks, size, args.batch, torch.device(dev), mode=mode,
                              steps=args.steps, repeats=args.repeats, budget=args.budget)
                    results.append(r)
                    dec = ",".join(f"{c}={p / 1e6:.4f}" for c, p in r["decoder_params"].items())
                    print(f"{model:<10}{size:>5} {dev:<7}{mode:<20}{r['samples_per_s']:>10.1f}"
                          f"{r['steps_per_repeat']:>6}  {r['params'] / 1e6:.3f}M "
                          f"({r['encoder_params'] / 1e6:.3f}M / {dec}M)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
