"""Train the CodePrior on per-file code sequences, watching for memorisation.

Data: one LongTensor[T', Q] of codes per file, flattened position-major. Training windows hold
`config.context_steps * Q` tokens and always start on a level-0 token; a file shorter than a window
is used whole (padded, with the padding masked out of the loss). Files are drawn in proportion to
their length, so an epoch (enough windows to cover the training tokens once) sees every part of the
material about equally. The split is by file (the VQ-VAE's), so validation loss means "new material".

Resume: with a `checkpoint` store the whole state (weights, best weights, AdamW moments, the window
generator's and torch's RNG states (dropout), step, elapsed time, memorisation counters, eval history)
is saved at every evaluation and when stopped; `resume=True` continues from the newest complete one
and, without a time budget, ends with the same weights as an uninterrupted run (bit-identical on CPU).
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from distill.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointStore,
    optimizer_spec,
    optimizer_tensors,
    prefixed_spec,
    restore_optimizer,
    restore_rng,
    rng_record,
    rng_spec,
    rng_tensors,
    settings_fingerprint,
)
from distill.config import PriorConfig
from distill.device import resolve_device
from distill.events import Stage
from distill.models.prior import CodePrior
from distill.training.loop import (
    Progress,
    Schedule,
    StepOutcome,
    StopReason,
    find_checkpoint,
    finite_or_none,
    run_training,
    stop_sentence,
    strip_prefix,
)

EVAL_MAX_TOKENS = 8_192  # tokens per split scored at each evaluation (a fixed, evenly spread subset)
MEMORISE_CHECKS = 3  # evaluations without a new best, with train loss still falling, before warning
GAP_RATIO = 2.0  # warn when validation perplexity passes this many times the training perplexity
MIN_LR_FRACTION = 0.1  # cosine decay floor, as a fraction of the peak learning rate


@dataclass
class PriorTrainResult:
    model: CodePrior  # best-validation weights, eval mode
    best_val_loss: float  # nats per token on the validation files
    best_step: int
    final_train_loss: float | None  # last optimiser step's loss (with dropout), nats per token
    history: list[dict] = field(default_factory=list)  # the "eval" events
    steps: int = 0
    seconds: float = 0.0
    stop_reason: str = StopReason.COMPLETED  # the same as `stop` (kept for older readers; compares as its value)
    message: str = ""  # one plain sentence on how training ended
    stop: StopReason = StopReason.COMPLETED
    memorisation_warning: str | None = None
    interrupted: bool = False  # ended by the stop flag: a checkpoint (if any) can continue it
    resumed_from: int | None = None  # the checkpoint step this call continued from


@dataclass
class PriorPlan:
    seq_len: int  # tokens per training window
    steps_per_epoch: int
    total_steps: int  # max_epochs worth; the time budget may end training sooner
    warmup_steps: int
    eval_interval: int  # optimiser steps between evaluations


def plan_prior_training(config: PriorConfig, num_quantizers: int, train_tokens: int) -> PriorPlan:
    """Steps per epoch and overall, from the token count of the training files."""
    seq_len = config.seq_len(num_quantizers)
    windows = max(1, math.ceil(train_tokens / seq_len))
    per_epoch = max(1, math.ceil(windows / max(1, config.batch_size)))
    total = per_epoch * max(1, config.max_epochs)
    warmup = max(1, min(config.warmup_steps, total // 10))
    interval = max(1, min(config.eval_every, per_epoch))
    return PriorPlan(seq_len, per_epoch, total, warmup, interval)


# --- data ------------------------------------------------------------------------------------


class _Windows:
    """All files' flattened tokens in one tensor, and level-aligned window sampling from it."""

    def __init__(self, flats: list[torch.Tensor], num_quantizers: int, seq_len: int):
        self.q = num_quantizers
        self.seq_len = seq_len
        self.tokens = torch.cat(flats) if flats else torch.zeros(0, dtype=torch.long)
        lengths = torch.tensor([len(f) for f in flats], dtype=torch.long)
        self.lengths = lengths
        self.offsets = torch.cumsum(lengths, 0) - lengths
        # last level-0 start that still fits a whole window (0 for short files)
        self.max_start_step = ((lengths - seq_len).clamp(min=0)) // num_quantizers
        self.weights = lengths.double()
        # [S] bool: window positions that carry a clip-end target (a time step's first token, after
        # at least one whole step in the window)
        span = torch.arange(seq_len)
        self.end_positions = (span % num_quantizers == 0) & (span >= num_quantizers)

    @property
    def total(self) -> int:
        return int(self.lengths.sum())

    def gather(self, files: torch.Tensor, start_tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """files, start_tokens: [B] -> (inputs [B, S] long, targets [B, S] with -100 on padding,
        clip-end targets [B, S]: at level-0 positions from Q on, 1 where the file has just ended,
        0 before, -100 elsewhere; resume [B] bool: the window begins inside its file)."""
        span = torch.arange(self.seq_len)
        local = start_tokens[:, None] + span  # [B, S] index within each file
        lengths = self.lengths[files][:, None]
        valid = local < lengths
        idx = (self.offsets[files][:, None] + local).clamp(max=max(0, len(self.tokens) - 1))
        x = torch.where(valid, self.tokens[idx], torch.zeros((), dtype=torch.long))
        y = torch.where(valid, x, torch.full((), -100, dtype=torch.long))
        ends = torch.where(valid, 0, torch.where(local == lengths, 1, -100))
        ends = torch.where(self.end_positions, ends, torch.full((), -100, dtype=torch.long))
        # trim columns that are padding in every row, keeping the one where the longest file ends
        width = min(self.seq_len, int(valid.sum(1).max()) + 1)
        return x[:, :width], y[:, :width], ends[:, :width], start_tokens > 0

    def sample(self, batch: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        """A batch of training windows; one that runs past its file's end is padded (masked out of
        the loss)."""
        files = torch.multinomial(self.weights, batch, replacement=True, generator=gen)
        steps = (torch.rand(batch, generator=gen, dtype=torch.float64) * (self.max_start_step[files] + 1).double()).long()
        return self.gather(files, steps * self.q)

    def tiles(self, max_tokens: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Non-overlapping windows covering every token once (each file tiled from its start).
        With max_tokens, an evenly spread fixed subset of about that many tokens."""
        files, starts = [], []
        for f, n in enumerate(self.lengths.tolist()):
            for s in range(0, n, self.seq_len):
                files.append(f)
                starts.append(s)
        files_t, starts_t = torch.tensor(files, dtype=torch.long), torch.tensor(starts, dtype=torch.long)
        if max_tokens is not None and len(files) * self.seq_len > max_tokens:
            k = max(1, max_tokens // self.seq_len)
            pick = torch.linspace(0, len(files) - 1, k).round().long().unique()
            files_t, starts_t = files_t[pick], starts_t[pick]
        return files_t, starts_t


def _flatten_file(codes: torch.Tensor) -> torch.Tensor:
    if codes.dim() != 2:
        raise ValueError(f"each file's codes must be [T', Q], got shape {tuple(codes.shape)}")
    return codes.reshape(-1).long()


def _end_loss(end_logits, ends: torch.Tensor, reduction: str = "mean"):
    """Binary cross-entropy of the clip-end head on its labelled positions (None without a head)."""
    if end_logits is None:
        return None
    mask = ends != -100
    if not bool(mask.any()):
        return end_logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(end_logits[mask], ends[mask].float(), reduction=reduction)


@torch.no_grad()
def _mean_loss(model: CodePrior, data: _Windows, files, starts, device, batch: int) -> tuple[float, float | None]:
    """(mean code cross-entropy in nats/token, mean clip-end cross-entropy or None) over the given
    windows, eval mode."""
    total, count, end_total, end_count = 0.0, 0, 0.0, 0
    for i in range(0, len(files), batch):
        x, y, ends, resume = data.gather(files[i : i + batch], starts[i : i + batch])
        x, y, ends, resume = x.to(device), y.to(device), ends.to(device), resume.to(device)
        logits, end_logits = model.forward_with_ends(x, resume)
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=-100, reduction="sum"))
        count += int((y != -100).sum())
        if end_logits is not None:
            end_total += float(_end_loss(end_logits, ends, reduction="sum"))
            end_count += int((ends != -100).sum())
    return total / max(1, count), (end_total / end_count if end_count else None)


# --- training --------------------------------------------------------------------------------


def _optimizer(model: torch.nn.Module, config: PriorConfig, device: torch.device) -> torch.optim.AdamW:
    # weight decay on matrices only (not biases, norms, or the start vector)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(0.9, 0.95), fused=device.type in ("cpu", "cuda"))
    except (RuntimeError, TypeError):  # a backend without the fused kernel
        return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(0.9, 0.95))


def _lr(config: PriorConfig, plan: PriorPlan, step: int, elapsed: float) -> float:
    """Linear warm-up, then cosine decay over the run's progress: planned steps or time budget,
    whichever is further along (so a time-limited run still ends its schedule near the floor)."""
    if step < plan.warmup_steps:
        return config.learning_rate * ((step + 1) / plan.warmup_steps)
    progress = step / plan.total_steps
    if config.time_budget_s:
        progress = max(progress, elapsed / config.time_budget_s)
    progress = min(1.0, progress)
    floor = MIN_LR_FRACTION * config.learning_rate
    return floor + (config.learning_rate - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def perplexity_from_loss(loss: float) -> float:
    """exp(cross-entropy in nats): the number of equally likely codes it amounts to (capped at
    e^50; inf for a non-finite loss). Also turns a loss gap into a perplexity ratio."""
    return math.exp(min(50.0, loss)) if math.isfinite(loss) else math.inf


def memorisation_message(checks: int, best_step: int) -> str:
    return (
        "The model is starting to memorise your files rather than learn their general sound: "
        f"its predictions for the held-back files have got worse over the last {checks} checks, while "
        f"those for the training files keep improving. Keeping the best version, from step {best_step}."
    )


def gap_message(ratio: float, best_step: int) -> str:
    return (
        "The model now predicts your training files much better than the held-back ones "
        f"(about {ratio:.1f}× more uncertain on new material), a sign it is memorising rather than "
        f"generalising. Keeping the best version on held-back files, from step {best_step}."
    )


class WeightAverage:
    """An exponential moving average of a model's weights, kept in a second copy of the model.
    The decay ramps up from 0 ((1 + step) / (10 + step)) so early steps are not dragged toward the
    random initialisation."""

    def __init__(self, model: CodePrior, decay: float):
        self.decay = float(decay)
        self.model = copy.deepcopy(model)
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: CodePrior, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(list(self.model.parameters()), [p.detach() for p in model.parameters()], 1.0 - d)


@dataclass
class PriorState:
    """Everything train_prior saves to continue exactly where it left off (the loop adds the step,
    the clock and its counters): the live objects, the best weights and the memorisation watch."""

    model: CodePrior
    opt: torch.optim.Optimizer
    gen: torch.Generator  # the window sampler's
    averaged: WeightAverage | None
    device: torch.device
    fingerprint: str
    schedule: dict  # the plan, recorded for whoever reads the checkpoint
    best_val: float = math.inf
    best_step: int = 0
    best_weights: dict | None = None
    since_best: int = 0  # evaluations since the best one
    warned_memorise: bool = False
    warned_gap: bool = False
    warning_text: str | None = None
    last_loss: float | None = None
    tps_ema: float | None = None
    step_time_ema: float | None = None
    eval_seconds: float = 0.0
    history: list[dict] = field(default_factory=list)  # the "eval" records

    @property
    def scored(self) -> CodePrior:
        """The evaluated (and kept) model: the weight average, or the trained model without one."""
        return self.averaged.model if self.averaged is not None else self.model

    def expected(self, meta: dict) -> dict:
        """The tensors a checkpoint must hold to fit this model, data and settings (checked before
        any tensor is read)."""
        if meta.get("stage") != Stage.PRIOR:
            raise CheckpointError("it is not a code-model checkpoint")
        if meta.get("fingerprint") != self.fingerprint:
            raise CheckpointError("it was made with other settings or other codes")
        state = self.model.state_dict()
        spec = {**prefixed_spec("model.", state), **optimizer_spec(self.opt, meta.get("optimizer") or {}),
                **rng_spec(meta.get("rng") or {}, {"windows": self.gen})}
        if meta.get("has_best"):
            spec.update(prefixed_spec("best.", state))
        if self.averaged is not None:
            spec.update(prefixed_spec("average.", state))
        return spec

    def to_checkpoint(self) -> tuple[dict[str, torch.Tensor], dict]:
        opt_tensors, opt_meta = optimizer_tensors(self.opt)
        rng = rng_tensors(self.device, {"windows": self.gen})
        tensors = {**{f"model.{k}": v for k, v in self.model.state_dict().items()}, **opt_tensors, **rng}
        if self.averaged is not None:
            tensors.update({f"average.{k}": v for k, v in self.averaged.model.state_dict().items()})
        if self.best_weights is not None:
            tensors.update({f"best.{k}": v for k, v in self.best_weights.items()})
        meta = {"stage": Stage.PRIOR, "fingerprint": self.fingerprint, "optimizer": opt_meta, "rng": rng_record(rng),
                "schedule": self.schedule, "best_val_loss": finite_or_none(self.best_val), "best_step": self.best_step,
                "has_best": self.best_weights is not None, "since_best": self.since_best,
                "warned_memorise": self.warned_memorise, "warned_gap": self.warned_gap,
                "warning_text": self.warning_text, "last_loss": self.last_loss, "tps_ema": self.tps_ema,
                "step_time_ema": self.step_time_ema, "eval_seconds": self.eval_seconds, "history": self.history}
        return tensors, meta

    def restore(self, ckpt: Checkpoint) -> None:
        meta, tensors = ckpt.meta, ckpt.tensors
        self.model.load_state_dict(strip_prefix(tensors, "model."))
        if self.averaged is not None:
            self.averaged.model.load_state_dict(strip_prefix(tensors, "average."))
        restore_optimizer(self.opt, tensors, meta["optimizer"])
        if meta.get("has_best"):
            self.best_weights = {k: v.to(self.device) for k, v in strip_prefix(tensors, "best.").items()}
        self.history = list(meta["history"])
        self.best_val = float(meta["best_val_loss"]) if meta.get("best_val_loss") is not None else math.inf
        self.best_step, self.since_best = int(meta["best_step"]), int(meta["since_best"])
        self.warned_memorise, self.warned_gap = bool(meta["warned_memorise"]), bool(meta["warned_gap"])
        self.warning_text, self.last_loss = meta.get("warning_text"), meta.get("last_loss")
        self.tps_ema, self.step_time_ema = meta.get("tps_ema"), meta.get("step_time_ema")
        self.eval_seconds = float(meta["eval_seconds"])
        restore_rng(tensors, self.device, {"windows": self.gen})  # last: building the model drew from torch's RNG


def _fingerprint(config: PriorConfig, codebook_size: int, q: int, held_out: bool, train_flats, val_flats) -> str:
    """What a checkpoint must share with this call to continue it: settings (except the time budget
    and device, which a resume may change) and the sizes of the data."""
    settings = {k: v for k, v in asdict(config).items() if k not in ("time_budget_s", "device")}
    settings["pack_files"] = False  # a retired setting, always off: checkpoints saved before it went carry it
    if not config.learn_clip_ends:  # so checkpoints saved before the setting existed still resume
        del settings["clip_end_weight"], settings["learn_clip_ends"]
    del settings["augment_copies"]  # the copies' own sizes, below, say what it changed (older checkpoints lack it)
    return settings_fingerprint(settings, codebook_size, q, held_out, [len(f) for f in train_flats],
                                [len(f) for f in val_flats])


def train_prior(
    codes: list[torch.Tensor],
    config: PriorConfig,
    codebook_size: int,
    train_index: list[int],
    val_index: list[int],
    callbacks=None,
    stop=None,
    checkpoint: CheckpointStore | None = None,
    resume: bool = False,
    varied_codes: list[torch.Tensor] | None = None,
) -> PriorTrainResult:
    """Train a CodePrior on `codes` (one LongTensor[T', Q] per file) and return the best-validation
    model. With no validation files, the training files stand in (nothing is held out then).
    varied_codes: the codes of varied copies of the training files (distill/training/prior_augment.py),
    trained on beside them; validation never sees them.

    checkpoint: where to save the training state (at every evaluation and when stopped); without
    resume its old checkpoints are removed first. resume: continue from its newest usable one."""
    callbacks = list(callbacks or [])

    def emit(kind: str, **payload) -> None:
        event = {"stage": Stage.PRIOR, "kind": kind, **payload}
        for cb in callbacks:
            cb(event)

    if not codes:
        raise ValueError("no code sequences to train the prior on")
    q = int(codes[0].shape[-1])
    train_flats = [_flatten_file(codes[i]) for i in train_index if codes[i].numel()]
    val_flats = [_flatten_file(codes[i]) for i in val_index if codes[i].numel()]
    if not train_flats:
        raise ValueError("the training split has no codes")
    for f in train_flats + val_flats:
        if int(f.min()) < 0 or int(f.max()) >= codebook_size:
            raise ValueError(f"codes outside 0..{codebook_size - 1}")
    held_out = bool(val_flats)
    if not held_out:
        val_flats = train_flats
    real_files = len(train_flats)
    varied_flats = [_flatten_file(c) for c in (varied_codes or []) if c.numel()]
    for f in varied_flats:
        if int(f.min()) < 0 or int(f.max()) >= codebook_size:
            raise ValueError(f"codes outside 0..{codebook_size - 1}")
    train_flats = train_flats + varied_flats

    device = resolve_device(config.device)
    plan = plan_prior_training(config, q, sum(len(f) for f in train_flats))
    train_data = _Windows(train_flats, q, plan.seq_len)
    val_data = _Windows(val_flats, q, plan.seq_len)
    val_eval = val_data.tiles(EVAL_MAX_TOKENS)
    train_eval = train_data.tiles(EVAL_MAX_TOKENS)
    eval_batch = max(1, config.batch_size)

    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    model = CodePrior.from_config(config, codebook_size, q).to(device)
    opt = _optimizer(model, config, device)
    averaged = WeightAverage(model, config.weight_average_decay) if config.weight_average_decay > 0 else None
    state = PriorState(
        model, opt, gen, averaged, device, _fingerprint(config, codebook_size, q, held_out, train_flats, val_flats),
        schedule={"warmup_steps": plan.warmup_steps, "total_steps": plan.total_steps,
                  "steps_per_epoch": plan.steps_per_epoch, "time_budget_s": config.time_budget_s})
    ckpt = find_checkpoint(checkpoint, resume, state.expected, emit, "code model")
    n_params = sum(p.numel() for p in model.parameters())
    emit(
        "info",
        message=f"Training the code model ({n_params / 1e6:.2f} M parameters) on {train_data.total} codes "
        f"from {real_files} files" + (f" and {len(varied_flats)} varied copies of them" if varied_flats else "") + "; "
        + (f"checking on {val_data.total} codes from {len(val_flats)} held-back files." if held_out
           else "no files are held back, so memorisation cannot be measured."),
        params=n_params, train_tokens=train_data.total, val_tokens=val_data.total, seq_len=plan.seq_len,
        steps_per_epoch=plan.steps_per_epoch, planned_steps=plan.total_steps, device=str(device),
    )

    def evaluate(progress: Progress) -> bool:
        """Score both splits, track the best weights, check memorisation. True: early stop."""
        step, s = progress.step, state
        epoch = round(step / plan.steps_per_epoch, 3)  # passes over the training codes so far
        t0 = time.perf_counter()
        s.scored.eval()
        val_loss, val_end_loss = _mean_loss(s.scored, val_data, *val_eval, device, eval_batch)
        train_loss, _ = _mean_loss(s.scored, train_data, *train_eval, device, eval_batch)
        model.train()
        s.eval_seconds += time.perf_counter() - t0
        improved = math.isfinite(val_loss) and val_loss < s.best_val - 1e-4
        if improved:
            s.best_val, s.best_step, s.since_best = val_loss, step, 0
            s.best_weights = {k: v.detach().clone() for k, v in s.scored.state_dict().items()}
        else:
            s.since_best += 1
        gap = val_loss - train_loss
        ratio = perplexity_from_loss(gap)  # validation perplexity over training perplexity
        record = {
            "step": step, "epoch": epoch, "train_loss": finite_or_none(train_loss), "val_loss": finite_or_none(val_loss),
            "val_perplexity": finite_or_none(perplexity_from_loss(val_loss)),
            "train_perplexity": finite_or_none(perplexity_from_loss(train_loss)),
            "gap": finite_or_none(gap), "perplexity_ratio": finite_or_none(ratio),
            "best_val_loss": finite_or_none(s.best_val), "best_step": s.best_step,
        }
        if val_end_loss is not None:
            record["val_end_loss"] = finite_or_none(val_end_loss)
        s.history.append(record)
        emit("eval", **record)
        # Memorisation: held-out score worse than its best for a few checks while training score falls
        # (relative margins, so one noisy check does not count as a trend)
        at_best = next((h for h in s.history if h["step"] == s.best_step), None)
        train_falling = at_best is not None and at_best["train_loss"] is not None and train_loss < at_best["train_loss"] * 0.98
        val_rising = val_loss > s.best_val * 1.01
        if not s.warned_memorise and s.since_best >= MEMORISE_CHECKS and val_rising and train_falling:
            s.warned_memorise = True
            text = memorisation_message(s.since_best, s.best_step)
            s.warning_text = s.warning_text or text
            emit("warning", code="memorising", message=text, step=step, best_step=s.best_step)
        # a large gap alone can be honest difference between files; warn once it stops improving too
        if not s.warned_gap and ratio > GAP_RATIO and s.since_best >= 1 and step > plan.warmup_steps:
            s.warned_gap = True
            text = gap_message(ratio, s.best_step)
            s.warning_text = s.warning_text or text
            emit("warning", code="memorising_gap", message=text, step=step, best_step=s.best_step,
                 ratio=finite_or_none(ratio))
        return s.since_best >= config.patience and step >= plan.warmup_steps

    def train_step(progress: Progress) -> StepOutcome:
        s = state
        t0 = time.perf_counter()
        lr = _lr(config, plan, progress.step, t0 - progress.started)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y, ends, resume = train_data.sample(config.batch_size, gen)
        x, y, ends, resume = (t.to(device, non_blocking=True) for t in (x, y, ends, resume))
        logits, end_logits = model.forward_with_ends(x, resume)
        code_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=-100)
        end_loss = _end_loss(end_logits, ends)
        loss = code_loss if end_loss is None else code_loss + config.clip_end_weight * end_loss
        opt.zero_grad(set_to_none=True)
        loss_value = float(code_loss.detach())  # plotted: the code loss alone, comparable across settings
        grad_ok = False
        if math.isfinite(loss_value):
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.gradient_clip_norm)
            grad_ok = bool(torch.isfinite(norm))
        if not grad_ok:
            opt.zero_grad(set_to_none=True)
            return StepOutcome(finite=False)
        opt.step()
        step = progress.step + 1
        if averaged is not None:
            averaged.update(model, step)
        s.last_loss = loss_value
        dt = time.perf_counter() - t0
        n_tok = int((y != -100).sum())
        s.tps_ema = n_tok / dt if s.tps_ema is None else 0.8 * s.tps_ema + 0.2 * n_tok / dt
        s.step_time_ema = dt if s.step_time_ema is None else 0.8 * s.step_time_ema + 0.2 * dt
        eval_per_step = s.eval_seconds / max(1, len(s.history)) / plan.eval_interval
        eta = (plan.total_steps - step) * (s.step_time_ema + eval_per_step)
        if config.time_budget_s:
            eta = min(eta, max(0.0, config.time_budget_s - progress.elapsed()))
        return StepOutcome(True, dict(epoch=round(step / plan.steps_per_epoch, 3), loss=loss_value, lr=lr,
                                      tokens_per_s=round(s.tps_ema, 1), eta_s=round(eta, 1)))

    model.train()
    schedule = Schedule(max_steps=plan.total_steps, time_budget_s=config.time_budget_s, eval_every=plan.eval_interval,
                        epoch_steps=plan.steps_per_epoch, limit_reason=StopReason.COMPLETED)
    loop = run_training(state, train_step, evaluate, schedule, emit, stop=stop, checkpoint=checkpoint, resume_from=ckpt)
    if state.best_weights is not None:
        model.load_state_dict(state.best_weights)
    elif averaged is not None and loop.steps > 0:
        model.load_state_dict(averaged.model.state_dict())
    model.eval()
    seconds = loop.seconds
    message = stop_sentence(loop.stop, state.best_step, passes=config.max_epochs, budget_s=config.time_budget_s,
                            patience=config.patience)
    emit("info", message=message, stop_reason=loop.stop.value, steps=loop.steps, seconds=round(seconds, 2),
         best_val_loss=finite_or_none(state.best_val), best_step=state.best_step)
    return PriorTrainResult(
        model=model, best_val_loss=state.best_val, best_step=state.best_step, final_train_loss=state.last_loss,
        history=state.history, steps=loop.steps, seconds=seconds, stop_reason=loop.stop, stop=loop.stop,
        message=message, memorisation_warning=state.warning_text, interrupted=loop.interrupted,
        resumed_from=loop.resumed_from,
    )


# --- speed probe -----------------------------------------------------------------------------


def plain_training_step(model: CodePrior, opt: torch.optim.Optimizer, x: torch.Tensor, clip_norm: float) -> None:
    """One optimiser step on full windows x [B, S] (each token its own target, as in train_prior),
    without train_prior's bookkeeping: what speed probes and benchmarks time."""
    logits, end_logits = model.forward_with_ends(x)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x.reshape(-1))
    if end_logits is not None:  # no file ends inside full windows: "not ended" at each step's first token
        ends = torch.full_like(x, -100)
        ends[:, model.num_quantizers :: model.num_quantizers] = 0
        loss = loss + _end_loss(end_logits, ends)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    opt.step()


def speed_probe(config: PriorConfig, codebook_size: int, num_quantizers: int, device="auto", seconds: float = 2.0) -> float:
    """Training tokens per second for this config on this device, from a short run on random codes
    (one warm-up step, then timed steps until `seconds` pass). Leaves the global RNG as it was.
    The batch is capped (4 windows, 1 for hidden sizes over 256) so even the largest tier answers
    within seconds on a CPU; small batches read slightly slow, so the ETA errs long."""
    dev = device if isinstance(device, torch.device) else resolve_device(device or config.device)
    seq_len = config.seq_len(num_quantizers)
    batch = max(1, min(4 if config.hidden_size <= 256 else 1, config.batch_size))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CodePrior.from_config(config, codebook_size, num_quantizers).to(dev).train()
        opt = _optimizer(model, config, dev)
        x = torch.randint(0, codebook_size, (batch, seq_len), device=dev)

        def one_step() -> None:
            plain_training_step(model, opt, x, config.gradient_clip_norm)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)

        one_step()
        n, t0 = 0, time.perf_counter()
        while True:
            one_step()
            n += 1
            if time.perf_counter() - t0 >= seconds:
                break
        return n * batch * seq_len / (time.perf_counter() - t0)


def estimate_training_seconds(config: PriorConfig, num_quantizers: int, train_tokens: int, tokens_per_s: float) -> float:
    """Expected wall time: all planned steps at the probed speed, capped by the time budget."""
    plan = plan_prior_training(config, num_quantizers, train_tokens)
    seconds = plan.total_steps * config.batch_size * plan.seq_len / max(tokens_per_s, 1e-9)
    return min(seconds, config.time_budget_s) if config.time_budget_s else seconds
