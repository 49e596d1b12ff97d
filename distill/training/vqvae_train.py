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
    CheckpointError,
    CheckpointStore,
    ignored_message,
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
from distill.data import MelDataset
from distill.device import resolve_device
from distill.models.vqvae import ConvVQVAE, quantizer_matches_cpu

STAGE = "vqvae"
LOG_EVERY = 10  # optimiser steps between "step" events ...
LOG_SECONDS = 1.0  # ... or this long, whichever comes first (slow steps still draw a live curve)
WARMUP_STEPS = 50
FINAL_LR_FRACTION = 0.1  # cosine decays to this fraction of the peak learning rate
MAX_BAD_STEPS = 5  # consecutive non-finite losses before giving up
INIT_BATCHES = 8  # batches of windows the k-means initialisation sees
LOW_UTILISATION = 0.3
VAL_MAX_FRAMES = 24_000  # validation material cap (~4 min of audio): keeps each eval to about a second
VAL_CHUNK_FRAMES = 4_096  # long validation files are measured in chunks of this many frames
TRAIN_STATS_MAX_FRAMES = 16_384  # training material re-encoded at each eval for codebook statistics
# Augmentation (random gain and mel-band shift of training windows) helps small collections and hurts
# large ones (measured, 3-min budget, held-out ratio to baseline: freedesktop, 25 s of training audio,
# 0.292 -> 0.266; asterisk-en, 22 min, 0.254 -> 0.288). So each window is augmented with a probability
# that falls from AUG_MAX_PROB at AUG_FULL_BELOW_S of training audio to 0 at AUG_NONE_ABOVE_S (log
# scale). With the linear path (freedesktop, 5 min, 1 thread): every window augmented 0.237 but level 2
# used only 79.7 % of its codes on the real training files; none 0.247 (97 %); half 0.235 (81-86 %).
# Larger shifts (±6 bands: 0.281) and mixing two windows (no gain) were tried and left out.
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
    stop_reason: str = ""  # plain words: why training ended
    interrupted: bool = False  # ended by the stop flag: a checkpoint (if any) can continue it
    resumed_from: int | None = None  # the checkpoint step this call continued from


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


def _plain(values: Iterable) -> list:
    return [round(float(v), 6) for v in values]


