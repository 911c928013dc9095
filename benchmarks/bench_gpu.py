"""Batch norm on a CUDA GPU: normlab's Triton kernels against torch, same tensors, same process.

For every case (shape, memory layout, dtype) and mode (training forward + backward,
inference forward) it times

    triton    normlab.BatchNorm1d/2d on the "triton" backend (normlab.kernels.triton_bn)
    cudnn     torch.nn.BatchNorm1d/2d as shipped (cuDNN on)
    native    the same with cuDNN off (ATen's own CUDA kernels)
    compile   torch.compile of the same torch.nn module (Inductor's generated kernels)
    fused     BN + ReLU: normlab.BatchNormAct(relu) on triton vs torch BN then ReLU
    abn       in-place activated BN (leaky ReLU): normlab.BatchNormAct(inplace_abn) on
              triton vs torch BN then LeakyReLU, and vs normlab's torch-ops fallback

and prints speed-ups (torch's time / triton's time: above 1 is faster), the achieved
bandwidth of the Triton kernels (bytes that must move / time; training moves 5 tensors
of x's size: read x, write y, read x and dy, write dx; inference 2) as a fraction of
the device's peak and of a device-to-device copy measured in the same run, the targets
of docs/performance.md, the dispatch rule these measurements imply (in the format of
normlab.backends.TRITON_RULE, to paste there), and the peak memory of BN + ReLU against
in-place activated BN over the forward and backward of a small pre-activation ResNet.

Parameters stay float32 for every dtype, as under autocast. Times are medians from
triton.testing.do_bench (CUDA events, L2 flushed between runs).

    python benchmarks/bench_gpu.py            # the full grid (ResNet-50 shapes at batch 32 and 256, ...)
    python benchmarks/bench_gpu.py --quick    # a few cases, about a minute
    python benchmarks/bench_gpu.py --no-compile   # skip torch.compile (compiling every case takes minutes)
    python benchmarks/bench_gpu.py --quick --time-limit 120   # stop starting new cases after 120 s
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import NamedTuple

import torch
from _timing import geomean, make_step

RESNET50 = [(64, 112), (256, 56), (512, 28), (1024, 14), (2048, 7)]  # (channels, spatial) of each stage
SMALL_SPATIAL = [(256, 1024, 4, 4), (256, 2048, 2, 2), (512, 2048, 1, 1)]  # channels-last
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
LARGE = 1 << 24  # elements from which a shape counts as large for the bandwidth target
NO_GPU = (
    "bench_gpu.py: no CUDA device is present. This benchmark times GPU kernels: run it on a "
    "machine with an NVIDIA GPU, a CUDA build of PyTorch and triton (pip install -e '.[triton]')."
)


class Case(NamedTuple):
    shape: tuple[int, ...]
    layout: str  # "channels_first" or "channels_last", as normlab.backends.layout names them


def cases(quick: bool) -> list[Case]:
    if quick:
        return [Case((32, 256, 56, 56), "channels_first"), Case((32, 2048, 7, 7), "channels_last"),
                Case((100000, 32), "channels_last"), Case(SMALL_SPATIAL[1], "channels_last")]
    grid = [Case((n, c, s, s), layout) for n in (32, 256) for c, s in RESNET50
            for layout in ("channels_first", "channels_last")]
    return grid + [Case((100000, 32), "channels_last")] + [Case(s, "channels_last") for s in SMALL_SPATIAL]


def derive_rule(speedups: dict[tuple[str, str, torch.dtype], list[tuple[int, float]]]) -> dict:
    """TRITON_RULE from training speed-ups: per (op, layout, dtype), the smallest input size
    from which the kernels were faster on every measured shape (None: on none of them)."""
    rule = {}
    for key, measured in sorted(speedups.items(), key=lambda kv: (kv[0][0], kv[0][1], str(kv[0][2]))):
        smallest = None
        for numel, _ in sorted(measured, reverse=True):
            if all(s > 1.0 for n, s in measured if n >= numel):
                smallest = numel
        rule[key] = smallest
    return rule


def format_rule(rule: dict) -> str:
    lines = ["TRITON_RULE = {"]
    lines += [f"    ({op!r}, {layout!r}, {dtype}): {smallest}," for (op, layout, dtype), smallest in rule.items()]
    return "\n".join(lines + ["}"])


# --- measuring ----------------------------------------------------------------------------


def peak_bandwidth(device) -> float:
    """The memory's peak in bytes/s: 2 transfers a clock over the bus."""
    props = torch.cuda.get_device_properties(device)
    clock_khz, bus_bits = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
    if not (clock_khz and bus_bits):
        from triton.testing import get_dram_gbps

        return get_dram_gbps() * 1e9
    return clock_khz * 1e3 * 2 * bus_bits / 8


