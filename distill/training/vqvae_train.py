"""train_vqvae: fit the ConvVQVAE codec on a MelDataset's training files.

Random fixed-length windows from the training files (files picked in proportion to their length, short
ones padded with silence), full held-out files for validation, a multi-resolution log-mel loss plus
the commitment loss, AdamW with gradient clipping and a warm-up + cosine learning rate that follows
whichever runs out first, max_steps or the time budget. The best validation weights are kept.

Device: config.device ("auto": CUDA, then MPS, then CPU). On MPS the quantiser is checked once against
CPU on a fixed input (`quantizer_matches_cpu`); if it disagrees, the whole run falls back to CPU (a
codec whose codes depend on the device would break "same audio -> same codes"), with a warning event.

Reproducibility: with the same seed and time_budget_s=None, a CPU run gives identical weights. The
time budget makes the step count (and the learning-rate schedule) depend on the machine's speed.
Resume: with a `checkpoint` store, the whole training state (weights, codebooks, best weights, AdamW
moments, the window sampler's and torch's RNG states, step, elapsed time, counters, history) is saved
at every evaluation and when stopped; `resume=True` continues from the newest complete checkpoint and,
with time_budget_s=None, ends with the same weights as an uninterrupted run (bit-identical on CPU).
The time budget counts the time already spent. `init_state` (weights only) is the older, lighter path.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

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
from distill.codes import level_histograms, perplexity, utilisation
from distill.config import VQVAEConfig
from distill.events import Stage
from distill.data import MelDataset
from distill.device import resolve_device
from distill.models.vqvae import ConvVQVAE, quantizer_matches_cpu
from distill.training.loop import (  # noqa: F401  (MAX_BAD_STEPS: read by callers of this module)
    MAX_BAD_STEPS,
    Progress,
    Schedule,
    StepOutcome,
    StopReason,
    find_checkpoint,
    finite_or_none,
    run_training,
    stop_words,
    strip_prefix,
)

STAGE = Stage.VQVAE
LOG_EVERY = 10  # optimiser steps between "step" events ...
LOG_SECONDS = 1.0  # ... or this long, whichever comes first (slow steps still draw a live curve)
WARMUP_STEPS = 50
FINAL_LR_FRACTION = 0.1  # cosine decays to this fraction of the peak learning rate
INIT_BATCHES = 8  # batches of windows the k-means initialisation sees
LOW_UTILISATION = 0.3
VAL_MAX_FRAMES = 24_000  # validation material cap (~4 min of audio): keeps each eval to about a second
VAL_CHUNK_FRAMES = 4_096  # long validation files are measured in chunks of this many frames
# Share of the codec's time budget kept for fitting its spectral detail after training (8 s of 162 on
# drascula's 6-minute budget; its fit takes 6-7 s); twice the codec's training time changed none of its figures (README).
SPECTRAL_FIT_SHARE = 0.05
TRAIN_STATS_MAX_FRAMES = 16_384  # training material re-encoded at each eval for codebook statistics
# Augmentation (random gain and mel-band shift of training windows) helps small collections and hurts
# large ones (README), so each window is augmented with a probability that falls from AUG_MAX_PROB at
# AUG_FULL_BELOW_S of training audio to 0 at AUG_NONE_ABOVE_S (log scale).
AUG_GAIN = 1.0  # random gain of exp(±1) in power (±4.3 dB)
AUG_SHIFT = 2  # random shift of up to ±2 mel bands
AUG_MAX_PROB = 0.5
AUG_FULL_BELOW_S = 60.0
AUG_NONE_ABOVE_S = 600.0
LINEAR_PATH_LR_SCALE = 0.1
DIFF_WEIGHT = 0.25
POOLED_WEIGHT = 0.25


@dataclass
class VQVAETrainResult:
    model: ConvVQVAE  # best-validation weights, eval mode, left on `device`
    best_val_loss: float
    best_step: int
    steps: int
    seconds: float
    history: list[dict] = field(default_factory=list)
    device: str = "cpu"
    stopped_early: bool = False  # the stop flag, or training became numerically unstable
    stop_reason: str = ""  # plain words: why training ended (stop_words of `stop`)
    interrupted: bool = False  # ended by the stop flag: a checkpoint (if any) can continue it
    resumed_from: int | None = None  # the checkpoint step this call continued from
    stop: StopReason = StopReason.COMPLETED


# --- loss -----------------------------------------------------------------------------------


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """pred, target [B, n_mels, F] log-mel -> (loss, plain log-mel L1).

    L1 on the frames, plus L1 on their time differences (onsets, decays) and on a 4×4 pooled version
    (coarse spectral envelope), so the codec is judged at more than one resolution."""
    l1 = (pred - target).abs().mean()
    if pred.shape[-1] > 1:
        d_l1 = ((pred[..., 1:] - pred[..., :-1]) - (target[..., 1:] - target[..., :-1])).abs().mean()
    else:
        d_l1 = torch.zeros_like(l1)
    if pred.shape[-1] >= 4 and pred.shape[-2] >= 4:
        p_l1 = (F.avg_pool2d(pred.unsqueeze(1), 4) - F.avg_pool2d(target.unsqueeze(1), 4)).abs().mean()
    else:
        p_l1 = torch.zeros_like(l1)
    return l1 + DIFF_WEIGHT * d_l1 + POOLED_WEIGHT * p_l1, l1


# --- data -----------------------------------------------------------------------------------


class WindowSampler:
    """Random [n_mels, window] crops; a file's chance is proportional to its length (every frame is
    equally likely), files shorter than the window are padded with silence on the right."""

    def __init__(self, mels: list[torch.Tensor], window: int, pad_value: float, seed: int):
        if not mels:
            raise ValueError("no training files")
        self.mels, self.window, self.pad_value = mels, window, pad_value
        self.weights = torch.tensor([float(m.shape[-1]) for m in mels])
        self.gen = torch.Generator().manual_seed(seed)

    def batch(self, batch_size: int) -> torch.Tensor:  # -> [B, n_mels, window]
        files = torch.multinomial(self.weights, batch_size, replacement=True, generator=self.gen)
        out = []
        for i in files.tolist():
            m = self.mels[i]
            frames = m.shape[-1]
            if frames >= self.window:
                start = int(torch.randint(0, frames - self.window + 1, (1,), generator=self.gen))
                out.append(m[:, start : start + self.window])
            else:
                out.append(F.pad(m, (0, self.window - frames), value=self.pad_value))
        return torch.stack(out).to(torch.float32)


def augment_probability(train_seconds: float) -> float:
    """Chance that a training window is augmented, from the amount of training audio."""
    if train_seconds <= AUG_FULL_BELOW_S:
        return AUG_MAX_PROB
    if train_seconds >= AUG_NONE_ABOVE_S:
        return 0.0
    return AUG_MAX_PROB * math.log(AUG_NONE_ABOVE_S / train_seconds) / math.log(AUG_NONE_ABOVE_S / AUG_FULL_BELOW_S)


def augment(x: torch.Tensor, floor: float, gen: torch.Generator, prob: float = 1.0,
            gain: float = AUG_GAIN, shift: int = AUG_SHIFT) -> torch.Tensor:
    """x [B, n_mels, W] log-mel -> each window, with probability `prob`, a little louder or quieter
    and a little higher or lower. Gain scales the power (so the floor stays a floor); the shift moves
    whole mel bands, repeating the edge band."""
    b, m, _ = x.shape
    chosen = torch.rand(b, generator=gen) < prob
    g = (torch.rand(b, generator=gen) * 2 - 1) * gain
    ks = torch.randint(-shift, shift + 1, (b,), generator=gen)
    if prob <= 0 or not bool(chosen.any()):
        return x
    out = x.clone()
    for i in torch.nonzero(chosen).flatten().tolist():
        power = (torch.exp(x[i]) - floor).clamp_min(0.0)
        y = torch.log(power * math.exp(float(g[i])) + floor)
        src = (torch.arange(m) - int(ks[i])).clamp(0, m - 1)
        out[i] = y[src]
    return out


def validation_chunks(mels: list[torch.Tensor], max_frames: int = VAL_MAX_FRAMES, chunk: int = VAL_CHUNK_FRAMES) -> list[torch.Tensor]:
    """Deterministic validation material: whole files in chunks of at most `chunk` frames, and at most
    `max_frames` in all (evenly spaced chunks when there is more)."""
    pieces = [m[:, s : s + chunk] for m in mels for s in range(0, m.shape[-1], chunk)]
    total = sum(p.shape[-1] for p in pieces)
    if total <= max_frames:
        return pieces
    keep = max(1, int(len(pieces) * max_frames / total))
    step = len(pieces) / keep
    return [pieces[int(i * step)] for i in range(keep)]


def _norm_stats(mels: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-mel-bin mean and std over all frames of the training files (float64 running sums)."""
    n = sum(m.shape[-1] for m in mels)
    s = sum(m.to(torch.float64).sum(-1) for m in mels)
    s2 = sum(m.to(torch.float64).square().sum(-1) for m in mels)
    mean = s / n
    std = (s2 / n - mean.square()).clamp_min(0).sqrt()
    return mean.float(), std.float()


