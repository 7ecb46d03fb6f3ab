"""The training loop: a corpus's shards in, a GPT trained and every step of it recorded in MLflow out."""

from __future__ import annotations

import logging
import math
import platform
import resource
import signal
import subprocess
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace

import torch
from torch.nn.parallel import DistributedDataParallel

from model import GPT
from pipeline import checkpoints, distributed, tracking
from pipeline.batches import ValWindows, WindowSampler
from pipeline.corpora import PROJECT_DIR, fetch
from pipeline.diagnosis import diagnose_run, tag_run
from pipeline.distributed import World
from pipeline.errors import CheckpointError, LabError, SettingsError, TrainingError
from pipeline.flops import flops_per_token, mfu, peak_flops
from pipeline.novelty import NgramIndex
from pipeline.sampling import complete
from pipeline.settings import TrainSettings, short_number
from pipeline.shards import encoding, tokenize

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    main_process: bool  # False on the other processes of a torchrun group, which report nothing
    run_id: str
    steps: int
    tokens_seen: int
    train_loss: float
    val_loss: float | None
    status: str


class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM: the run was checkpointed and ended KILLED."""

    def __init__(self, run_id: str, step: int):
        super().__init__(f"interrupted at step {step}; checkpoint saved: resume with --resume {run_id}")
        self.run_id = run_id
        self.step = step


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SettingsError(f"unknown device '{name}' (auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SettingsError("device cuda asked for, but PyTorch sees no CUDA GPU here (use --device auto)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise SettingsError("device mps asked for, but it is not available here (use --device auto)")
    return device


def lr_at(step: int, settings: TrainSettings, total_steps: int) -> float:
    """Linear warmup to lr, then cosine decay to min_lr at the last step. step counts from 0."""
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, total_steps - settings.warmup_steps)
    return settings.min_lr + 0.5 * (1 + math.cos(math.pi * min(1.0, progress))) * (settings.lr - settings.min_lr)


def make_optimizer(model: GPT, settings: TrainSettings, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on weight matrices only: biases, LayerNorm gains are left alone."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": settings.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=settings.lr, betas=(settings.beta1, settings.beta2),
                             fused=device.type == "cuda")


def total_steps_for(settings: TrainSettings, n_windows: int, window_length: int) -> int:
    """The first budget reached: epochs, max_steps or max_tokens (each 0 when not set)."""
    windows_per_step = settings.batch_size * settings.grad_accum
    budgets = []
    if settings.epochs:
        budgets.append(math.ceil(settings.epochs * n_windows / windows_per_step))
    if settings.max_steps:
        budgets.append(settings.max_steps)
    if settings.max_tokens:
        budgets.append(math.ceil(settings.max_tokens / (windows_per_step * window_length)))
    return max(1, min(budgets))


def default_run_name(settings: TrainSettings, corpus_label: str) -> str:
    config_label = settings.config.rsplit("/", 1)[-1].removesuffix(".yaml").removesuffix(".yml")
    return f"{config_label}-{corpus_label}-lr{short_number(settings.lr)}"


def train(settings: TrainSettings) -> TrainResult:
    """Train as settings say (or resume settings.resume), tracked in MLflow. Raises LabError subclasses for
    bad input and TrainingInterrupted on Ctrl-C or SIGTERM. Under torchrun, every process calls this."""
    world = distributed.join(settings.device)
    try:
        result = _train(settings, world)
        world.wait_for_all()  # leave together: a process that tears down early can abort the others' last sends
        return result
    finally:
        distributed.leave(world)


def _train(settings: TrainSettings, world: World) -> TrainResult:
    client = tracking.connect() if world.is_main else None
    resume_state = None
    if settings.resume:
        if world.is_main:
            tracking.get_run(client, settings.resume)
            resume_state = checkpoints.load_from_run(settings.resume, client)
        resume_state = world.share(resume_state)
        saved = TrainSettings(**resume_state["settings"])
        settings = replace(saved, resume=settings.resume, device=settings.device)
    settings.validate()
    if settings.grad_accum % world.world_size:
        raise SettingsError(f"grad_accum ({settings.grad_accum}) must be a multiple of the number of processes "
                            f"({world.world_size}), so the effective batch stays the same")
    device = pick_device(settings.device)
    if device.type == "cuda" and world.active:
        device = torch.device("cuda", world.local_rank)
    model_config = settings.model_config()

    if world.is_main:  # one process downloads and tokenizes; the others then find it done
        fetched = fetch(settings.corpus)
        tokenized = tokenize(fetched.corpus)
    world.wait_for_all()
    if not world.is_main:
        fetched = fetch(settings.corpus)
        tokenized = tokenize(fetched.corpus)
    prompt = settings.prompt or fetched.corpus.prompt
    prompt_tokens = len(encoding().encode_ordinary(prompt))
    if prompt_tokens >= model_config.context_length:
        raise SettingsError(f"prompt has {prompt_tokens} tokens; it must be shorter than the context "
                            f"({model_config.context_length})")
    if fetched.action not in ("already present", "local"):
        log.info("corpus %s: %s", fetched.corpus.name, fetched.action)
    shards = tokenized.shards
    train_split, val_split = shards.split("train"), shards.split("val")
    sampler = WindowSampler(train_split, model_config.context_length, settings.stride, settings.seed)
    val = ValWindows.build(val_split, model_config.context_length, settings.val_windows)
    if sampler.length < model_config.context_length and world.is_main:
        log.warning("the train split has %d tokens, fewer than the context (%d) + 1: windows shrink to %d",
                    shards.train_tokens, model_config.context_length, sampler.length)
    total_steps = total_steps_for(settings, sampler.n_windows, sampler.length)
    tokens_per_step = settings.batch_size * settings.grad_accum * sampler.length  # all processes together

    # The CPU probe draws random matrices: measure before seeding, so it cannot shift the run's random stream.
    peak, peak_source = peak_flops(device) if world.is_main else (0.0, "")
    torch.manual_seed(settings.seed)
    model = GPT(model_config).to(device)
    optimizer = make_optimizer(model, settings, device)
    start_step = 0
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        start_step = resume_state["step"]
        torch.set_rng_state(resume_state["rng"])
        if device.type == "cuda" and resume_state.get("cuda_rng"):
            torch.cuda.set_rng_state_all(resume_state["cuda_rng"])
    n_params, n_params_non_embedding = model.num_params(), model.num_params(non_embedding=True)
    model_flops_per_token = flops_per_token(model_config, sampler.length)
    step_model = torch.compile(model) if settings.compile else model
    if world.active:
        step_model = DistributedDataParallel(step_model, device_ids=[device.index] if device.type == "cuda" else None)

    run_id, skip_through = None, -1
    if world.is_main:
        corpus_label = fetched.corpus.name.split("-")[0] if fetched.action == "local" else fetched.corpus.name
        if resume_state is not None:
            run_id = settings.resume
            client.update_run(run_id, status="RUNNING")
            skip_through = tracking.last_logged_step(client, run_id)
        else:
            run_name = settings.run_name or default_run_name(settings, corpus_label)
            run_id = tracking.start_run(client, settings.experiment, run_name,
                                        tags={"lab.config": settings.config, "lab.corpus": corpus_label})
    run_id = world.share(run_id)
    try:
        if world.is_main and resume_state is None:
            tracking.log_params_once(client, run_id, {
                **settings.as_params(),
                **{k: str(v) for k, v in asdict(model_config).items()},
                "corpus_name": fetched.corpus.name,
                "shards_sha256": shards.tokens_sha256,
                "train_tokens": str(shards.train_tokens),
                "val_tokens": str(shards.val_tokens),
                "window_length": str(sampler.length),
                "train_windows": str(sampler.n_windows),
                "total_steps": str(total_steps),
                "tokens_per_step": str(tokens_per_step),
                "world_size": str(world.world_size),
                "n_params": str(n_params),
                "n_params_non_embedding": str(n_params_non_embedding),
                "device": str(device),
                "flops_per_token": f"{model_flops_per_token:.4g}",
                "peak_flops": f"{peak:.4g}",
                "peak_flops_source": peak_source,
                "torch_version": torch.__version__,
                "python_version": platform.python_version(),
                "git_commit": _git_commit(),
            })
            client.log_inputs(run_id, datasets=[
                tracking.dataset_input(fetched.corpus.name, fetched.corpus.source, shards.tokens_sha256)
            ])
        if world.is_main:
            log.info("run %s: %s, %s parameters (%s non-embedding), %d steps of %d tokens on %s%s",
                     run_id, settings.config, f"{n_params:,}", f"{n_params_non_embedding:,}", total_steps,
                     tokens_per_step, device, f" x {world.world_size} processes" if world.active else "")
        ngrams = NgramIndex.load_or_build(shards) if world.is_main else None
        loop = _Loop(settings, world, client, run_id, step_model, model, optimizer, sampler, val, device,
                     total_steps, tokens_per_step, prompt, skip_through, ngrams,
                     peak_flops_per_sec=peak * world.world_size, flops_per_token=model_flops_per_token)
        if resume_state is not None and loop.scaler is not None and resume_state.get("scaler"):
            loop.scaler.load_state_dict(resume_state["scaler"])
        result = loop.run(start_step)
    except TrainingInterrupted:
        if world.is_main:
            tracking.finish_run(client, run_id, tracking.STATUS_KILLED)
        raise
    except BaseException as error:
        if world.is_main:
            message = str(error) if isinstance(error, LabError) else f"{type(error).__name__}: {error}"
            client.set_tag(run_id, "error", message[:5000])
            tracking.finish_run(client, run_id, tracking.STATUS_FAILED)
        raise
    if world.is_main:
        diagnosis = diagnose_run(client, run_id)
        tag_run(client, run_id, diagnosis)
        log.info("diagnosis: %s (%s)", diagnosis.tag, diagnosis.detail)
        tracking.retry_until_sent(lambda: tracking.finish_run(client, run_id, tracking.STATUS_FINISHED),
                                  "the run's end")
    return result


class _Loop:
    """One run's loop state: the model, its optimizer and where in the data stream it stands."""

    def __init__(self, settings, world, client, run_id, step_model, model, optimizer, sampler, val, device,
                 total_steps, tokens_per_step, prompt, skip_through, ngrams, peak_flops_per_sec, flops_per_token):
        self.s = settings
        self.world = world
        self.client = client
        self.run_id = run_id
        self.step_model = step_model
        self.model = model
        self.optimizer = optimizer
        self.sampler = sampler
        self.val = val
        self.device = device
        self.total_steps = total_steps
        self.tokens_per_step = tokens_per_step
        self.prompt = prompt
        self.skip_through = skip_through
        self.ngrams = ngrams  # the train split's 8-grams: how much of a sample is copied
        self.peak_flops_per_sec = peak_flops_per_sec  # of every process together
        self.flops_per_token = flops_per_token
        self.main = world.is_main  # only rank 0 evaluates, samples, logs and checkpoints
        self.metrics = tracking.MetricBuffer(client, run_id, skip_through=skip_through) if self.main else None
        self.micro_steps = settings.grad_accum // world.world_size
        self.autocast, self.scaler = _mixed_precision(device)
        self.stop_requested = False
        self.oom_adjusted = False

    def run(self, start_step: int) -> TrainResult:
        s = self.s
        previous_handlers = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        train_loss = float("nan")
        val_loss = None
        step = start_step
        try:
            # tokens/sec over the steps since the last log; evaluation, samples and checkpoints at a log step
            # come after the window closes, so they are not counted as training time
            window_started, window_tokens = time.perf_counter(), 0
            self.step_model.train()
            while step < self.total_steps:
                lr = lr_at(step, self.s, self.total_steps)
                try:
                    loss_sum, grad_norm = self._step(step, lr)
                except RuntimeError as error:
                    if not (_is_out_of_memory(error) and step == start_step and self._halve_micro_batch()):
                        raise
                    continue
                s = self.s
                step += 1
                window_tokens += self.tokens_per_step

                is_last = step == self.total_steps
                logs_now = is_last or (s.log_interval and step % s.log_interval == 0)
                # On one CPU process reading the loss every step costs no sync; elsewhere only when logging.
                if logs_now or (self.device.type == "cpu" and not self.world.active):
                    train_loss = self.world.mean(loss_sum).item()
                    if not math.isfinite(train_loss):
                        raise TrainingError(
                            f"loss became {train_loss} at step {step}: lower --lr or raise --warmup-steps"
                        )
                if logs_now and self.main:
                    if self.device.type == "cuda":  # kernels run asynchronously: wait for them to read the clock
                        torch.cuda.synchronize(self.device)
                    tokens_per_sec = window_tokens / (time.perf_counter() - window_started)
                    self.metrics.log(step, train_loss=train_loss, lr=lr, grad_norm=float(grad_norm),
                                     tokens_per_sec=tokens_per_sec, tokens_seen=step * self.tokens_per_step,
                                     mfu=mfu(tokens_per_sec, self.flops_per_token, self.peak_flops_per_sec),
                                     **self._memory())
                    log.info("step %d/%d  loss %.4f  lr %.2e  %s tok/s", step, self.total_steps, train_loss, lr,
                             f"{tokens_per_sec:,.0f}")
                if self.main and (is_last or (s.eval_interval and step % s.eval_interval == 0)):
                    val_loss = self._evaluate()
                    self.metrics.log(step, val_loss=val_loss, val_perplexity=math.exp(min(val_loss, 50.0)))
                    log.info("step %d  val_loss %.4f", step, val_loss)
                if self.main and (is_last or (s.sample_interval and step % s.sample_interval == 0)):
                    self._sample(step)
                stopping = self.world.any(self.stop_requested)
                if self.main and (stopping or is_last):
                    self._checkpoint(step, must_arrive=True)
                    tracking.retry_until_sent(self.metrics.flush, "the run's metrics")
                elif self.main and s.checkpoint_interval and step % s.checkpoint_interval == 0:
                    self._checkpoint(step)
                if stopping and not is_last:
                    raise TrainingInterrupted(self.run_id, step)
                if self.main:
                    self.metrics.maybe_flush()
                if logs_now:
                    window_started, window_tokens = time.perf_counter(), 0
        except RuntimeError as error:  # torch.OutOfMemoryError on GPUs; a plain RuntimeError from the CPU allocator
            if not _is_out_of_memory(error):
                raise
            tried = " even with the micro-batch halved" if self.oom_adjusted else ""
            raise TrainingError(
                f"out of memory at step {step + 1}{tried}: lower --batch-size (raise --grad-accum to keep the "
                "effective batch) or --context-length"
            ) from None
        finally:
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
            if self.main:
                self.metrics.flush()
        return TrainResult(self.main, self.run_id, step, step * self.tokens_per_step, train_loss, val_loss, "FINISHED")

    def _step(self, step: int, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step over the step's windows; returns the mean loss and the gradient norm (on device)."""
        s = self.s
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(self.micro_steps):
            # process r takes micro-batches r, r + N, ...: together exactly the single process's windows
            index = micro * self.world.world_size + self.world.rank
            x, y = self.sampler.batch(step * s.batch_size * s.grad_accum + index * s.batch_size, s.batch_size)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            last_micro = micro == self.micro_steps - 1
            sync = self.step_model.no_sync() if self.world.active and not last_micro else nullcontext()
            with sync, self.autocast:
                _, loss = self.step_model(x, y)
                loss = loss / self.micro_steps
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            loss_sum += loss.detach()
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), s.grad_clip if s.grad_clip > 0 else float("inf")
        )
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_sum, grad_norm

    def _halve_micro_batch(self) -> bool:
        """Out of memory in the first step: halve the micro-batch and double gradient accumulation, once, so
        the effective batch (and the windows of every step) stay the same. False when that was done already."""
        s = self.s
        if self.oom_adjusted or self.world.active or s.batch_size < 2 or s.batch_size % 2:
            return False
        self.oom_adjusted = True
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.s = replace(s, batch_size=s.batch_size // 2, grad_accum=s.grad_accum * 2)
        self.micro_steps *= 2
        change = f"batch_size {s.batch_size} -> {self.s.batch_size}, grad_accum {s.grad_accum} -> {self.s.grad_accum}"
        log.warning("out of memory in the first step: %s (the effective batch is unchanged)", change)
        if self.main:
            self.client.set_tag(self.run_id, "lab.oom_adjusted", change)
        return True

    def _request_stop(self, signum, frame) -> None:
        if self.stop_requested:  # a second Ctrl-C: stop now, without the checkpoint
            raise KeyboardInterrupt
        self.stop_requested = True
        log.warning("stopping after this step (%s); press Ctrl-C again to stop at once",
                    signal.Signals(signum).name)

    @torch.no_grad()
    def _evaluate(self) -> float:
        self.step_model.eval()
        total, count = 0.0, 0
        for start in range(0, len(self.val), self.s.batch_size):
            x = self.val.x[start : start + self.s.batch_size].to(self.device)
            y = self.val.y[start : start + self.s.batch_size].to(self.device)
            with self.autocast:
                _, loss = self.step_model(x, y)
            total += loss.item() * len(x)
            count += len(x)
        self.step_model.train()
        return total / count

    @torch.no_grad()
    def _sample(self, step: int) -> None:
        if step <= self.skip_through:
            return
        with self.autocast:
            completion = complete(self.model, self.prompt, self.s.sample_tokens, self.s.temperature, self.s.top_k,
                                  seed=self.s.seed + step, device=self.device)
        generation = completion.text
        novelty = self.ngrams.novelty(completion.tokens)
        if novelty is not None:
            self.metrics.log(step, novelty=novelty)
        log.info("sample at step %d (novelty %s): %r", step, "n/a" if novelty is None else f"{novelty:.2f}",
                 (self.prompt + generation)[:200])
        # Metrics first: once this step's sample is stored, a resume knows the step was logged.
        if not self.metrics.flush():
            return  # the tracking store is away: this sample is skipped, training goes on
        try:
            self.client.log_text(self.run_id, f"{self.prompt}{generation}\n", f"samples/step_{step:06d}.txt")
            self.client.log_table(self.run_id, {"step": [step], "prompt": [self.prompt], "generation": [generation]},
                                  artifact_file="samples.json")
        except Exception as error:
            log.warning("sample at step %d not stored (%s)", step, str(error).splitlines()[0][:200])

    def _checkpoint(self, step: int, must_arrive: bool = False) -> None:
        """Store a checkpoint in the run. A full disk stops training (CheckpointError); a tracking store that is
        away only skips it, unless it must arrive (the last step, or a stop), when it is retried."""
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": step,
            "position": step * self.s.batch_size * self.s.grad_accum,
            "rng": torch.get_rng_state(),
            # dropout masks on a GPU come from its own generators; fp16 runs also carry the loss scale
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "scaler": self.scaler.state_dict() if self.scaler else {},
            "settings": asdict(self.s),
            "model_config": asdict(self.model.config),
        }
        self.metrics.flush()
        if must_arrive:
            tracking.retry_until_sent(lambda: checkpoints.store(self.client, self.run_id, state),
                                      f"the checkpoint of step {step}")
            return
        try:
            checkpoints.store(self.client, self.run_id, state)
        except CheckpointError:
            raise
        except Exception as error:
            log.warning("checkpoint of step %d not stored (%s); the next one will be", step,
                        str(error).splitlines()[0][:200])

    def _memory(self) -> dict[str, float]:
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        memory = {"peak_rss_mb": peak_kb / (1024 * 1024 if platform.system() == "Darwin" else 1024)}
        if self.device.type == "cuda":
            memory["peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        return memory


def _mixed_precision(device: torch.device):
    """bf16 autocast on CUDA (fp16 with a GradScaler where bf16 is missing); full fp32 elsewhere."""
    if device.type != "cuda":
        return nullcontext(), None
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    if torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16), None
    return torch.autocast("cuda", dtype=torch.float16), torch.amp.GradScaler("cuda")


def _is_out_of_memory(error: RuntimeError) -> bool:
    text = str(error)
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_DIR, capture_output=True, text=True,
                              timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