def bench_ms(fn, grad_to_none=None) -> float:
    from triton.testing import do_bench

    fn()  # compile (Triton, torch.compile) before timing
    torch.cuda.synchronize()
    return do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none, return_mode="median")


def copy_bandwidth(device) -> float:
    """bytes/s of a device-to-device copy of 1 GiB (read + write)."""
    src = torch.empty(1 << 28, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src))
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


def make_inputs(case: Case, dtype, device):
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(case.shape, generator=gen, device=device, dtype=dtype)
    dy = torch.randn(case.shape, generator=gen, device=device, dtype=dtype)
    if case.layout == "channels_last" and x.dim() == 4:
        x, dy = x.to(memory_format=torch.channels_last), dy.to(memory_format=torch.channels_last)
    return x.requires_grad_(), dy


def torch_bn(case: Case, device):
    return (torch.nn.BatchNorm1d if len(case.shape) == 2 else torch.nn.BatchNorm2d)(case.shape[1]).to(device)


def normlab_bn(C: int, rank: int, device, **act):
    """normlab.BatchNorm1d/2d, or BatchNormAct(**act) when an activation is given."""
    import normlab

    layer = normlab.BatchNormAct(C, **act) if act else (normlab.BatchNorm1d if rank == 2 else normlab.BatchNorm2d)(C)
    return layer.to(device)  # its guard on the running statistics (non_finite="skip") stays on the device


def measure(case: Case, dtype, train: bool, device, compile_: bool) -> dict[str, float]:
    """Milliseconds per call of every implementation on one case and mode."""
    x, dy = make_inputs(case, dtype, device)
    times = {}

    def time(name, layer, backend=None):
        layer.train(train)
        params = [p for p in layer.parameters()]
        times[name] = bench_ms(make_step(layer, x, dy, backend, train), grad_to_none=[x, *params] if train else None)

    time("triton", normlab_bn(case.shape[1], len(case.shape), device), "triton")
    time("cudnn", torch_bn(case, device))
    with torch.backends.cudnn.flags(enabled=False):
        time("native", torch_bn(case, device))
    if compile_:
        torch._dynamo.reset()
        time("compile", torch.compile(torch_bn(case, device)))
    time("fused", normlab_bn(case.shape[1], len(case.shape), device, activation="relu"), "triton")
    time("torch_bn_relu", torch.nn.Sequential(torch_bn(case, device), torch.nn.ReLU()))
    abn = dict(activation="leaky_relu", inplace_abn=True)
    time("abn", normlab_bn(case.shape[1], len(case.shape), device, **abn), "triton")
    time("abn_fallback", normlab_bn(case.shape[1], len(case.shape), device, **abn), "normlab")
    time("torch_bn_leaky", torch.nn.Sequential(torch_bn(case, device), torch.nn.LeakyReLU(0.01)))
    return times


# --- memory: BN + ReLU against in-place activated BN --------------------------------------