# --- helpers --------------------------------------------------------------------------------


def estimate_vqvae_memory_bytes(config: VQVAEConfig, n_mels: int) -> int:
    """Rough peak training memory: weights + grads + 2 AdamW moments, plus saved activations."""
    model = ConvVQVAE(n_mels, config)
    params = model.num_parameters()
    stages = int(math.log2(config.downsample))
    # activation values saved per window frame: input/output convs at full rate, and per stage the
    # stride conv + res blocks (3 saved tensors each) at its rate, for encoder and decoder
    per_frame = 4 * config.hidden_channels + 2 * n_mels
    for s in range(1, stages + 1):
        per_frame += 2 * config.hidden_channels * (2 + 3 * config.num_res_blocks) / 2**s
    activations = config.batch_size * config.window_frames * per_frame * 2  # forward + backward
    return int(params * 4 * 4 + activations * 4 + 64 * 1024**2)  # + framework overhead


def _param_groups(model: ConvVQVAE) -> list[dict]:
    """The linear path starts at its best linear solution (principal components): it moves at
    LINEAR_PATH_LR_SCALE of the learning rate, so the first large steps do not throw that away."""
    linear, rest = [], []
    for name, p in model.named_parameters():
        (linear if name.startswith(("enc_linear.", "dec_linear.")) else rest).append(p)
    groups = [{"params": rest, "lr_scale": 1.0}]
    if linear:
        groups.append({"params": linear, "lr_scale": LINEAR_PATH_LR_SCALE})
    return groups


