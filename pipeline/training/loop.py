"""The step loop: optimizer steps over the data stream, with logging, evaluation, samples and checkpoints
at their intervals. Its inputs are four small bundles (training/state.py) made by training/trainer.py."""

from __future__ import annotations

import logging
import math
import signal
import time
from contextlib import nullcontext
from dataclasses import asdict, replace

import torch

from pipeline.errors import CheckpointError, ShardError, TrainingError, first_line
from pipeline.settings import TrainSettings
from pipeline.tracking import beat, checkpoints, retry_until_sent
from pipeline.tracking.runs import HEARTBEAT_SECONDS
from pipeline.training.device import is_out_of_memory, memory_used
from pipeline.training.distributed import World
from pipeline.training.flops import mfu
from pipeline.training.sampling import completions
from pipeline.training.schedule import lr_at
from pipeline.training.state import Data, Model, Plan, Tracked, TrainingInterrupted, TrainResult

log = logging.getLogger(__name__)

# A sample's novelty is the mean over this many continuations drawn together: one draw's 8-grams swing with
# a single early slip (0.0 to 0.46 across seeds for a model that recites the verdict), four settle it.
SAMPLES_PER_NOVELTY = 4


class StepLoop:
    """Runs the steps from a start step to the plan's last; only rank 0 evaluates, samples, logs and checkpoints."""

    def __init__(self, settings: TrainSettings, world: World, device: torch.device, model: Model, data: Data,
                 plan: Plan, tracked: Tracked, trial=None):
        self.s = settings
        self.world = world
        self.device = device
        self.m = model
        self.data = data
        self.plan = plan
        self.tracked = tracked
        self.main = world.is_main
        self.metrics = tracked.metrics
        self.stop_requested = False
        self.oom_adjusted = False
        self.estimated = False  # the run's duration is estimated once, at the first log step
        self.last_beat = time.monotonic()
        # a trial of a bayes sweep (should_stop(evaluation, val_loss) -> bool) reports its val loss and stops when
        # the sweep's pruner says it is behind; given by the caller, as training knows nothing of sweeps
        self.trial = trial if self.main else None

    def run(self, start_step: int) -> TrainResult:
        previous_handlers = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        train_loss, val_loss, step = float("nan"), None, start_step
        pruned_at = model_id = None
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
                except (RuntimeError, MemoryError) as error:
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
                    if not self.estimated:
                        self._estimate(step, tokens_per_sec)
                evaluating = is_last or (s.eval_interval and step % s.eval_interval == 0)
                behind = False
                if self.main and evaluating:
                    val_loss = self._evaluate()
                    val_bpb = val_loss * self.data.val_tokens_per_byte / math.log(2)
                    self.metrics.log(step, val_loss=val_loss, val_perplexity=math.exp(min(val_loss, 50.0)),
                                     val_bpb=val_bpb)
                    log.info("step %d  val_loss %.4f  val_bpb %.4f", step, val_loss, val_bpb)
                    behind = self.trial is not None and not is_last and self.trial.should_stop(
                        step // s.eval_interval, val_loss)
                if evaluating and self.world.any(behind):
                    log.info("pruned at step %d: its val loss is behind the earlier trials' there", step)
                    pruned_at = step
                    if self.main:
                        retry_until_sent(self.metrics.flush, "the run's metrics")
                    break
                if self.main and (is_last or (s.sample_interval and step % s.sample_interval == 0)):
                    self._sample(step)
                stopping = self.world.any(self.stop_requested)
                if self.main and (stopping or is_last):
                    self._checkpoint(step, must_arrive=True)
                    retry_until_sent(self.metrics.flush, "the run's metrics")
                    if is_last:
                        model_id = self._log_model(step)
                elif self.main and s.checkpoint_interval and step % s.checkpoint_interval == 0:
                    self._checkpoint(step)
                if stopping and not is_last:
                    raise TrainingInterrupted(self.tracked.run_id, step)
                if self.main:
                    self.metrics.maybe_flush()
                    self._keep_heartbeat()
                if logs_now:
                    window_started, window_tokens = time.perf_counter(), 0
        except (RuntimeError, MemoryError) as error:
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
                           "FINISHED", pruned_at=pruned_at, model_id=model_id)

    def train_step(self, step: int, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step over the step's windows; returns the mean loss and the gradient norm (on device)."""
        s, m = self.s, self.m
        for group in m.optimizer.param_groups:
            group["lr"] = lr
        windows_per_step = s.batch_size * s.grad_accum
        micro_batches = self.world.share_of_step(windows_per_step, s.batch_size)
        my_windows = sum(count for _, count in micro_batches)
        loss_sum = torch.zeros((), device=self.device)
        for index, (offset, count) in enumerate(micro_batches):
            x, y = self.data.sampler.batch(step * windows_per_step + offset, count)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            last_micro = index == len(micro_batches) - 1
            sync = m.step_model.no_sync() if self.world.active and not last_micro else nullcontext()
            with sync, m.autocast:
                _, loss = m.step_model(x, y)
                # each window weighs the same; DDP then averages the processes' gradients
                loss = loss * (count / my_windows)
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
        m.optimizer.zero_grad()
        return loss_sum, grad_norm

    def _halve_micro_batch(self) -> bool:
        """Out of memory in the first step: halve the micro-batch and double gradient accumulation, once, so
        the effective batch (and the windows of every step) stay the same. False when that was done already."""
        s = self.s
        if self.oom_adjusted or self.world.active or s.batch_size < 2 or s.batch_size % 2:
            return False
        self.oom_adjusted = True
        self.m.optimizer.zero_grad()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.s = replace(s, batch_size=s.batch_size // 2, grad_accum=s.grad_accum * 2)
        change = f"batch_size {s.batch_size} -> {self.s.batch_size}, grad_accum {s.grad_accum} -> {self.s.grad_accum}"
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

    def _keep_heartbeat(self) -> None:
        if time.monotonic() - self.last_beat < HEARTBEAT_SECONDS:
            return
        self.last_beat = time.monotonic()
        try:
            beat(self.tracked.client, self.tracked.run_id)
        except Exception:  # the store is away: metrics report that once; the next beat tries again
            pass

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
            drawn = completions(self.m.model, prompt, SAMPLES_PER_NOVELTY, self.s.sample_tokens, self.s.temperature,
                                self.s.top_k, seed=self.s.seed + step, device=self.device)
        generation = drawn[0].text
        try:
            scores = [self.data.ngrams.novelty(completion.tokens) for completion in drawn]
            novelty = None if None in scores else sum(scores) / len(scores)
        except ShardError as error:  # a read-only shard folder without its index: samples go on, unscored
            log.warning("sample at step %d has no novelty (%s)", step, first_line(error))
            novelty = None
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

    def _log_model(self, step: int) -> str | None:
        """The final weights as the run's LoggedModel (its Models tab), with this step's losses; a store that
        refuses it costs the model, not the run: the final checkpoint is already stored."""
        from pipeline.training.logged_model import LINKED_METRICS, log_generator

        sampling = {"max_new_tokens": self.s.sample_tokens, "temperature": self.s.temperature,
                    "top_k": self.s.top_k, "seed": self.s.seed}
        latest = self.metrics.latest
        linked = [latest[key] for key in LINKED_METRICS if key in latest and latest[key].step == step]
        try:
            return log_generator(self.tracked.client, self.tracked.run_id, step, self.m.model.state_dict(),
                                 asdict(self.m.model.config), sampling, linked)
        except Exception as error:
            log.warning("the model of step %d was not logged (%s); its checkpoint was", step, first_line(error))
            return None


def duration(seconds: float) -> str:
    """40 s, 6.5 min, 3 h 05 min, 2.1 days: a time as a person reads it."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 48 * 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    return f"{seconds / 86400:.1f} days"