class PreActBlock(torch.nn.Module):
    """Pre-activation ResNet block (He et al. 2016): norm_act, conv, norm_act, conv, + shortcut."""

    def __init__(self, cin, cout, stride, norm_act):
        super().__init__()
        self.na1, self.na2 = norm_act(cin), norm_act(cout)
        self.conv1 = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.conv2 = torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.short = torch.nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x):
        h = self.na1(x)
        shortcut = x if self.short is None else self.short(h)
        return self.conv2(self.na2(self.conv1(h))) + shortcut


def small_resnet(norm_act, widths=(64, 128, 256), blocks=2):
    layers, cin = [torch.nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)], widths[0]
    for i, w in enumerate(widths):
        for b in range(blocks):
            layers.append(PreActBlock(cin, w, 2 if i and not b else 1, norm_act))
            cin = w
    return torch.nn.Sequential(*layers, norm_act(cin), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(cin, 10))


def memory(device, batch: int, size: int, dtype):
    """Bytes the BN + activation pairs keep for backward, and the whole network's peak above its inputs."""
    import normlab

    variants = {
        "torch BN + ReLU": lambda c: torch.nn.Sequential(torch.nn.BatchNorm2d(c), torch.nn.ReLU()),
        "normlab BatchNormAct(relu), triton": lambda c: normlab_bn(c, 4, device, activation="relu"),
        "in-place ABN (leaky_relu), triton": lambda c: normlab_bn(c, 4, device, activation="leaky_relu",
                                                                  inplace_abn=True),
    }
    x = torch.randn(batch, 3, size, size, device=device, dtype=dtype)
    results = {}
    for name, norm_act in variants.items():
        torch.manual_seed(0)
        model = small_resnet(norm_act).to(device=device, dtype=dtype)
        pairs = [m for m in model.modules() if isinstance(m, (torch.nn.Sequential, normlab.BatchNormAct))
                 and m is not model]
        saved, inside = {}, [0]
        for m in pairs:
            m.register_forward_pre_hook(lambda *_: inside.__setitem__(0, inside[0] + 1))
            m.register_forward_hook(lambda *_: inside.__setitem__(0, inside[0] - 1))

        def pack(t):
            if inside[0]:
                saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with normlab.use_backend("triton"):
            model(x).sum().backward()  # warm up (kernels compiled), gradients allocated
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = model(x).sum()
            loss.backward()
            torch.cuda.synchronize()
        results[name] = (sum(saved.values()), torch.cuda.max_memory_allocated(device) - base)
        del model, loss
    return results


