"""One training run, in its four phases: prepare the data, open (or resume) the MLflow run, the step loop, close.

Closing happens in one place, whatever ended the loop: FINISHED (diagnosed and tagged), KILLED on Ctrl-C or
SIGTERM, FAILED on any error. Under torchrun every process calls `train`; rank 0 alone talks to MLflow.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import replace

import torch
from torch.nn.parallel import DistributedDataParallel

from model import GPT, GPTConfig
from pipeline import tracking
from pipeline.data.batches import ValWindows, WindowSampler
from pipeline.data.corpora import fetch
from pipeline.data.sharding import shard_corpus, tokens_per_byte
from pipeline.errors import LabError, SettingsError, first_line
from pipeline.settings import TrainSettings, short_number
from pipeline.tracking import checkpoints
from pipeline.tracking.diagnosis import diagnose_run, tag_run
from pipeline.training import distributed
from pipeline.training.device import check_model_fits, keep_freed_memory, pick_device
from pipeline.training.distributed import World
from pipeline.training.flops import flops_per_token, peak_flops
from pipeline.training.init_from import load_source
from pipeline.training.loop import StepLoop
from pipeline.training.resuming import check_budget, record_extension, settings_to_resume
from pipeline.training.run_inputs import log_run_inputs
from pipeline.training.state import (Corpus, Data, EvalSet, Learner, Plan, Tracked, TrainingInterrupted,
                                     TrainResult)
from pipeline.training.optimizer import make_optimizer

log = logging.getLogger(__name__)


def train(settings: TrainSettings, trial=None, given=None) -> TrainResult:
    """Train as settings say (or resume settings.resume), tracked in MLflow. Raises LabError subclasses for
    bad input and TrainingInterrupted on Ctrl-C or SIGTERM. trial: a bayes sweep's trial that this run is
    (sweeps.study.TrialHandle: should_stop(evaluation, val_loss) says whether to stop as behind), or None.
    given: the names of the settings the user gave (a resume compares those with the run's own); None: those
    that differ from the defaults."""
    world = distributed.join(settings.device)
    given = settings.changed_from_defaults() if given is None else given
    try:
        result = _train(settings, world, trial, given)
        world.wait_for_all()  # leave together: a process that tears down early can abort the others' last sends
        return result
    finally:
        distributed.leave(world)


def _train(settings: TrainSettings, world: World, trial, given) -> TrainResult:
    # bad input is refused before the store is touched (or created: seconds that torchrun may cut short)
    _check(settings, world)
    client = tracking.connect() if world.is_main else None
    settings, resume_state = _settings_to_run(settings, given, world, client)
    device = pick_device(settings.device)
    if device.type == "cuda" and world.active:
        device = torch.device("cuda", world.local_rank)
    if device.type == "cpu":
        keep_freed_memory()
    source = load_source(settings.init_from) if settings.init_from and resume_state is None else None
    if resume_state is not None:  # the run's own model, whatever its settings resolve to now
        model_config = GPTConfig(**resume_state["model_config"])
    else:
        model_config = source.model_config(settings) if source else settings.model_config()

    corpus = prepare_corpus(settings.corpus, world, settings.tokenizer)
    if source:
        source.check_ranks(checkpoints.tokenizer_state(corpus.shards))
    data = prepare_data(settings, corpus, model_config.context_length, world)
    # The CPU probe draws random matrices: measure before seeding, so it cannot shift the run's random stream.
    peak = peak_flops(device) if world.is_main else (0.0, "")  # (FLOP/s of one process, where that comes from)
    learner, start_step = build_model(settings, model_config, device, world, resume_state,
                                      source.weights_for(model_config) if source else None)
    plan = Plan.make(settings, data.sampler, world, flops_per_token(model_config, data.sampler.length),
                     peak[0] * world.world_size, corpus.shards.train_tokens)
    extension = None
    if resume_state is not None:  # a finished run, or a shorter budget, is refused before the run opens
        with _freed_if_refused(client, settings.resume, world):
            extension = check_budget(settings, TrainSettings(**resume_state["settings"]), start_step,
                                     plan.total_steps, data.sampler.n_windows, data.sampler.length)

    tracked = open_run(settings, corpus, world, client, resume_state, source.lineage_tags() if source else {})
    status, error = tracking.STATUS_FAILED, None
    system_metrics = (tracking.start_system_metrics(tracked.run_id, resume_state is not None)
                      if world.is_main else None)
    try:
        if world.is_main and resume_state is None:
            log_run_inputs(tracked, settings, learner, corpus, data, plan, world, device, peak)
        if world.is_main and extension:
            record_extension(client, tracked.run_id, extension)
        if world.is_main:
            n_params = learner.model.num_params()
            log.info("run %s: %s, %s parameters (%s non-embedding), %d steps of %d tokens on %s%s", tracked.run_id,
                     f"from {settings.init_from}" if settings.init_from else settings.config, f"{n_params:,}",
                     f"{learner.model.num_params(non_embedding=True):,}",
                     plan.total_steps, plan.tokens_per_step, device,
                     f" x {world.world_size} processes" if world.active else "")
            log.info("plan: %s%s", f"{extension.describe()}; " if extension else "", plan.describe())
            log.info("MLflow UI: %s", tracked.ui_url)
        if resume_state is not None and learner.scaler is not None and resume_state.get("scaler"):
            learner.scaler.load_state_dict(resume_state["scaler"])
        loop = StepLoop(settings, world, device, learner, data, plan, tracked, trial)
        if resume_state is not None and world.is_main:  # rank 0 alone evaluates and logs models
            loop.recorder.best.restore(resume_state.get("best", {}), learner.model)
        result = loop.run(start_step)
        if world.is_main and result.pruned_at is not None:
            client.set_tag(tracked.run_id, tracking.PRUNED_TAG, str(result.pruned_at))
        if world.is_main and settings.register and result.model_id:
            _register(client, tracked.run_id, settings.register)
        status = tracking.STATUS_FINISHED
        return replace(result, ui_url=tracked.ui_url)
    except TrainingInterrupted:
        status = tracking.STATUS_KILLED
        raise
    except BaseException as raised:
        error = raised
        raise
    finally:
        if world.is_main:
            if system_metrics:
                system_metrics.finish()  # before the run ends: its last samples go into a RUNNING run
            close_run(client, tracked.run_id, status, error)


def _register(client, run_id: str, name: str) -> None:
    """--register NAME: the run's model as a new version of NAME; a registry that refuses costs a warning."""
    from pipeline.tracking.models import register

    try:
        log.info("registered the model as '%s' version %d", name, register(client, run_id, name))
    except Exception as error:
        log.warning("the model was not registered as '%s' (%s)", name, first_line(error))


def _check(settings: TrainSettings, world: World) -> None:
    """SettingsError for values out of range, and for a step that cannot split over the processes."""
    settings.validate()
    world.share_of_step(settings.batch_size * settings.grad_accum, settings.batch_size)


def _settings_to_run(settings: TrainSettings, given, world: World, client) -> tuple[TrainSettings, dict | None]:
    """The settings as given, or a resumed run's own settings (with the device and any budget given now, other
    given options checked against the run's) and its checkpoint."""
    resume_state = None
    if settings.resume:
        if world.is_main:
            trainer = tracking.live_trainer(tracking.get_run(client, settings.resume))
            if trainer:
                raise SettingsError(f"run {settings.resume} is still being trained ({trainer}): stop it before "
                                    "resuming it")
            tracking.beat(client, settings.resume)  # claim it now: a second Resume a moment later is refused
            with _freed_if_refused(client, settings.resume, world):
                resume_state = checkpoints.load_from_run(settings.resume, client)
        resume_state = world.share(resume_state)
        with _freed_if_refused(client, settings.resume, world):
            settings = settings_to_resume(TrainSettings(**resume_state["settings"]), resume_state["model_config"],
                                          settings, given)
            _check(settings, world)
    return settings, resume_state


@contextmanager
def _freed_if_refused(client, run_id: str, world: World):
    """A resume refused before it trains frees the run it claimed: another resume may take it at once."""
    try:
        yield
    except LabError:
        if world.is_main:
            tracking.unclaim(client, run_id)
        raise


def prepare_corpus(spec: str, world: World, tokenizer: str) -> Corpus:
    """Phase one: download and tokenize the corpus with the run's tokenizer; one process per machine does it, the
    others then find it done (and a file lock keeps machines that share a disk from doing it twice)."""
    if world.local_rank == 0:
        fetched = fetch(spec)
        tokenized = shard_corpus(fetched.corpus, tokenizer=tokenizer)
    world.wait_for_all()
    if world.local_rank != 0:
        fetched = fetch(spec)
        tokenized = shard_corpus(fetched.corpus, tokenizer=tokenizer)
    if fetched.action not in ("already present", "local"):
        log.info("corpus %s: %s", fetched.corpus.name, fetched.action)
    if not tokenized.skipped and tokenized.shards.manifest.get("cleaning"):
        log.info("%s", tokenized.shards.manifest["cleaning"])
    name = fetched.corpus.name
    label = name.split("-")[0] if fetched.action == "local" else name
    return Corpus(name, label, fetched.corpus.source, fetched.corpus.prompt, tokenized.shards)


def prepare_data(settings: TrainSettings, corpus: Corpus, context_length: int, world: World) -> Data:
    """The train windows, the fixed validation windows and the prompt of the run's samples."""
    prompt = settings.prompt or corpus.prompt
    enc = corpus.shards.encoding  # the run's tokenizer: the prompt is counted, and val_bpb measured, in its tokens
    prompt_tokens = len(enc.encode_ordinary(prompt))
    if prompt_tokens >= context_length:
        raise SettingsError(f"prompt has {prompt_tokens} tokens; it must be shorter than the context "
                            f"({context_length})")
    sampler = WindowSampler(corpus.shards.split("train"), context_length, settings.stride, settings.seed)
    val = ValWindows.build(corpus.shards.split("val"), context_length, settings.val_windows)
    if sampler.length < context_length and world.is_main:
        log.warning("the train split has %d tokens, fewer than the context (%d) + 1: windows shrink to %d",
                    corpus.shards.train_tokens, context_length, sampler.length)
    val_tokens_per_byte = tokens_per_byte(corpus.shards.split("val"), enc) if world.is_main else 1.0
    return Data(sampler, val, prompt, val_tokens_per_byte, corpus.shards,
                tuple(_eval_set(spec, settings, context_length, world) for spec in settings.eval_corpora()))


def _eval_set(spec: str, settings: TrainSettings, context_length: int, world: World) -> EvalSet:
    """--eval-corpus: another corpus's fixed val windows in the run's tokenizer, and its tokens per byte."""
    corpus = prepare_corpus(spec, world, settings.tokenizer)
    split = corpus.shards.split("val")
    per_byte = tokens_per_byte(split, corpus.shards.encoding) if world.is_main else 1.0
    return EvalSet(corpus.label, ValWindows.build(split, context_length, settings.val_windows), per_byte)


def build_model(settings: TrainSettings, model_config, device: torch.device, world: World,
                resume_state: dict | None, weights: dict | None = None) -> tuple[Learner, int]:
    """The seeded model and its optimizer, restored from the checkpoint when resuming, or started from weights
    (--init-from); and the first step."""
    check_model_fits(model_config, device)
    torch.manual_seed(settings.seed)
    model = GPT(model_config)
    if weights is not None:
        model.load_state_dict(weights)
    model = model.to(device)
    optimizer = make_optimizer(model, settings, device)
    start_step = 0
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        start_step = resume_state["step"]
        torch.set_rng_state(resume_state["rng"])
        if device.type == "cuda" and resume_state.get("cuda_rng"):
            torch.cuda.set_rng_state_all(resume_state["cuda_rng"])
    step_model = torch.compile(model) if settings.compile else model
    if world.active:
        step_model = DistributedDataParallel(step_model, device_ids=[device.index] if device.type == "cuda" else None)
    return Learner.on(device, model, step_model, optimizer), start_step


def open_run(settings: TrainSettings, corpus: Corpus, world: World, client, resume_state: dict | None,
             lineage: dict[str, str]) -> Tracked:
    """Phase two: a new MLflow run (tagged with where its first weights came from), or the resumed one set
    RUNNING again; every process learns its id."""
    run_id, skip_through = None, -1
    if world.is_main:
        if resume_state is not None:
            run_id = settings.resume
            client.update_run(run_id, status="RUNNING")
            skip_through = tracking.last_logged_step(client, run_id)
        else:
            run_name = settings.run_name or default_run_name(settings, corpus.label)
            run_id = tracking.start_run(client, settings.experiment, run_name,
                                        tags={"lab.config": settings.config, "lab.corpus": corpus.label,
                                              **lineage})
            tracking.beat(client, run_id)
    run_id = world.share(run_id)
    metrics = tracking.MetricBuffer(client, run_id, skip_through=skip_through) if world.is_main else None
    url = tracking.run_ui_url(client.get_run(run_id).info.experiment_id, run_id) if world.is_main else ""
    return Tracked(client, run_id, metrics, skip_through, url)


def close_run(client, run_id: str, status: str, error: BaseException | None) -> None:
    """Phase four, the one place a run ends: diagnosed and FINISHED, KILLED, or FAILED with its error as a tag.

    FINISHED and KILLED runs wait for a tracking store that is away, as metrics do. A FAILED run tries once:
    its error is already on its way to the user, and a store that is away gets one line, not a traceback."""
    if status == tracking.STATUS_FINISHED:
        tracking.retry_until_sent(lambda: _finish(client, run_id), "the run's end")
    elif status == tracking.STATUS_KILLED:
        tracking.retry_until_sent(lambda: tracking.finish_run(client, run_id, status), "the run's end")
    else:
        message = str(error) if isinstance(error, LabError) else f"{type(error).__name__}: {error}"
        try:
            client.set_tag(run_id, "error", message[:5000])
            tracking.finish_run(client, run_id, status)
        except Exception as unreachable:
            log.warning("run %s could not be marked FAILED (%s); it stays RUNNING until resumed", run_id,
                        first_line(unreachable))


def _finish(client, run_id: str) -> None:
    diagnosis = diagnose_run(client, run_id)
    tag_run(client, run_id, diagnosis)
    tracking.finish_run(client, run_id, tracking.STATUS_FINISHED)
    log.info("diagnosis: %s (%s)", diagnosis.tag, diagnosis.detail)


def default_run_name(settings: TrainSettings, corpus_label: str) -> str:
    config_label = settings.config.rsplit("/", 1)[-1].removesuffix(".yaml").removesuffix(".yml")
    muon = f"-muon{short_number(settings.muon_lr)}" if settings.optimizer == "muon" else ""
    return f"{config_label}-{corpus_label}{muon}-lr{short_number(settings.lr)}"
