"""What the benchmarks share: the project on sys.path, an offline environment, a throw-away corpus cache and MLflow
store, the trainer's step without any tracking around it, and the PASS/MISSED verdict.

Not a benchmark itself; each bench/*.py imports it (they run as scripts, so bench/ is on sys.path).
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]
if str(PROJECT_DIR) not in sys.path:
    sys.path.insert(0, str(PROJECT_DIR))

SHARED_DATA = PROJECT_DIR.parent / "shared" / "data"

# The small-but-not-trivial shape the overhead and memory benchmarks train: per-step compute dominates (the
# 50,304-wide head over 8 x 64 tokens), yet 100-200 steps take a minute or two on a 2-core CPU.
SMALL_MODEL = {"n_layer": 2, "n_head": 2, "n_embd": 64, "context_length": 64}


def offline_environment() -> dict[str, str]:
    """The variables that make corpora and tiktoken come from ../shared/data, with no network and no telemetry.
    Set in this process (unless already set) and returned for child processes (PYTHONPATH: the project first)."""
    defaults = {
        "CORPUS_MIRROR": str(SHARED_DATA),
        "TIKTOKEN_CACHE_DIR": str(SHARED_DATA / "tiktoken-cache"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "TQDM_DISABLE": "1",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    from pipeline.files import child_python_path

    return {**os.environ, "PYTHONPATH": child_python_path()}


@contextlib.contextmanager
def scratch(prefix: str):
    """A temporary folder that is the working directory, the corpus cache and the MLflow store (mlflow.db, with
    the artifacts beside it) for as long as the block runs; the previous values are restored afterwards."""
    offline_environment()
    saved = {key: os.environ.get(key) for key in ("CORPUS_CACHE", "MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID")}
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        folder = Path(tmp)
        os.environ["CORPUS_CACHE"] = str(folder / "corpus")
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
        os.environ.pop("MLFLOW_RUN_ID", None)
        os.chdir(folder)
        try:
            yield folder
        finally:
            os.chdir(cwd)
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def quiet_logging() -> None:
    """Log as the CLI does (INFO, one line a record) but into /dev/null: records cost what they cost in a real
    run, formatting and writing included, without filling the benchmark's output."""
    handler = logging.StreamHandler(open(os.devnull, "w"))
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for noisy in ("alembic", "mlflow", "urllib3", "httpx", "huggingface_hub", "datasets", "filelock"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def prepare(settings):
    """Fetch and tokenize settings.corpus with settings.tokenizer into the current corpus cache; its (train, val)
    splits."""
    from pipeline.data.corpora import fetch
    from pipeline.data.sharding import shard_corpus

    shards = shard_corpus(fetch(settings.corpus).corpus, tokenizer=settings.tokenizer).shards
    return shards, shards.split("train"), shards.split("val")


def nanogpt_data(folder: Path, corpus: str = "tinystories") -> Path:
    """The lab's shards of corpus (llm.c format: a 256-int32 header, then uint16 tokens) as nanoGPT's
    data/lab_<corpus>/{train,val}.bin (the bare uint16 tokens); folder, nanoGPT's working directory."""
    import numpy as np

    from pipeline.settings import TrainSettings

    shards, _, _ = prepare(TrainSettings(corpus=corpus))
    target = folder / "data" / f"lab_{corpus}"
    target.mkdir(parents=True)
    for split, nanogpt_name in (("train", "train.bin"), ("val", "val.bin")):
        tokens = np.concatenate(shards.split(split))
        tokens.astype(np.uint16).tofile(target / nanogpt_name)
    return folder


def nanogpt_command(nanogpt: Path, folder: Path, overrides: dict) -> tuple[list[str], dict]:
    """nanoGPT's train.py (a checkout of karpathy/nanoGPT) with --key=value overrides, run in folder (made by
    nanogpt_data), and its environment: unbuffered, and without the project on its path."""
    (folder / "configurator.py").write_text((nanogpt / "configurator.py").read_text())  # read from the cwd
    # the project off its path, so that nanoGPT imports its own model.py; pip --target packages stay
    paths = [path for path in os.environ.get("PYTHONPATH", "").split(os.pathsep)
             if path and Path(path).resolve() != PROJECT_DIR]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1"}
    return [sys.executable, str(nanogpt / "train.py"), *(f"--{key}={value}" for key, value in overrides.items())], env


class BareLoop:
    """The trainer's optimisation step and nothing else: the trainer's own StepLoop.train_step on the same model
    (same seed), optimizer, lr schedule and WindowSampler batches, the loss read back every step as the trainer
    does on CPU. No tracking, no evaluation, no sampling, no checkpoints. step_model wraps the model for the
    forward pass (torch.compile), as the trainer does."""

    def __init__(self, settings, train_split, step_model=None):
        import torch

        from model import GPT
        from pipeline.data.batches import WindowSampler
        from pipeline.training.device import pick_device
        from pipeline.training.distributed import World
        from pipeline.training.loop import StepLoop
        from pipeline.training.state import Data, Learner, Plan, Tracked
        from pipeline.training.optimizer import make_optimizer
        from pipeline.training.schedule import total_steps_for

        self.s = settings
        self.device = pick_device(settings.device)
        config = settings.model_config()
        self.sampler = WindowSampler(train_split, config.context_length, settings.stride, settings.seed)
        self.total_steps = total_steps_for(settings, self.sampler.n_windows, self.sampler.length)
        torch.manual_seed(settings.seed)
        self.model = GPT(config).to(self.device)
        self.optimizer = make_optimizer(self.model, settings, self.device)
        self.step_model = step_model(self.model) if step_model else self.model
        self.learner = Learner.on(self.device, self.model, self.step_model, self.optimizer)  # bf16 autocast on CUDA
        self.tokens_per_step = settings.batch_size * settings.grad_accum * self.sampler.length
        self.plan = Plan(self.total_steps, self.tokens_per_step, 0.0, 0.0, epochs=0.0, train_tokens=0)
        self.loop = StepLoop(settings, World(), self.device, self.learner, Data(self.sampler, None, ""), self.plan,
                             Tracked(None, "", None, -1))
        self.step_model.train()
        self.step = 0

    def run_step(self, read_loss: bool = True):
        """One optimizer step; its loss as a float (a sync on GPUs), or as a tensor when read_loss is False."""
        from pipeline.training.schedule import lr_at

        loss_sum, _ = self.loop.train_step(self.step, lr_at(self.step, self.s, self.total_steps))
        self.step += 1
        return loss_sum.item() if read_loss else loss_sum


def run_measured(command: list[str], env: dict, cwd) -> tuple[str, int, int]:
    """Run command to its end: its output (stdout and stderr), exit code and peak RSS in bytes (from wait4)."""
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=cwd, text=True)
    output = child.stdout.read()
    child.stdout.close()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return output, child.returncode, usage.ru_maxrss * scale