# --- the report -------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few cases, fp16 and fp32")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                        help="start no new case after this many seconds; report what was measured")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory comparison")
    args = parser.parse_args(argv)
    started = time.monotonic()
    if not torch.cuda.is_available():
        print(NO_GPU, file=sys.stderr)
        return 2
    try:
        import triton
    except ImportError:
        print("bench_gpu.py: triton is not installed: pip install -e '.[triton]'", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    peak, copy = peak_bandwidth(device), copy_bandwidth(device)
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, triton {triton.__version__}, "
          f"peak {peak / 1e9:.0f} GB/s, measured copy {copy / 1e9:.0f} GB/s ({copy / peak:.0%} of peak)")
    print("speed-up = torch's time / triton's time (above 1: the kernels are faster)")
    header = (f"{'shape':<22}{'layout':<15}{'dtype':<6}{'mode':<6}{'cudnn ms':>9}{'vs cudnn':>9}{'vs native':>10}"
              f"{'vs compile':>11}{'GB/s':>7}{'%peak':>6}{'%copy':>6}{'bn+relu':>8}{'abn':>6}{'abn/fb':>7}")
    print(header)
    print("-" * len(header))
    speedups: dict[str, dict[str, list[float]]] = {m: {} for m in ("train", "eval")}
    rule_data: dict[tuple, list[tuple[int, float]]] = {}
    bandwidth_large = []
    dtypes = {k: v for k, v in DTYPES.items() if not args.quick or k != "bf16"}

    grid = cases(args.quick)
    for done, case in enumerate(grid):
        if args.time_limit is not None and time.monotonic() - started > args.time_limit:
            print(f"time limit: stopped after {time.monotonic() - started:.0f} s, {done} of {len(grid)} cases measured")
            break
        for dname, dtype in dtypes.items():
            for mode in ("train", "eval"):
                t = measure(case, dtype, mode == "train", device, not args.no_compile)
                numel = math.prod(case.shape)
                moved = (5 if mode == "train" else 2) * numel * dtype.itemsize
                bw = moved / (t["triton"] * 1e-3)
                s = {"cudnn": t["cudnn"] / t["triton"], "native": t["native"] / t["triton"],
                     "compile": t["compile"] / t["triton"] if "compile" in t else float("nan"),
                     "bn+relu": t["torch_bn_relu"] / t["fused"], "abn": t["torch_bn_leaky"] / t["abn"],
                     "abn/fb": t["abn_fallback"] / t["abn"]}
                for k, v in s.items():
                    speedups[mode].setdefault(k, []).append(v)
                if mode == "train":
                    for op, v in (("batch_norm", s["cudnn"]), ("batch_norm_act", s["bn+relu"]),
                                  ("inplace_abn", s["abn/fb"])):
                        rule_data.setdefault((op, case.layout, dtype), []).append((numel, v))
                if numel >= LARGE:
                    bandwidth_large.append(bw / copy)
                print(f"{str(case.shape):<22}{case.layout:<15}{dname:<6}{mode:<6}{t['cudnn']:>9.3f}{s['cudnn']:>9.2f}"
                      f"{s['native']:>10.2f}{s['compile']:>11.2f}{bw / 1e9:>7.0f}{bw / peak:>6.0%}{bw / copy:>6.0%}"
                      f"{s['bn+relu']:>8.2f}{s['abn']:>6.2f}{s['abn/fb']:>7.2f}", flush=True)
    print("-" * len(header))
    if not speedups["train"]:
        print("no case measured", file=sys.stderr)
        return 1
    for mode in ("train", "eval"):
        g = {k: geomean(v) for k, v in speedups[mode].items()}
        print(f"geomean {mode}: " + ", ".join(f"{k} {v:.2f}" for k, v in g.items()))
    train = speedups["train"]["cudnn"]
    print("\ntargets (docs/performance.md):")
    print(f"  training fwd+bwd geomean speed-up vs torch (cuDNN) >= 1.3x: {geomean(train):.2f}x "
          f"({'met' if geomean(train) >= 1.3 else 'NOT met'})")
    print(f"  never below 0.95x: slowest {min(train):.2f}x ({'met' if min(train) >= 0.95 else 'NOT met'}; "
          "the dispatch rule below falls back to torch where the kernels are slower)")
    if bandwidth_large:
        worst = min(bandwidth_large)
        print(f"  bandwidth >= 85% of the measured copy on large shapes (>= {LARGE} elements): worst {worst:.0%} "
              f"({'met' if worst >= 0.85 else 'NOT met'})")
    print("\ndispatch rule these training measurements imply (paste into normlab/kernels/__init__.py):")
    print(format_rule(derive_rule(rule_data)))

    if args.no_memory:
        return 0
    batch, size = (32, 32) if args.quick else (64, 64)
    print(f"\nmemory: small pre-activation ResNet (widths 64-128-256, 2 blocks each), batch {batch}, "
          f"{size}x{size}, fp32, forward + backward")
    results = memory(device, batch, size, torch.float32)
    base_saved, base_peak = results["torch BN + ReLU"]
    for name, (saved, peak_bytes) in results.items():
        print(f"  {name:<38} BN+act pairs keep {saved / 2**20:8.1f} MiB ({saved / base_saved:.2f}x); "
              f"network peak {peak_bytes / 2**20:8.1f} MiB ({peak_bytes / base_peak:.2f}x)")
    abn_ratio = results["in-place ABN (leaky_relu), triton"][0] / base_saved
    print(f"  target: in-place ABN keeps <= 0.55x of BN + ReLU: {abn_ratio:.2f}x "
          f"({'met' if abn_ratio <= 0.55 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