@torch.no_grad()
def code_histogram(model: ConvVQVAE, chunks: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """[Q, K] code counts of `chunks` encoded in eval mode (no codebook updates, no resets)."""
    was_training = model.training
    model.eval()
    try:
        codes = [model.encode(m.to(device, torch.float32).unsqueeze(0))[0].cpu() for m in chunks]
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
    hist = level_histograms(codes, model.quantizer.codebook_size)
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
    settings = {k: v for k, v in asdict(config).items() if k not in ("time_budget_s", "device")}
    return settings_fingerprint(settings, n_mels, [int(m.shape[-1]) for m in train_mels],
                                [int(m.shape[-1]) for m in val_mels], floor)


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
    t0 = time.perf_counter()

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
    fingerprint = _fingerprint(config, n_mels, train_mels, val_mels, dataset.audio_config.log_floor)
    if checkpoint is not None and not resume:
        checkpoint.clear()  # a fresh start: never continue some older training of this stage later

    with torch.random.fork_rng(devices=[]):  # seed without disturbing the caller's RNG
        torch.manual_seed(config.seed)
        model = ConvVQVAE(n_mels, config)
        sampler = WindowSampler(train_mels, config.window_frames, pad_value, config.seed)
        opt = torch.optim.AdamW(_param_groups(model), lr=config.learning_rate, weight_decay=config.weight_decay)
        ckpt, problems = None, []
        if resume and checkpoint is not None:
            ckpt, problems = _load_checkpoint(checkpoint, model, opt, sampler, device, fingerprint)
        if ckpt is not None:
            history.extend(ckpt.meta.get("history") or [])
            model.load_state_dict(_strip(ckpt.tensors, "model."))
        elif init_state is not None:
            model.load_state_dict(init_state)
        else:
            model.set_normalization(*_norm_stats(train_mels))
            model.init_linear_path(train_mels)
        if problems:
            emit("warning", message=ignored_message(problems, "sound-model"), problems=problems[:5])
        if ckpt is None and config.kmeans_init and not model.quantizer.initted:
            sample = torch.cat([sampler.batch(config.batch_size) for _ in range(INIT_BATCHES)])
            model.init_codebooks(sample)  # on CPU: deterministic
        if device.type == "mps" and not quantizer_matches_cpu(model, device):
            emit("warning", message="The Apple GPU picked different codes than the CPU on a test input, "
                 "so this training runs on the CPU instead (slower, but the codes stay reliable).")
            device = torch.device("cpu")
        model.to(device)
        model.train()
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
        budget = config.time_budget_s
        warmup = max(1, min(WARMUP_STEPS, config.max_steps // 10))
        best_state = copy.deepcopy(model.state_dict())
        best_val, best_step = math.inf, 0
        step, bad_streak = 0, 0
        stopped_early, stop_reason = False, ""
        k = config.codebook_size
        resets = torch.zeros(config.num_quantizers)
        warned_low = [False] * config.num_quantizers
        last_eval_step = -1
        last_saved_step = 0  # step 0 is the untouched start: nothing to save
        resumed_from = None
        if ckpt is not None:
            meta = ckpt.meta
            restore_optimizer(opt, ckpt.tensors, meta["optimizer"])
            best_state = {k_: v.to(device) for k_, v in _strip(ckpt.tensors, "best.").items()}
            step = last_saved_step = resumed_from = int(meta["step"])
            best_val = float(meta["best_val_loss"]) if meta.get("best_val_loss") is not None else math.inf
            best_step, bad_streak = int(meta["best_step"]), int(meta["bad_streak"])
            resets = torch.tensor([float(x) for x in meta["codes_reset"]])
            warned_low = [bool(x) for x in meta["warned_low"]]
            last_eval_step = int(meta["last_eval_step"])
            t0 = time.perf_counter() - float(meta["seconds"])  # the budget counts the time already spent
            restore_rng(ckpt.tensors, device, {"sampler": sampler.gen})  # last: setup above drew from torch's RNG
            emit("resumed", step=step, seconds=round(float(meta["seconds"]), 3), from_checkpoint=True)
        elif resume:
            emit("resumed", step=0, seconds=0.0, from_checkpoint=False,
                 message="No usable checkpoint of the sound model was found, so it trains again from the start.")

        def run_eval() -> None:
            nonlocal best_val, best_step, best_state, last_eval_step
            ev = evaluate(model, chunks, device)
            improved = math.isfinite(ev["val_loss"]) and ev["val_loss"] < best_val
            if improved:
                best_val, best_step = ev["val_loss"], step
                best_state = copy.deepcopy(model.state_dict())
            dead = [int((lvl.cluster_size < lvl.threshold).sum()) for lvl in model.quantizer.levels]
            train_hist = code_histogram(model, train_chunks, device)
            used = utilisation(train_hist)
            emit("eval", step=step, seconds=round(time.perf_counter() - t0, 3), best=improved,
                 utilisation=_plain(used), perplexity=_plain(perplexity(train_hist)), dead_codes=dead,
                 codes_reset=_plain(resets), **ev)
            for q, u in enumerate(used.tolist()):
                if u < LOW_UTILISATION and not warned_low[q]:
                    emit("warning", step=step, level=q, message=(
                        f"Level {q + 1} of the codebook uses only {u:.0%} of its {k} codes on the training "
                        "files: it is collapsing onto a few sounds. Unused codes are re-seeded automatically; "
                        "if this persists, try fewer levels or a smaller codebook."))
                warned_low[q] = u < LOW_UTILISATION
            last_eval_step = step

        def save_checkpoint(wait: bool = False) -> None:
            nonlocal last_saved_step, checkpoint
            if checkpoint is None or step == last_saved_step:
                return
            opt_tensors, opt_meta = optimizer_tensors(opt)
            rng = rng_tensors(device, {"sampler": sampler.gen})
            tensors = {**{f"model.{n}": v for n, v in model.state_dict().items()},
                       **{f"best.{n}": v for n, v in best_state.items()}, **opt_tensors, **rng}
            meta = {"stage": STAGE, "step": step, "seconds": round(time.perf_counter() - t0, 3),
                    "best_val_loss": best_val if math.isfinite(best_val) else None, "best_step": best_step,
                    "bad_streak": bad_streak, "codes_reset": resets.tolist(), "warned_low": warned_low,
                    "last_eval_step": last_eval_step, "fingerprint": fingerprint, "optimizer": opt_meta, "rng": rng_record(rng),
                    "schedule": {"warmup_steps": warmup, "max_steps": config.max_steps, "time_budget_s": budget},
                    "history": history}
            try:
                checkpoint.save(tensors, meta, wait=wait)  # at evaluations: written in the background
                last_saved_step = step
            except OSError as exc:  # a checkpoint is insurance: losing it must not stop the training
                emit("warning", step=step, message=f"Could not save a checkpoint ({exc}); training goes on, "
                     "but an interruption now would lose more work.")
                checkpoint = None

        last_step_event = time.perf_counter()
        while True:
            elapsed = time.perf_counter() - t0
            if stop is not None and stop.is_set():
                stopped_early, stop_reason = True, "stopped on request"
                break
            if step >= config.max_steps:
                stop_reason = f"reached the step limit ({config.max_steps})"
                break
            if budget is not None and elapsed >= budget:
                stop_reason = f"used the time budget ({budget:.0f} s)"
                break
            progress = step / max(config.max_steps, 1)
            if budget:
                progress = max(progress, elapsed / budget)
            lr = _lr_at(step, progress, config.learning_rate, warmup)
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
                bad_streak += 1
                emit("warning", step=step, message=(
                    f"Step {step}: the loss was not a finite number, so this step was skipped "
                    f"({bad_streak} in a row)."))
                if bad_streak >= MAX_BAD_STEPS:
                    stopped_early = True
                    stop_reason = (f"training became numerically unstable (no usable loss {MAX_BAD_STEPS} steps "
                                   "in a row); kept the last good weights")
                    break
                step += 1
                continue
            bad_streak = 0
            opt.step()
            step += 1
            resets += out.stats["codes_reset"]
            now = time.perf_counter()
            if step % LOG_EVERY == 0 or step == 1 or now - last_step_event >= LOG_SECONDS:
                last_step_event = now
                emit("step", step=step, seconds=round(now - t0, 3), loss=float(loss.detach()),
                     recon_loss=float(recon_loss.detach()), mel_l1=float(l1.detach()), commit_loss=float(out.commit_loss.detach()), lr=lr,
                     utilisation=_plain(out.stats["utilisation"]), perplexity=_plain(out.stats["perplexity"]),
                     codes_reset=_plain(resets))
            if step % max(config.eval_every, 1) == 0:
                run_eval()
                save_checkpoint()

        interrupted = stop_reason == "stopped on request"
        if interrupted:
            save_checkpoint(wait=True)  # before the closing evaluation, which an uninterrupted run would not do here
        if checkpoint is not None:
            try:
                checkpoint.wait()  # a background save still writing: done before anyone reads the files
            except OSError as exc:
                emit("warning", step=step, message=f"Could not save a checkpoint ({exc}).")
        if step != last_eval_step:
            run_eval()
        model.load_state_dict(best_state)
        model.eval()
        seconds = time.perf_counter() - t0
        emit("info", step=step, seconds=round(seconds, 3), best_step=best_step,
             best_val_loss=best_val if math.isfinite(best_val) else None,
             message=f"Codec training finished after {step} steps ({seconds:.0f} s): {stop_reason}.")
    return VQVAETrainResult(
        model=model, best_val_loss=best_val, best_step=best_step, steps=step, seconds=seconds,
        history=history, device=str(device), stopped_early=stopped_early, stop_reason=stop_reason,
        interrupted=interrupted, resumed_from=resumed_from,
    )


def _strip(tensors: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _load_checkpoint(store: CheckpointStore, model: ConvVQVAE, opt, sampler: WindowSampler, device: torch.device,
                     fingerprint: str):
    """The newest checkpoint that fits this model, data and settings (checked before reading tensors)."""
    state = model.state_dict()

    def expected(meta: dict) -> dict:
        if meta.get("stage") != STAGE:
            raise CheckpointError("it is not a sound-model checkpoint")
        if meta.get("fingerprint") != fingerprint:
            raise CheckpointError("it was made with other settings or other files")
        return {**prefixed_spec("model.", state), **prefixed_spec("best.", state),
                **optimizer_spec(opt, meta.get("optimizer") or {}),
                **rng_spec(meta.get("rng") or {}, {"sampler": sampler.gen})}

    ckpt, problems = store.load(expected)
    return ckpt, problems