def alternate_children(script: str, modes: list[str], reps: int, child_args: list[str]) -> tuple[dict, dict, dict]:
    """`script --child MODE *child_args` for each mode in turn, reps times, each a process of its own that prints,
    last, a JSON line with its step times (seconds), tokens_per_step and loss (and any val_loss). Each run printed;
    returned: the runs by mode, and by mode the median tokens/s (of each run's median step) and peak RSS in MB."""
    import json

    env = offline_environment()
    runs: dict[str, list[dict]] = {mode: [] for mode in modes}
    for rep in range(reps):
        for mode in modes:
            output, code, peak_rss = run_measured([sys.executable, script, "--child", mode, *child_args], env,
                                                  PROJECT_DIR)
            if code != 0:
                raise SystemExit(f"the {mode} child failed (exit {code}):\n{output[-3000:]}")
            result = json.loads(output.strip().splitlines()[-1])
            result["tokens_per_sec"] = result["tokens_per_step"] / median(result["seconds"])
            result["peak_rss_mb"] = peak_rss / 2**20
            runs[mode].append(result)
            val = f", val loss {result['val_loss']:.5f}" if "val_loss" in result else ""
            print(f"   rep {rep + 1} {mode:7s}: {result['tokens_per_sec']:,.0f} tokens/s (median step "
                  f"{median(result['seconds']):.3f} s), peak RSS {result['peak_rss_mb']:,.0f} MB, "
                  f"loss {result['loss']:.5f}{val}", flush=True)
    tokens = {mode: median([r["tokens_per_sec"] for r in rs]) for mode, rs in runs.items()}
    rss = {mode: median([r["peak_rss_mb"] for r in rs]) for mode, rs in runs.items()}
    return runs, tokens, rss


def sync(device) -> None:
    import torch

    if getattr(device, "type", device) == "cuda":
        torch.cuda.synchronize()


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def median(values) -> float:
    return statistics.median(values)


def spread(values) -> str:
    """min..max of a list of numbers, for the noise beside a median."""
    return f"{min(values):.4g}..{max(values):.4g}"


def cpus() -> int:
    from pipeline.machine import usable_cpus

    return usable_cpus()


def load_average() -> str:
    try:
        return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "load average n/a"


def header(title: str) -> None:
    import torch

    print(f"== {title}")
    print(f"   torch {torch.__version__}, {cpus()} CPUs ({torch.get_num_threads()} torch threads), "
          f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA'}, {load_average()}")


def verdict(checks: list[tuple[str, bool]], result: str | None = None) -> int:
    """Print one PASS/MISSED line per (description, passed), then `result: <short value>` (the line run_all.py
    writes into docs/benchmarks.md), and return the exit code: 1 when any missed."""
    for description, passed in checks:
        print(f"{'PASS  ' if passed else 'MISSED'} {description}")
    if result is not None:
        print(f"result: {result}", flush=True)
    return 0 if all(passed for _, passed in checks) else 1
