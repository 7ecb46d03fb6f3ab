"""The step loop: optimizer steps over the data stream, with logging, evaluation, samples and checkpoints
at their intervals (training/recording.py writes them to the run). Its inputs are four small bundles
(training/state.py) made by training/trainer.py."""

from __future__ import annotations

import logging
import math
import signal
import time
from contextlib import contextmanager, nullcontext
from dataclasses import replace

import torch

from pipeline.errors import TrainingError
from pipeline.settings import TrainSettings
from pipeline.tracking import retry_until_sent
from pipeline.training.device import is_out_of_memory, memory_used
from pipeline.training.distributed import World
from pipeline.training.flops import mfu
from pipeline.training.recording import RunRecorder
from pipeline.training.schedule import lr_at
from pipeline.training.state import Data, Learner, Plan, Tracked, TrainingInterrupted, TrainResult

log = logging.getLogger(__name__)


class StepLoop:
    """Runs the steps from a start step to the plan's last; only rank 0 evaluates, samples, logs and checkpoints."""

    def __init__(self, settings: TrainSettings, world: World, device: torch.device, learner: Learner, data: Data,
                 plan: Plan, tracked: Tracked, trial=None):
        self.settings = settings
        self.world = world
        self.device = device
        self.learner = learner
        self.data = data
        self.plan = plan
        self.tracked = tracked
        self.main = world.is_main
        self.metrics = tracked.metrics
        self.recorder = RunRecorder(settings, device, learner, data, tracked)
        self.stop_requested = False
        self.oom_adjusted = False
        self.estimated = False  # the run's duration is estimated once, at the first log step
        # a trial of a bayes sweep (should_stop(evaluation, val_loss) -> bool) reports its val loss and stops when
        # the sweep's pruner says it is behind; given by the caller, as training knows nothing of sweeps
        self.trial = trial if self.main else None
        self.step = 0
        self.train_loss, self.val_loss = float("nan"), None
        self.pruned_at = self.model_id = None
        self.window_started, self.window_tokens = 0.0, 0  # tokens/sec over the steps since the last log

    def run(self, start_step: int) -> TrainResult:
        """As nanoGPT's loop: each step trains, then logs, evaluates, samples and checkpoints when they fall due.
        It ends after the last step, when a sweep prunes the run, or on Ctrl-C/SIGTERM (TrainingInterrupted)."""
        self.step = start_step
        try:
            if start_step == 0 and self.main:
                self._before_the_first_step()
            with self._stop_on_signals():
                self.learner.step_model.train()
                self.window_started = time.perf_counter()
                while self.step < self.plan.total_steps:
                    lr, loss_sum, grad_norm = self._train_step_fitting_memory(first_step=start_step)
                    self.step += 1
                    self.window_tokens += self.plan.tokens_per_step
                    logs_now = self._due(self.settings.log_interval)
                    self._read_loss(loss_sum, logs_now)
                    if logs_now and self.main:
                        self._log_step(lr, grad_norm)
                    if self._due(self.settings.eval_interval) and self._evaluate_or_prune():
                        break  # the sweep's pruner stopped this trial: it is behind the earlier ones
                    if self._due(self.settings.sample_interval) and self.main:
                        self.recorder.sample(self.step)
                    if self._due(self.settings.inspection_interval()) and self.main:
                        self.recorder.inspect(self.step, final=self._is_last())
                    stopping = self.world.any(self.stop_requested)
                    if self.main:
                        self._checkpoint_when_due(stopping)
                    if stopping and not self._is_last():
                        raise TrainingInterrupted(self.tracked.run_id, self.step)
                    self._between_steps(logs_now)
        except (RuntimeError, MemoryError) as error:
            if not is_out_of_memory(error):
                raise
            raise self._out_of_memory() from None
        finally:
            if self.main:
                self.metrics.flush()
        return TrainResult(self.main, self.tracked.run_id, self.step, self.step * self.plan.tokens_per_step,
                           self.train_loss, self.val_loss, "FINISHED", pruned_at=self.pruned_at,
                           model_id=self.model_id)

    def _before_the_first_step(self) -> None:
        """As nanoGPT, a new run evaluates before it trains: every val curve starts where its weights start (ln
        50,304 = 10.8 from scratch; what --init-from brings, before a step on the new corpus). Its attention then
        is the "before" picture, and MLflow's image view opens at step 0."""
        if self.settings.eval_interval:
            self.val_loss = self.recorder.log_evaluation(0)
        if self.settings.inspection_interval():
            self.recorder.inspect(0)

    def _is_last(self) -> bool:
        return self.step == self.plan.total_steps

    def _due(self, interval: int) -> bool:
        """Whether a thing done every interval steps (0: never) is done at this step; everything is at the last."""
        return self._is_last() or bool(interval and self.step % interval == 0)

    @contextmanager
    def _stop_on_signals(self):
        """Ctrl-C and SIGTERM ask for a stop after the step, with a checkpoint; the handlers before come back."""
        previous_handlers = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)

    def _train_step_fitting_memory(self, first_step: int) -> tuple[float, torch.Tensor, torch.Tensor]:
        """train_step at this step's lr; out of memory in the run's first step halves the micro-batch, once."""
        lr = lr_at(self.step, self.settings, self.plan.total_steps)
        while True:
            try:
                return lr, *self.train_step(self.step, lr)
            except (RuntimeError, MemoryError) as error:
                if not (is_out_of_memory(error) and self.step == first_step and self._halve_micro_batch()):
                    raise

    def _out_of_memory(self) -> TrainingError:
        tried = " even with the micro-batch halved" if self.oom_adjusted else ""
        return TrainingError(f"out of memory at step {self.step + 1}{tried}: lower --batch-size (raise --grad-accum "
                             "to keep the effective batch) or --context-length")

    def _read_loss(self, loss_sum: torch.Tensor, logs_now: bool) -> None:
        # On one CPU process reading the loss every step costs no sync; elsewhere only when logging.
        if logs_now or (self.device.type == "cpu" and not self.world.active):
            self.train_loss = self.world.mean(loss_sum).item()
            if not math.isfinite(self.train_loss):
                raise TrainingError(
                    f"loss became {self.train_loss} at step {self.step}: lower --lr or raise --warmup-steps"
                )

    def _log_step(self, lr: float, grad_norm: torch.Tensor) -> None:
        if self.device.type == "cuda":  # kernels run asynchronously: wait for them to read the clock
            torch.cuda.synchronize(self.device)
        tokens_per_sec = self.window_tokens / (time.perf_counter() - self.window_started)
        step, plan = self.step, self.plan
        self.metrics.log(step, train_loss=self.train_loss, lr=lr, grad_norm=float(grad_norm),
                         tokens_per_sec=tokens_per_sec, tokens_seen=step * plan.tokens_per_step,
                         mfu=mfu(tokens_per_sec, plan.flops_per_token, plan.peak_flops_per_sec),
                         **memory_used(self.device))
        log.info("step %d/%d  loss %.4f  lr %.2e  %s tok/s", step, plan.total_steps, self.train_loss, lr,
                 f"{tokens_per_sec:,.0f}")
        if not self.estimated:
            self._estimate(step, tokens_per_sec)

    def _evaluate_or_prune(self) -> bool:
        """Rank 0 evaluates and logs the val loss; True when a bayes sweep's pruner finds the trial behind."""
        behind = False
        if self.main:
            self.val_loss = self.recorder.log_evaluation(self.step)
            behind = self.trial is not None and not self._is_last() and self.trial.should_stop(
                self.step // self.settings.eval_interval, self.val_loss)
        if not self.world.any(behind):
            return False
        log.info("pruned at step %d: its val loss is behind the earlier trials' there", self.step)
        self.pruned_at = self.step
        if self.main:
            retry_until_sent(self.metrics.flush, "the run's metrics")
        return True

    def _checkpoint_when_due(self, stopping: bool) -> None:
        """The last step and a stop store a checkpoint that must arrive (the last also the model); other steps
        one at its interval, skipped while the tracking store is away."""
        if stopping or self._is_last():
            self.recorder.checkpoint(self.step, must_arrive=True)
            retry_until_sent(self.metrics.flush, "the run's metrics")
            if self._is_last():
                self.model_id = self.recorder.log_model(self.step)
        elif self.settings.checkpoint_interval and self.step % self.settings.checkpoint_interval == 0:
            self.recorder.checkpoint(self.step)

    def _between_steps(self, logged: bool) -> None:
        """Buffered metrics out when due, the heartbeat; after a log step the speed window starts again here, so
        that the evaluation, sample and checkpoint just done are not counted as training time."""
        if self.main:
            self.metrics.maybe_flush()
            self.recorder.keep_heartbeat()
        if logged:
            self.window_started, self.window_tokens = time.perf_counter(), 0

    def train_step(self, step: int, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step over the step's windows; returns the mean loss and the gradient norm (on device)."""
        s, learner = self.settings, self.learner
        learner.optimizer.set_lr(lr)
        windows_per_step = s.batch_size * s.grad_accum
        micro_batches = self.world.share_of_step(windows_per_step, s.batch_size)
        my_windows = sum(count for _, count in micro_batches)
        loss_sum = torch.zeros((), device=self.device)
        for index, (offset, count) in enumerate(micro_batches):
            x, y = self.data.sampler.batch(step * windows_per_step + offset, count)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            last_micro = index == len(micro_batches) - 1
            sync = learner.step_model.no_sync() if self.world.active and not last_micro else nullcontext()
            with sync, learner.autocast:
                _, loss = learner.step_model(x, y)
                # each window weighs the same; DDP then averages the processes' gradients
                loss = loss * (count / my_windows)
            (learner.scaler.scale(loss) if learner.scaler else loss).backward()
            loss_sum += loss.detach()
        if learner.scaler:
            learner.scaler.unscale_(learner.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            learner.model.parameters(), s.grad_clip if s.grad_clip > 0 else float("inf")
        )
        if learner.scaler:
            learner.scaler.step(learner.optimizer)
            learner.scaler.update()
        else:
            learner.optimizer.step()
        learner.optimizer.zero_grad()
        return loss_sum, grad_norm

    def _halve_micro_batch(self) -> bool:
        """Out of memory in the first step: halve the micro-batch and double gradient accumulation, once, so
        the effective batch (and the windows of every step) stay the same. False when that was done already."""
        s = self.settings
        if self.oom_adjusted or self.world.active or s.batch_size < 2 or s.batch_size % 2:
            return False
        self.oom_adjusted = True
        self.learner.optimizer.zero_grad()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.settings = self.recorder.settings = replace(s, batch_size=s.batch_size // 2, grad_accum=s.grad_accum * 2)
        halved = self.settings
        change = f"batch_size {s.batch_size} -> {halved.batch_size}, grad_accum {s.grad_accum} -> {halved.grad_accum}"
        log.warning("out of memory in the first step: %s (the effective batch is unchanged)", change)
        if self.main:
            self.tracked.client.set_tag(self.tracked.run_id, "lab.oom_adjusted", change)
        return True

    def _estimate(self, step: int, tokens_per_sec: float) -> None:
        """How long the rest takes at the speed measured so far; a warning past a day, with a budget to set."""
        self.estimated = True
        seconds = (self.plan.total_steps - step) * self.plan.tokens_per_step / tokens_per_sec
        log.info("estimate: %s for the %d steps left at %s tokens/s", duration(seconds),
                 self.plan.total_steps - step, f"{tokens_per_sec:,.0f}")
        if seconds > 24 * 3600:
            log.warning("this run would take %s at this speed: give it a budget, e.g. --max-tokens %d for "
                        "about an hour", duration(seconds), round(tokens_per_sec * 3600, -3))

    def _request_stop(self, signum, frame) -> None:
        if self.stop_requested:  # a second Ctrl-C: stop now, without the checkpoint
            raise KeyboardInterrupt
        self.stop_requested = True
        log.warning("stopping after this step (%s); press Ctrl-C again to stop at once",
                    signal.Signals(signum).name)


def duration(seconds: float) -> str:
    """40 s, 6.5 min, 3 h 05 min, 2.1 days: a time as a person reads it."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 48 * 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    return f"{seconds / 86400:.1f} days"
