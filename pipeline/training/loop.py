"""The step loop: optimizer steps over the data stream, with logging, evaluation, samples and checkpoints
at their intervals. Its inputs are four small bundles (Model, Data, Plan, Tracked) made by training/run.py."""

from __future__ import annotations

import logging
import math
import signal
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace

import torch

from model import GPT
from pipeline.analysis.novelty import NgramIndex
from pipeline.data.batches import ValWindows, WindowSampler
from pipeline.errors import CheckpointError, TrainingError, first_line
from pipeline.settings import TrainSettings
from pipeline.tracking import MetricBuffer, retry_until_sent
from pipeline.training import checkpoints
from pipeline.training.device import is_out_of_memory, memory_used, mixed_precision
from pipeline.training.distributed import World
from pipeline.training.flops import mfu
from pipeline.training.sampling import complete
from pipeline.training.schedule import lr_at, total_steps_for

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


@dataclass
class Model:
    """The model, the module the steps call (compiled and/or DDP-wrapped), its optimizer and its precision."""

    model: GPT
    step_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    autocast: object
    scaler: torch.amp.GradScaler | None

    @classmethod
    def on(cls, device: torch.device, model: GPT, step_model, optimizer) -> "Model":
        autocast, scaler = mixed_precision(device)
        return cls(model, step_model, optimizer, autocast, scaler)


@dataclass(frozen=True)
class Data:
    sampler: WindowSampler
    val: ValWindows
    prompt: str
    ngrams: NgramIndex | None = None  # the train split's 8-grams, on rank 0: how much of a sample is copied


@dataclass(frozen=True)
class Plan:
    total_steps: int
    tokens_per_step: int  # all processes together
    flops_per_token: float
    peak_flops_per_sec: float  # of every process together

    @classmethod
    def make(cls, settings: TrainSettings, sampler: WindowSampler, world: World, flops_per_token: float,
             peak_flops_per_sec: float) -> "Plan":
        return cls(total_steps_for(settings, sampler.n_windows, sampler.length),
                   settings.batch_size * settings.grad_accum * sampler.length, flops_per_token, peak_flops_per_sec)


@dataclass(frozen=True)
class Tracked:
    client: object  # MlflowClient on rank 0, None elsewhere
    run_id: str
    metrics: MetricBuffer | None
    skip_through: int  # a resumed run's last logged step: its samples are not logged twice


