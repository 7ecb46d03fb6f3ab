"""What rank 0 writes to its run beside the step metrics: evaluations, samples, checkpoints, the logged model and
the heartbeat. training/loop.py decides when each falls due; this module decides what a store that is away costs."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from functools import cached_property

import torch

from pipeline.errors import CheckpointError, ShardError, first_line
from pipeline.interpret.heads import Reading, phase_change
from pipeline.interpret.lens import LENS_WINDOWS, lens_scalars, val_losses_by_layer
from pipeline.interpret.positions import PositionCurve
from pipeline.interpret.probe import previous_token_probe
from pipeline.interpret.record import log_inspection, log_score_pool
from pipeline.settings import TrainSettings
from pipeline.tracking import MetricBuffer, beat, checkpoints, retry_until_sent
from pipeline.tracking.runs import HEARTBEAT_SECONDS
from pipeline.training.best import BEST_TAG, BestWeights
from pipeline.training.sampling import completions
from pipeline.training.state import Data, Learner, Tracked

log = logging.getLogger(__name__)

# A sample's novelty is the mean over this many continuations drawn together: one draw's 8-grams swing with
# a single early slip (0.0 to 0.46 across seeds for a model that recites the verdict), four settle it.
SAMPLES_PER_NOVELTY = 4


@dataclass
class RunRecorder:
    """Writes the run's evaluations, samples, checkpoints, logged model and heartbeat (rank 0 only)."""

    # the step loop replaces the settings when it halves the micro-batch: a resume continues with the halved ones
    settings: TrainSettings
    device: torch.device
    learner: Learner
    data: Data
    tracked: Tracked
    last_beat: float = field(default_factory=time.monotonic)
    best: BestWeights = field(default_factory=BestWeights)  # the weights of the lowest val loss so far
    readings: list[Reading] = field(default_factory=list)  # the inspections so far: when an induction head formed
    in_context_gain: float | None = None  # of the latest evaluation
    lens: dict[str, float] = field(default_factory=dict)  # of the latest evaluation

    @property
    def metrics(self) -> MetricBuffer:
        return self.tracked.metrics

    def log_evaluation(self, step: int) -> float:
        """Evaluates and logs the val loss, its perplexity and bits per byte, its curve by position (an artifact,
        and in_context_gain) and the logit lens; returns the val loss."""
        curve, by_layer = self.evaluate(), self.read_lens()
        val_loss = curve.mean
        val_bpb = val_loss * self.data.val_tokens_per_byte / math.log(2)
        self.in_context_gain, self.lens = curve.in_context_gain, lens_scalars(by_layer)
        self.metrics.log(step, val_loss=val_loss, val_perplexity=math.exp(min(val_loss, 50.0)), val_bpb=val_bpb,
                         **curve.scalars(), **self.lens)
        log.info("step %d  val_loss %.4f  val_bpb %.4f  in_context_gain %.3f", step, val_loss, val_bpb,
                 curve.in_context_gain)
        try:
            self.tracked.client.log_dict(self.tracked.run_id, curve.as_json(step),
                                         f"val_loss_by_position/step_{step:06d}.json")
        except Exception as error:  # the store is away: the scalars are buffered, the curve of this step is lost
            log.warning("loss by position at step %d not stored (%s)", step, first_line(error))
        if step > 0:  # the weights a run starts from are not its own to offer as its best
            self.best.observe(step, val_loss, self.learner.model, self._linked_metrics(step))
        for other in self.data.eval_sets:  # --eval-corpus: what the model keeps (or forgets) of other text
            loss = self.evaluate(other.val).mean
            self.metrics.log(step, **{f"val_loss/{other.name}": loss,
                                      f"val_bpb/{other.name}": loss * other.tokens_per_byte / math.log(2)})
            log.info("step %d  val_loss/%s %.4f", step, other.name, loss)
        return val_loss

    def evaluate(self, val=None) -> PositionCurve:
        """The loss at each position, the mean over the fixed val windows (the run's own, or val's); its mean is
        val_loss."""
        val = val or self.data.val
        own = val_losses_by_layer(self.learner.model, val.x, val.y, self.settings.batch_size, self.device,
                                  self.learner.autocast, every_layer=False)
        return PositionCurve(own[0].tolist())

    def read_lens(self) -> torch.Tensor:
        """(n_layer, T): the logit lens on the first LENS_WINDOWS of the run's val windows."""
        val = self.data.val
        return val_losses_by_layer(self.learner.model, val.x[:LENS_WINDOWS], val.y[:LENS_WINDOWS],
                                   self.settings.batch_size, self.device, self.learner.autocast)

    @cached_property
    def score_pool(self) -> torch.Tensor:
        """The token ids of the val text: the head scores' random tokens are drawn from them, as a token the run
        never trained on has an embedding no head learned to read (a BPE's unused merges, most of GPT-2's ids).
        End-of-text is left out: a model reads what follows it as a new document, with nothing to copy from."""
        ids = torch.unique(self.data.val.x)
        return ids[ids != self.data.encoding.eot_token]

    def inspect(self, step: int, final: bool = False) -> None:
        """Attention over the prompt as images, every head's scores, and the step an induction head formed; at
        the final step also the linear probe (seconds of scikit-learn: once a run)."""
        if step <= self.tracked.skip_through:
            return
        client, run_id = self.tracked.client, self.tracked.run_id
        model = self.learner.model
        probe = previous_token_probe(model, self.data.val.x, self.device, self.learner.autocast) if final else None
        if probe:
            self.metrics.log(step, **probe.scalars())
        try:
            with self.learner.autocast:
                scores = log_inspection(client, run_id, step, model, self.data.encoding, self.data.prompt,
                                        self.device, self.lens, probe, self.score_pool)
                if not self.readings:  # this process's first inspection: pipeline.inspect scores on the same pool
                    log_score_pool(client, run_id, self.score_pool)
        except Exception as error:  # the store is away: this inspection is skipped, training goes on
            log.warning("inspection at step %d not stored (%s)", step, first_line(error))
            return
        self.metrics.log(step, **scores.scalars())
        formed_before = phase_change(self.readings)
        self.readings.append(Reading(step, scores, self.in_context_gain))
        formed = phase_change(self.readings)
        if formed and not formed_before:
            words = formed.describe()
            log.info("%s", words)
            try:
                client.set_tag(run_id, "lab.induction_head", words)
            except Exception as error:
                log.warning("induction head at step %d not tagged (%s)", step, first_line(error))

    @torch.no_grad()
    def sample(self, step: int) -> None:
        """Continue the prompt, score the continuations' novelty and store the first one in the run."""
        if step <= self.tracked.skip_through:
            return
        s, prompt = self.settings, self.data.prompt
        with self.learner.autocast:
            drawn = completions(self.learner.model, self.data.encoding, prompt, SAMPLES_PER_NOVELTY, s.sample_tokens,
                                s.temperature, s.top_k, seed=s.seed + step, device=self.device)
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

    def checkpoint(self, step: int, must_arrive: bool = False) -> None:
        """Store a checkpoint in the run. A full disk stops training (CheckpointError); a tracking store that is
        away only skips it, unless it must arrive (the last step, or a stop), when it is retried."""
        learner = self.learner
        state = {
            "model": learner.model.state_dict(),
            "optimizer": learner.optimizer.state_dict(),
            "step": step,
            "position": step * self.settings.batch_size * self.settings.grad_accum,
            "rng": torch.get_rng_state(),
            # dropout masks on a GPU come from its own generators; fp16 runs also carry the loss scale
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "scaler": learner.scaler.state_dict() if learner.scaler else {},
            "settings": asdict(self.settings),
            "model_config": asdict(learner.model.config),
            "tokenizer": checkpoints.tokenizer_state(self.data.shards),  # generate decodes with it
            "best": self.best.state(step),
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

    def _linked_metrics(self, step: int) -> list:
        from pipeline.training.logged_model import LINKED_METRICS

        latest = self.metrics.latest
        return [latest[key] for key in LINKED_METRICS if key in latest and latest[key].step == step]

    def log_model(self, step: int) -> str | None:
        """The final weights as the run's LoggedModel (its Models tab), with this step's losses, and the weights
        of the lowest val loss as a second one when they are not the final ones; a store that refuses them costs
        the models, not the run: the final checkpoint is already stored."""
        from pipeline.training.logged_model import log_generator

        sampling = {"max_new_tokens": self.settings.sample_tokens, "temperature": self.settings.temperature,
                    "top_k": self.settings.top_k, "seed": self.settings.seed}
        best = self.best
        best_tag = {BEST_TAG: f"the lowest val_loss ({best.val_loss:.4f}) at step {best.step} of {step}"}
        models = [(step, self.learner.model.state_dict(), self._linked_metrics(step),
                   best_tag if best.step == step else {})]
        if best.step is not None and best.step != step:
            models.append((best.step, best.weights, best.metrics, best_tag))
        model_ids = []
        for model_step, weights, linked, tags in models:
            try:
                model_ids.append(log_generator(self.tracked.client, self.tracked.run_id, model_step, weights,
                                               asdict(self.learner.model.config), sampling, linked,
                                               checkpoints.tokenizer_state(self.data.shards), tags))
            except Exception as error:
                log.warning("the model of step %d was not logged (%s)", model_step, first_line(error))
                model_ids.append(None)
        if len(model_ids) > 1 and model_ids[1]:
            log.info("best model: models:/%s (step %d, val_loss %.4f)", model_ids[1], best.step, best.val_loss)
        return model_ids[0]

    def keep_heartbeat(self) -> None:
        """Beats at most every HEARTBEAT_SECONDS: a run whose beats stop counts as crashed and may be resumed."""
        if time.monotonic() - self.last_beat < HEARTBEAT_SECONDS:
            return
        self.last_beat = time.monotonic()
        try:
            beat(self.tracked.client, self.tracked.run_id)
        except Exception:  # the store is away: metrics report that once; the next beat tries again
            pass