def _lr_at(step: int, progress: float, peak: float, warmup: int = WARMUP_STEPS) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(max(progress, 0.0), 1.0)
    return peak * (FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress)))


def low_use_message(level: int, coarse_levels: int, used: float, codebook_size: int) -> str:
    """The warning for a level that uses under LOW_UTILISATION of its codes on the training files."""
    if level < coarse_levels:
        return (f"Level {level + 1} of the codebook uses only {used:.0%} of its {codebook_size} codes on the training "
                "files: it is collapsing onto a few sounds. Unused codes are re-seeded automatically; "
                "if this persists, try fewer levels or a smaller codebook.")
    return (f"Detail level {level + 1} uses only {used:.0%} of its {codebook_size} codes on the training files: "
            "there is less fine detail in this material than the codec has room for. Unused codes are re-seeded "
            "automatically; if this persists, try fewer detail levels.")


def _plain(values: Iterable) -> list:
    return [round(float(v), 6) for v in values]


@torch.no_grad()
def code_histogram(model: ConvVQVAE, chunks: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """[levels, K] code counts of `chunks` (every level, detail too, not the spectral detail) encoded in
    eval mode (no codebook updates, no resets)."""
    was_training = model.training
    model.eval()
    try:
        codes = [c.cpu() for c in model.encode_files([m.to(device, torch.float32) for m in chunks], detail=True, spectral=False)]
    finally:
        model.train(was_training)
    return level_histograms(codes, model.quantizer.codebook_size)


@torch.no_grad()
def evaluate(model: ConvVQVAE, chunks: list[torch.Tensor], device: torch.device) -> dict:
    """Validation loss, log-mel L1 and per-level code statistics over `chunks` (eval mode, no EMA)."""
    was_training = model.training
    model.eval()
    loss_sum, l1_sum, frames = 0.0, 0.0, 0
    codes = []
    try:
        for m in chunks:
            x = m.to(device, torch.float32).unsqueeze(0)
            out = model(x)
            loss, l1 = reconstruction_loss(out.recon, x)
            loss_sum += float(loss) * m.shape[-1]
            l1_sum += float(l1) * m.shape[-1]
            frames += m.shape[-1]
            codes.append(out.codes[0].cpu())
    finally:
        model.train(was_training)
    hist = level_histograms(codes, model.quantizer.codebook_size)[: model.coarse_levels]
    return {
        "val_loss": loss_sum / max(frames, 1),
        "val_mel_l1": l1_sum / max(frames, 1),
        "val_utilisation": _plain(utilisation(hist)),
        "val_perplexity": _plain(perplexity(hist)),
    }


# --- training -------------------------------------------------------------------------------


def _fingerprint(config: VQVAEConfig, n_mels: int, train_mels: list, val_mels: list, floor: float) -> str:
    """What a checkpoint must share with this call to continue it: settings (except the time
    budget and device, which a resume may change) and the shape of the data."""
    # (the spectral detail is fitted after training, not by the steps a checkpoint continues; left out,
    # checkpoints written before it existed still match)
    settings = {k: v for k, v in asdict(config).items()
                if k not in ("time_budget_s", "device", "spectral_levels", "spectral_bands")}
    if not settings.get("detail_levels"):  # as checkpoints written before detail levels existed have it
        settings.pop("detail_levels", None)
    return settings_fingerprint(settings, n_mels, [int(m.shape[-1]) for m in train_mels],
                                [int(m.shape[-1]) for m in val_mels], floor)


@dataclass
class VQVAEState:
    """Everything train_vqvae saves to continue exactly where it left off (the loop adds the step,
    the clock and its counters): the live objects, the best weights and the codebook watch."""

    model: ConvVQVAE
    opt: torch.optim.Optimizer
    sampler: WindowSampler
    device: torch.device
    fingerprint: str
    schedule: dict  # the plan, recorded for whoever reads the checkpoint
    best_weights: dict
    history: list[dict]  # every event of the stage, across resumes
    resets: torch.Tensor  # [Q] codes re-seeded so far
    warned_low: list[bool]  # per level: the low-utilisation warning is standing
    best_val: float = math.inf
    best_step: int = 0

    def expected(self, meta: dict) -> dict:
        """The tensors a checkpoint must hold to fit this model, data and settings (checked before
        any tensor is read)."""
        if meta.get("stage") != STAGE:
            raise CheckpointError("it is not a sound-model checkpoint")
        if meta.get("fingerprint") != self.fingerprint:
            raise CheckpointError("it was made with other settings or other files")
        state = self.model.state_dict()
        return {**prefixed_spec("model.", state), **prefixed_spec("best.", state),
                **optimizer_spec(self.opt, meta.get("optimizer") or {}),
                **rng_spec(meta.get("rng") or {}, {"sampler": self.sampler.gen})}

    def to_checkpoint(self) -> tuple[dict[str, torch.Tensor], dict]:
        opt_tensors, opt_meta = optimizer_tensors(self.opt)
        rng = rng_tensors(self.device, {"sampler": self.sampler.gen})
        tensors = {**{f"model.{n}": v for n, v in self.model.state_dict().items()},
                   **{f"best.{n}": v for n, v in self.best_weights.items()}, **opt_tensors, **rng}
        meta = {"stage": STAGE, "fingerprint": self.fingerprint, "optimizer": opt_meta, "rng": rng_record(rng),
                "schedule": self.schedule, "best_val_loss": finite_or_none(self.best_val), "best_step": self.best_step,
                "codes_reset": self.resets.tolist(), "warned_low": self.warned_low, "history": self.history}
        return tensors, meta

    def restore(self, ckpt: Checkpoint) -> None:
        meta, tensors = ckpt.meta, ckpt.tensors
        self.model.load_state_dict(strip_prefix(tensors, "model."))
        restore_optimizer(self.opt, tensors, meta["optimizer"])
        self.best_weights = {k: v.to(self.device) for k, v in strip_prefix(tensors, "best.").items()}
        self.history[:0] = meta.get("history") or []  # before this call's events
        self.best_val = float(meta["best_val_loss"]) if meta.get("best_val_loss") is not None else math.inf
        self.best_step = int(meta["best_step"])
        self.resets = torch.tensor([float(x) for x in meta["codes_reset"]])
        self.warned_low = [bool(x) for x in meta["warned_low"]]
        restore_rng(tensors, self.device, {"sampler": self.sampler.gen})  # last: setup drew from torch's RNG


def train_vqvae(
    dataset: MelDataset,
    config: VQVAEConfig,
    callbacks: list[Callable[[dict], None]] | None = None,
    stop=None,
    init_state: dict | None = None,
    checkpoint: CheckpointStore | None = None,
    resume: bool = False,
) -> VQVAETrainResult:
    """Train the codec; returns the best-validation model (eval mode) and the event history.

    checkpoint: where to save the training state (at every evaluation and when stopped); without
    resume its old checkpoints are removed first. resume: continue from its newest usable one."""
    callbacks = list(callbacks or [])
    history: list[dict] = []
    t0 = time.perf_counter()  # the time budget counts the setup too

    def emit(kind: str, **payload) -> None:
        event = {"stage": STAGE, "kind": kind, **payload}
        history.append(event)
        for cb in callbacks:
            cb(event)

    train_mels = dataset.train_mels() or list(dataset.mels)
    val_mels = dataset.val_mels() or train_mels  # a single file is both (nothing held out)
    if not train_mels:
        raise ValueError("the dataset has no files to train on")
    n_mels = int(train_mels[0].shape[0])
    device = resolve_device(config.device)
    pad_value = math.log(dataset.audio_config.log_floor)  # log-mel of silence
    budget = config.time_budget_s
    if budget and config.spectral_levels:  # the spectral detail's fit comes out of the codec's time
        budget *= 1.0 - SPECTRAL_FIT_SHARE
    warmup = max(1, min(WARMUP_STEPS, config.max_steps // 10))

    with torch.random.fork_rng(devices=[]):  # seed without disturbing the caller's RNG
        torch.manual_seed(config.seed)
        model = ConvVQVAE(n_mels, config)
        sampler = WindowSampler(train_mels, config.window_frames, pad_value, config.seed)
        opt = torch.optim.AdamW(_param_groups(model), lr=config.learning_rate, weight_decay=config.weight_decay)
        state = VQVAEState(
            model, opt, sampler, device, _fingerprint(config, n_mels, train_mels, val_mels, dataset.audio_config.log_floor),
            schedule={"warmup_steps": warmup, "max_steps": config.max_steps, "time_budget_s": budget},
            best_weights={}, history=history, resets=torch.zeros(config.num_quantizers + config.detail_levels),
            warned_low=[False] * (config.num_quantizers + config.detail_levels))
        ckpt = find_checkpoint(checkpoint, resume, state.expected, emit, "sound model")
        if ckpt is not None:
            model.load_state_dict(strip_prefix(ckpt.tensors, "model."))  # now: the device check below uses them
        elif init_state is not None:
            model.load_state_dict(init_state)
        else:
            model.set_normalization(*_norm_stats(train_mels))
            model.init_linear_path(train_mels)
        if ckpt is None and config.kmeans_init and not model.quantizer.initted:
            sample = torch.cat([sampler.batch(config.batch_size) for _ in range(INIT_BATCHES)])
            model.init_codebooks(sample)  # on CPU: deterministic
        if device.type == "mps" and not quantizer_matches_cpu(model, device):
            emit("warning", message="The Apple GPU picked different codes than the CPU on a test input, "
                 "so this training runs on the CPU instead (slower, but the codes stay reliable).")
            device = state.device = torch.device("cpu")
        model.to(device)
        model.train()
        state.best_weights = copy.deepcopy(model.state_dict())
        hop_s = dataset.audio_config.hop_length / dataset.audio_config.sample_rate
        aug_prob = augment_probability(sum(m.shape[-1] for m in train_mels) * hop_s)
        checking = (f"checking on {len(val_mels)} held-out file(s)" if dataset.val_index
                    else "checking on the same files (nothing is held out)")
        emit("info", message=f"Training the sound codec ({model.num_parameters() / 1e6:.1f} M parameters) on "
             f"{len(train_mels)} file(s), {checking}.",
             device=str(device), parameters=model.num_parameters(), train_files=len(train_mels),
             val_files=len(val_mels), augment_probability=round(aug_prob, 3))

        chunks = validation_chunks(val_mels)
        # codebook use is judged on training material encoded as extraction will see it: counting
        # training-batch codes instead would flatter it (a re-seeded code is used by the vector it sits on)
        train_chunks = validation_chunks(train_mels, max_frames=TRAIN_STATS_MAX_FRAMES)
        k, q_coarse = config.codebook_size, config.num_quantizers

        def evaluate_now(progress: Progress) -> bool:
            s, step = state, progress.step
            ev = evaluate(model, chunks, device)
            improved = math.isfinite(ev["val_loss"]) and ev["val_loss"] < s.best_val
            if improved:
                s.best_val, s.best_step = ev["val_loss"], step
                s.best_weights = copy.deepcopy(model.state_dict())
            dead = [int((lvl.cluster_size < lvl.threshold).sum()) for lvl in model.quantizer.levels]
            train_hist = code_histogram(model, train_chunks, device)
            used = utilisation(train_hist)
            # the sequence model's levels one by one; the detail levels as one list (they are many)
            detail = {"detail_utilisation": _plain(used[q_coarse:])} if len(used) > q_coarse else {}
            emit("eval", step=step, seconds=round(progress.elapsed(), 3), best=improved,
                 utilisation=_plain(used[:q_coarse]), perplexity=_plain(perplexity(train_hist[:q_coarse])),
                 dead_codes=dead[:q_coarse], codes_reset=_plain(s.resets[:q_coarse]), **detail, **ev)
            for q, u in enumerate(used.tolist()):
                low = u < LOW_UTILISATION
                # one standing warning at most for the detail levels: they are many, and alike
                if low and not s.warned_low[q] and (q < q_coarse or not any(s.warned_low[q_coarse:])):
                    emit("warning", step=step, level=q, message=low_use_message(q, q_coarse, u, k))
                s.warned_low[q] = low
            return False  # no early stopping: the codec trains to its limit

        last_step_event = time.perf_counter()

        def train_step(progress: Progress) -> StepOutcome:
            nonlocal last_step_event
            done = progress.step / max(config.max_steps, 1)
            if budget:
                done = max(done, progress.elapsed() / budget)
            lr = _lr_at(progress.step, done, config.learning_rate, warmup)
            for group in opt.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            x = sampler.batch(config.batch_size)
            x = augment(x, dataset.audio_config.log_floor, sampler.gen, aug_prob)
            x = x.to(device)
            out = model(x)
            recon_loss, l1 = reconstruction_loss(out.recon, x)
            loss = recon_loss + config.commitment_weight * out.commit_loss
            opt.zero_grad(set_to_none=True)
            finite = bool(torch.isfinite(loss))
            if finite:
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.gradient_clip_norm)
                finite = bool(torch.isfinite(grad_norm))
            if not finite:
                opt.zero_grad(set_to_none=True)
                return StepOutcome(finite=False)
            opt.step()
            state.resets += out.stats["codes_reset"]
            step, now = progress.step + 1, time.perf_counter()
            if not (step % LOG_EVERY == 0 or step == 1 or now - last_step_event >= LOG_SECONDS):
                return StepOutcome(finite=True)
            last_step_event = now
            return StepOutcome(True, dict(
                seconds=round(now - progress.started, 3), loss=float(loss.detach()), recon_loss=float(recon_loss.detach()),
                mel_l1=float(l1.detach()), commit_loss=float(out.commit_loss.detach()), lr=lr,
                utilisation=_plain(out.stats["utilisation"][:q_coarse]),
                perplexity=_plain(out.stats["perplexity"][:q_coarse]), codes_reset=_plain(state.resets[:q_coarse])))

        schedule = Schedule(max_steps=config.max_steps, time_budget_s=budget, eval_every=config.eval_every,
                            limit_reason=StopReason.STEP_LIMIT, evaluate_untrained=True)
        loop = run_training(state, train_step, evaluate_now, schedule, emit, stop=stop, checkpoint=checkpoint,
                            resume_from=ckpt, started=t0)
        model.load_state_dict(state.best_weights)
        model.eval()
        # every file whose codes will be extracted, the codec's validation files too: moved by the codec's
        # 15 training files alone (freedesktop), codes fitted those and held-out L1 rose 0.147 -> 0.154;
        # by all 22, 0.147 either way (README)
        moved = model.refresh_unused_codes(list(dataset.mels), seed=config.seed)
        if sum(moved):  # the returned model's validation loss is what the result reports
            before, state.best_val = state.best_val, evaluate(model, chunks, device)["val_loss"]
            emit("info", codes_moved=moved, val_loss_before=finite_or_none(before), val_loss=finite_or_none(state.best_val),
                 message=f"{sum(moved)} of the codec's codes were not used by any of your training files; they now "
                 "split its most crowded codes, so they add detail where your sounds are.")
        if model.spectral is not None:
            fit_t0 = time.perf_counter()
            left = model.fit_spectral_detail(list(dataset.mels), seed=config.seed)
            emit("info", spectral_levels=config.spectral_levels, spectral_seconds=round(time.perf_counter() - fit_t0, 3),
                 spectral_left_l1=left,
                 message=f"Fitted {config.spectral_levels} levels of spectral detail to what the codec's decoder leaves "
                 "out of your sounds, so a sound heard through its codes keeps more of its own texture.")
        seconds = loop.seconds
        words = stop_words(loop.stop, max_steps=config.max_steps, budget_s=budget)
        emit("info", step=loop.steps, seconds=round(seconds, 3), best_step=state.best_step,
             best_val_loss=finite_or_none(state.best_val),
             message=f"Codec training finished after {loop.steps} steps ({seconds:.0f} s): {words}.")
    return VQVAETrainResult(
        model=model, best_val_loss=state.best_val, best_step=state.best_step, steps=loop.steps, seconds=seconds,
        history=history, device=str(device), stopped_early=loop.stop in (StopReason.STOPPED, StopReason.NON_FINITE),
        stop_reason=words, stop=loop.stop, interrupted=loop.interrupted, resumed_from=loop.resumed_from,
    )
