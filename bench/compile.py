"""Eager against torch.compile for a training step of nano: which is faster, and after how many steps compiling pays.

    python bench/compile.py [--steps N] [--device cpu|cuda|all]

Two copies of the trainer's step (bench/benchlib.py's BareLoop: same weights, same batches, make_optimizer,
autocast on CUDA), one with the model wrapped in torch.compile as `--compile` does. The compiled copy's first
step compiles (forward and backward); its time less a steady compiled step is the compile time. Then --steps
steps of each, alternating eager and compiled, after --warmup steps of each; medians of wall time (and, on the CPU,
of the process's CPU time, which other work on a shared machine disturbs less) are compared. Break-even:
the run length in steps at which the compile time is paid back, compile_time / (eager - compiled).

Inductor writes its kernels to a fresh temporary cache (TORCHINDUCTOR_CACHE_DIR), so the compile time is that of a
first run; later runs on the same machine reuse ~/.cache or /tmp's cache and compile faster.

Runs on the CPU, and on CUDA when a GPU is present. There is no speed target: compiling is a choice. The check is
that the compiled step computes the same thing (loss within 1% of eager at every measured step) and that
torch.compile works here at all; a failure (no C++ compiler for inductor's CPU kernels, say) is printed as such and
exits 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import benchlib

LOSS_TOLERANCE = 0.01


def settings_for(device: str):
    from pipeline.settings import TrainSettings

    return TrainSettings(config="nano", corpus="verdict", batch_size=8, max_steps=1000, device=device)


def measure(device: str, steps: int, warmup: int, train_split) -> dict:
    import torch

    from pipeline.errors import first_line

    settings = settings_for(device)
    eager = benchlib.BareLoop(settings, train_split)
    compiled = benchlib.BareLoop(settings, train_split, step_model=torch.compile)
    dev = eager.device

    def step(loop) -> tuple[float, float, float]:
        benchlib.sync(dev)
        start, cpu_start = time.perf_counter(), time.process_time()
        loss = loop.run_step()  # reads the loss back: a sync on CUDA
        return time.perf_counter() - start, time.process_time() - cpu_start, loss

    eager_first, _, _ = step(eager)
    try:
        compiled_first, _, _ = step(compiled)
    except Exception as error:  # torch._dynamo / inductor errors of many kinds
        return {"error": f"{type(error).__name__}: {first_line(error, limit=300)}"}
    for _ in range(warmup):
        step(eager)
        step(compiled)
    times = {"eager": [], "compiled": []}
    cpu_times = {"eager": [], "compiled": []}
    gaps = []
    for i in range(steps):
        order = ("eager", "compiled") if i % 2 == 0 else ("compiled", "eager")
        losses = {}
        for kind in order:
            seconds, cpu_seconds, losses[kind] = step(eager if kind == "eager" else compiled)
            times[kind].append(seconds)
            cpu_times[kind].append(cpu_seconds)
        gaps.append(abs(losses["compiled"] - losses["eager"]) / abs(losses["eager"]))
    eager_step = benchlib.median(times["eager"])
    compiled_step = benchlib.median(times["compiled"])
    compile_seconds = max(0.0, compiled_first - compiled_step)
    return {"eager": eager_step, "compiled": compiled_step, "eager_runs": times["eager"],
            "compiled_runs": times["compiled"], "eager_first": eager_first, "compile": compile_seconds,
            "eager_cpu": benchlib.median(cpu_times["eager"]), "compiled_cpu": benchlib.median(cpu_times["compiled"]),
            "loss_gap": max(gaps), "tokens_per_step": eager.tokens_per_step}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, help="measured steps of each (default 6 on CPU, 50 on CUDA)")
    parser.add_argument("--warmup", type=int, help="steps of each before measuring (default 1 on CPU, 10 on CUDA)")
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all",
                        help="where to measure (default all: the CPU, and CUDA when present)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-inductor-") as inductor_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = inductor_cache  # before torch is imported: a cold compile
        import torch

        benchlib.header("torch.compile against eager, a training step of nano (8 x 256 tokens)")
        devices = ["cpu"] if args.device == "cpu" else ["cuda"] if args.device == "cuda" else \
            ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        if args.device == "all" and not torch.cuda.is_available():
            print("   no CUDA GPU here: CPU only")
        from pipeline.training.flops import flops_per_token, mfu, peak_flops

        checks, summary = [], []
        with benchlib.scratch("bench-compile-"):
            _, train_split, _ = benchlib.prepare(settings_for("cpu"))
            for device in devices:
                steps = args.steps or (6 if device == "cpu" else 50)
                warmup = args.warmup if args.warmup is not None else (1 if device == "cpu" else 10)
                r = measure(device, steps, warmup, train_split)
                if "error" in r:
                    print(f"{device}: torch.compile FAILED on this machine: {r['error']}")
                    checks.append((f"torch.compile works on {device}", False))
                    summary.append(f"{device}: compile failed")
                    continue
                speedup = r["eager"] / r["compiled"]
                cpu_speedup = r["eager_cpu"] / r["compiled_cpu"]
                if (speedup > 1) == (cpu_speedup > 1):
                    faster = f"{'compiled' if speedup > 1 else 'eager'} is faster"
                else:
                    faster = "inconclusive (wall and CPU time disagree: the machine is too noisy)"
                if r["compiled"] < r["eager"]:
                    break_even = f"{r['compile'] / (r['eager'] - r['compiled']):,.0f} steps"
                else:
                    break_even = "never (compiled is not faster)"
                print(f"{device}: eager {r['eager'] * 1e3:,.1f} ms/step (steps {benchlib.spread([t * 1e3 for t in r['eager_runs']])}), "
                      f"compiled {r['compiled'] * 1e3:,.1f} ms/step (steps {benchlib.spread([t * 1e3 for t in r['compiled_runs']])}); "
                      f"{steps} alternating steps of each after {warmup}")
                print(f"{device}: compile time {r['compile']:.1f} s (first compiled step less a steady one; cold "
                      f"inductor cache); eager's first step {r['eager_first'] * 1e3:,.0f} ms")
                if device == "cpu":
                    print(f"{device}: process CPU time per step (all threads; less disturbed by other work on the "
                          f"machine): eager {r['eager_cpu'] * 1e3:,.0f} ms, compiled {r['compiled_cpu'] * 1e3:,.0f} ms, "
                          f"ratio {cpu_speedup:.2f}x")
                print(f"{device}: ratio eager/compiled step time {speedup:.2f}x: {faster}; break-even "
                      f"{break_even}; {r['tokens_per_step'] / r['eager']:,.0f} vs "
                      f"{r['tokens_per_step'] / r['compiled']:,.0f} tokens/s")
                per_token = flops_per_token(settings_for(device).model_config(), 256)
                peak, source = peak_flops(torch.device(device))
                print(f"{device}: MFU eager {mfu(r['tokens_per_step'] / r['eager'], per_token, peak):.1%}, compiled "
                      f"{mfu(r['tokens_per_step'] / r['compiled'], per_token, peak):.1%} of {peak / 1e9:,.0f} GFLOP/s "
                      f"({source}; {per_token / 1e6:.1f} MFLOP per token)")
                summary.append(f"{device}: eager {speedup:.2f}x the compiled step time, compile {r['compile']:.0f} s")
                checks.append((f"{device}: compiled loss within {LOSS_TOLERANCE:.0%} of eager at every step "
                               f"(largest gap {r['loss_gap']:.2e}); no speed target", r["loss_gap"] <= LOSS_TOLERANCE))
    return benchlib.verdict(checks, result="; ".join(summary) or "no device measured")


if __name__ == "__main__":
    sys.exit(main())