class StepLoop:
    """Runs the steps from a start step to the plan's last; only rank 0 evaluates, samples, logs and checkpoints."""

    def __init__(self, settings: TrainSettings, world: World, device: torch.device, model: Model, data: Data,
                 plan: Plan, tracked: Tracked):
        self.s = settings
        self.world = world
        self.device = device
        self.m = model
        self.data = data
        self.plan = plan
        self.tracked = tracked
        self.main = world.is_main
        self.metrics = tracked.metrics
        self.micro_steps = settings.grad_accum // world.world_size
        self.stop_requested = False
        self.oom_adjusted = False

    def run(self, start_step: int) -> TrainResult:
        previous_handlers = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        train_loss, val_loss, step = float("nan"), None, start_step
        total_steps, tokens_per_step = self.plan.total_steps, self.plan.tokens_per_step
        try:
            # tokens/sec over the steps since the last log; evaluation, samples and checkpoints at a log step
            # come after the window closes, so they are not counted as training time
            window_started, window_tokens = time.perf_counter(), 0
            self.m.step_model.train()
            while step < total_steps:
                lr = lr_at(step, self.s, total_steps)
                try:
                    loss_sum, grad_norm = self.train_step(step, lr)
                except RuntimeError as error:
                    if not (is_out_of_memory(error) and step == start_step and self._halve_micro_batch()):
                        raise
                    continue
                s = self.s
                step += 1
                window_tokens += tokens_per_step

                is_last = step == total_steps
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
                                     tokens_per_sec=tokens_per_sec, tokens_seen=step * tokens_per_step,
                                     mfu=mfu(tokens_per_sec, self.plan.flops_per_token, self.plan.peak_flops_per_sec),
                                     **memory_used(self.device))
                    log.info("step %d/%d  loss %.4f  lr %.2e  %s tok/s", step, total_steps, train_loss, lr,
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
                    retry_until_sent(self.metrics.flush, "the run's metrics")
                elif self.main and s.checkpoint_interval and step % s.checkpoint_interval == 0:
                    self._checkpoint(step)
                if stopping and not is_last:
                    raise TrainingInterrupted(self.tracked.run_id, step)
                if self.main:
                    self.metrics.maybe_flush()
                if logs_now:
                    window_started, window_tokens = time.perf_counter(), 0
        except RuntimeError as error:
            if not is_out_of_memory(error):
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
        return TrainResult(self.main, self.tracked.run_id, step, step * tokens_per_step, train_loss, val_loss,
                           "FINISHED")

    def train_step(self, step: int, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step over the step's windows; returns the mean loss and the gradient norm (on device)."""
        s, m = self.s, self.m
        for group in m.optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(self.micro_steps):
            # process r takes micro-batches r, r + N, ...: together exactly the single process's windows
            index = micro * self.world.world_size + self.world.rank
            x, y = self.data.sampler.batch(step * s.batch_size * s.grad_accum + index * s.batch_size, s.batch_size)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            last_micro = micro == self.micro_steps - 1
            sync = m.step_model.no_sync() if self.world.active and not last_micro else nullcontext()
            with sync, m.autocast:
                _, loss = m.step_model(x, y)
                loss = loss / self.micro_steps
            (m.scaler.scale(loss) if m.scaler else loss).backward()
            loss_sum += loss.detach()
        if m.scaler:
            m.scaler.unscale_(m.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            m.model.parameters(), s.grad_clip if s.grad_clip > 0 else float("inf")
        )
        if m.scaler:
            m.scaler.step(m.optimizer)
            m.scaler.update()
        else:
            m.optimizer.step()
        m.optimizer.zero_grad(set_to_none=True)
        return loss_sum, grad_norm

    def _halve_micro_batch(self) -> bool:
        """Out of memory in the first step: halve the micro-batch and double gradient accumulation, once, so
        the effective batch (and the windows of every step) stay the same. False when that was done already."""
        s = self.s
        if self.oom_adjusted or self.world.active or s.batch_size < 2 or s.batch_size % 2:
            return False
        self.oom_adjusted = True
        self.m.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.s = replace(s, batch_size=s.batch_size // 2, grad_accum=s.grad_accum * 2)
        self.micro_steps *= 2
        change = f"batch_size {s.batch_size} -> {self.s.batch_size}, grad_accum {s.grad_accum} -> {self.s.grad_accum}"
        log.warning("out of memory in the first step: %s (the effective batch is unchanged)", change)
        if self.main:
            self.tracked.client.set_tag(self.tracked.run_id, "lab.oom_adjusted", change)
        return True

    def _request_stop(self, signum, frame) -> None:
        if self.stop_requested:  # a second Ctrl-C: stop now, without the checkpoint
            raise KeyboardInterrupt
        self.stop_requested = True
        log.warning("stopping after this step (%s); press Ctrl-C again to stop at once",
                    signal.Signals(signum).name)

    @torch.no_grad()
    def _evaluate(self) -> float:
        step_model, val, batch = self.m.step_model, self.data.val, self.s.batch_size
        step_model.eval()
        total, count = 0.0, 0
        for start in range(0, len(val), batch):
            x = val.x[start : start + batch].to(self.device)
            y = val.y[start : start + batch].to(self.device)
            with self.m.autocast:
                _, loss = step_model(x, y)
            total += loss.item() * len(x)
            count += len(x)
        step_model.train()
        return total / count

    @torch.no_grad()
    def _sample(self, step: int) -> None:
        if step <= self.tracked.skip_through:
            return
        prompt = self.data.prompt
        with self.m.autocast:
            completion = complete(self.m.model, prompt, self.s.sample_tokens, self.s.temperature, self.s.top_k,
                                  seed=self.s.seed + step, device=self.device)
        generation = completion.text
        novelty = self.data.ngrams.novelty(completion.tokens)
        if novelty is not None:
            self.metrics.log(step, novelty=novelty)
        log.info("sample at step %d (novelty %s): %r", step, "n/a" if novelty is None else f"{novelty:.2f}",
                 (prompt + generation)[:200])
        # Metrics first: once this step's sample is stored, a resume knows the step was logged.
        if not self.metrics.flush():
            return  # the tracking store is away: this sample is skipped, training goes on
        client, run_id = self.tracked.client, self.tracked.run_id
        try:
            client.log_text(run_id, f"{prompt}{generation}\n", f"samples/step_{step:06d}.txt")
            client.log_table(run_id, {"step": [step], "prompt": [prompt], "generation": [generation]},
                             artifact_file="samples.json")
        except Exception as error:
            log.warning("sample at step %d not stored (%s)", step, first_line(error))

    def _checkpoint(self, step: int, must_arrive: bool = False) -> None:
        """Store a checkpoint in the run. A full disk stops training (CheckpointError); a tracking store that is
        away only skips it, unless it must arrive (the last step, or a stop), when it is retried."""
        m = self.m
        state = {
            "model": m.model.state_dict(),
            "optimizer": m.optimizer.state_dict(),
            "step": step,
            "position": step * self.s.batch_size * self.s.grad_accum,
            "rng": torch.get_rng_state(),
            # dropout masks on a GPU come from its own generators; fp16 runs also carry the loss scale
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "scaler": m.scaler.state_dict() if m.scaler else {},
            "settings": asdict(self.s),
            "model_config": asdict(m.model.config),
        }
        self.metrics.flush()
        client, run_id = self.tracked.client, self.tracked.run_id
        if must_arrive:
            retry_until_sent(lambda: checkpoints.store(client, run_id, state), f"the checkpoint of step {step}")
            return
        try:
            checkpoints.store(client, run_id, state)
        except CheckpointError:
            raise
        except Exception as error:
            log.warning("checkpoint of step %d not stored (%s); the next one will be", step, first_line(error))
