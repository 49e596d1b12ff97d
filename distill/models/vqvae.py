"""ConvVQVAE: log-mel frames -> discrete codes [T', Q] -> log-mel frames.

    mel [B, n_mels, F] ─normalise─▶ Encoder (1-D convs over time, mel bins as channels, time ÷ downsample)
      ─▶ z [B, D, T'] ─▶ ResidualVQ (Q + detail_levels levels of K codes, EMA codebooks) ─▶ codes [B, T', Q]
      ─▶ Decoder (mirror of the encoder) ─▶ mel [B, n_mels, F]

The first Q levels are what the sequence model learns; the detail levels after them quantise what those
leave, finer and finer, so a sound's own round trip keeps its detail (`encode(..., detail=True)` gives
them, `decode` takes codes with or without them). Past them, the spectral detail codes what the decoder
still leaves out of the log-mel (distill/models/spectral_detail.py). Three levels of 128 codes carry ~21 bits per step,
far too little for the partials of dense music; 48 levels come within 5 % of the same network with an
unquantised latent (README).

The residual VQ is our own rather than vector-quantize-pytorch's, because:
  * every bit of state (codebooks, EMA sums, usage counts, init flags, the mel normalisation) is a
    plain buffer in `state_dict()`, so a model round-trips through safetensors with nothing pickled;
  * it is deterministic on CPU given torch's RNG (k-means init and dead-code re-seeding draw from it),
    with no distributed-training branches;
  * it uses only matmul / argmin / index_add / gather, which behave the same on CPU, CUDA and MPS,
    and `quantizer_matches_cpu` checks that on the actual device;
  * the per-level statistics (utilisation, perplexity, dead codes, codes reset) come straight out of it.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from distill.config import VQVAEConfig
from distill.models.nearest import nearest_codes
from distill.models.spectral_detail import SpectralDetail, fit_excerpts

KMEANS_ITERS = 10
BATCH_FRAMES = 4_096  # mel frames per encoder call where files go through together, gaps included (~45 s at 48 kHz)
# A file of more padded frames (~22 s at 48 kHz) always goes through alone, its codes float32's choice
# over its own vectors: it gains nothing from company, and certifying every code of long files made
# drascula's extraction 0.78x the code before's (1.12x without). Shorter files are laid end to end and
# take exact codes (encode_files).
SHORT_FRAMES = BATCH_FRAMES // 2
# Usage counts are kept per this many assigned vectors, whatever the batch size, so that
# `dead_code_threshold` means the same for every batch size and window length: with the default 1.0,
# a code is re-seeded once it serves fewer than 1 in 1024 vectors (on an EMA over ~1/(1-decay) steps).
USAGE_PER_VECTORS = 1024
MAX_DETAIL_LEVELS = 64


@dataclass
class VQVAEOutput:
    recon: torch.Tensor  # [B, n_mels, frames] log-mel
    codes: torch.Tensor  # [B, T', Q] long
    commit_loss: torch.Tensor  # scalar: mean over levels of ||residual - sg(code)||^2
    stats: dict[str, torch.Tensor] = field(default_factory=dict)  # each [Q], see ResidualVQ.forward


# --- codebooks ------------------------------------------------------------------------------


class EMACodebook(nn.Module):
    """One level: K codes of dimension D, updated by exponential moving averages (no gradients).

    `cluster_size` is the EMA of how many of every USAGE_PER_VECTORS vectors chose each code; a code
    whose EMA drops below `dead_code_threshold` is re-seeded onto a random vector of the current batch."""

    def __init__(self, codebook_size: int, dim: int, decay: float, dead_code_threshold: float, eps: float = 1e-5):
        super().__init__()
        self.codebook_size, self.dim = codebook_size, dim
        self.decay, self.threshold, self.eps = decay, dead_code_threshold, eps
        embed = torch.randn(codebook_size, dim)
        self.register_buffer("embed", embed)  # [K, D]
        self.register_buffer("embed_avg", embed.clone())  # [K, D] EMA of summed assigned vectors
        self.register_buffer("cluster_size", torch.ones(codebook_size))  # [K] EMA of usage per 1024 vectors
        self.register_buffer("initted", torch.zeros(1, dtype=torch.bool))  # k-means init done

    def nearest(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, D] -> code index [N] (squared Euclidean distance, first index on ties). ||x||^2 is
        the same for every code, so it is left out; min().indices is ~2x argmin's speed on a CPU."""
        return nearest_codes(x, self.embed, self._norms(), exact=False)

    def _norms(self) -> torch.Tensor:
        """||e||^2 [K], kept while the codebook is unchanged (its storage and in-place version): a
        frozen codec's extraction asks for it once per level and file (48 x 27 times on freedesktop)."""
        if self.embed.is_inference():  # no version counter to tell a change by
            return self.embed.pow(2).sum(1)
        key = (self.embed.data_ptr(), self.embed._version, self.embed.device)
        if getattr(self, "_norms_key", None) != key:
            self._norms_key, self._norms_value = key, self.embed.pow(2).sum(1)
        return self._norms_value

    @torch.no_grad()
    def kmeans_init(self, x: torch.Tensor, iters: int = KMEANS_ITERS) -> None:
        """Set the codebook to k-means centroids of x [N, D] (init from torch's RNG, so seedable)."""
        x = x.detach().float()
        n, k = x.shape[0], self.codebook_size
        if n >= k:
            centroids = x[torch.randperm(n, device=x.device)[:k]].clone()
        else:  # fewer vectors than codes: repeat them with a little noise so codes differ
            pick = torch.randint(0, n, (k,), device=x.device)
            spread = 1e-3 * (float(x.std(correction=0)) + 1e-3)
            centroids = x[pick] + spread * torch.randn(k, x.shape[1], device=x.device)
        counts = torch.zeros(k, device=x.device)
        for _ in range(iters):
            dist = x.pow(2).sum(1, keepdim=True) - 2 * (x @ centroids.T) + centroids.pow(2).sum(1)[None, :]
            idx = dist.argmin(1)
            counts = torch.zeros(k, device=x.device).index_add_(0, idx, torch.ones(n, device=x.device))
            sums = torch.zeros_like(centroids).index_add_(0, idx, x)
            used = counts > 0
            centroids[used] = sums[used] / counts[used, None]
            if (~used).any():  # empty cluster: move it onto a random point
                centroids[~used] = x[torch.randint(0, n, (int((~used).sum()),), device=x.device)]
        size = (counts * (USAGE_PER_VECTORS / n)).clamp_min(self.threshold)
        self.embed.copy_(centroids)
        self.cluster_size.copy_(size)
        self.embed_avg.copy_(centroids * size[:, None])
        self.initted.fill_(True)

    @torch.no_grad()
    def ema_update(self, x: torch.Tensor, idx: torch.Tensor) -> tuple[int, int]:
        """One EMA step from x [N, D] assigned to idx [N]; then re-seed dead codes.
        Returns (dead codes before the reset, codes reset)."""
        k = self.codebook_size
        scale = USAGE_PER_VECTORS / max(x.shape[0], 1)  # counts per 1024 vectors: batch-size independent
        counts = torch.zeros(k, device=x.device).index_add_(0, idx, torch.full_like(idx, scale, dtype=x.dtype))
        sums = torch.zeros_like(self.embed).index_add_(0, idx, x * scale)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_avg.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + k * self.eps) * total  # Laplace smoothing
        self.embed.copy_(self.embed_avg / smoothed[:, None])
        dead = self.cluster_size < self.threshold
        n_dead = int(dead.sum())
        if not n_dead or x.shape[0] == 0:
            return n_dead, 0
        pick = torch.randint(0, x.shape[0], (n_dead,), device=x.device)
        self.embed[dead] = x[pick]
        self.cluster_size[dead] = self.threshold
        self.embed_avg[dead] = x[pick] * self.threshold
        return n_dead, n_dead


def _usage_stats(idx: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """idx [L, N] (every level's codes) -> per level [L]: (fraction of the K codes used, perplexity =
    exp(entropy of code frequencies))."""
    counts = torch.zeros(idx.shape[0], k, device=idx.device).scatter_add_(
        1, idx, torch.ones(idx.shape, device=idx.device))
    p = counts / counts.sum(1, keepdim=True).clamp_min(1)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(1)
    return (counts > 0).float().mean(1), torch.exp(entropy)


class ResidualVQ(nn.Module):
    """Q codebooks in series: level q quantises what levels 0..q-1 left over."""

    def __init__(self, num_quantizers: int, codebook_size: int, dim: int, decay: float, dead_code_threshold: float):
        super().__init__()
        self.num_quantizers, self.codebook_size, self.dim = num_quantizers, codebook_size, dim
        self.levels = nn.ModuleList(
            EMACodebook(codebook_size, dim, decay, dead_code_threshold) for _ in range(num_quantizers)
        )

    @property
    def initted(self) -> bool:
        return all(bool(level.initted.item()) for level in self.levels)

    @torch.no_grad()
    def kmeans_init(self, z: torch.Tensor) -> None:
        """z [N, D]: initialise level by level, each on the residual the previous levels leave."""
        residual = z.detach().float()
        for level in self.levels:
            level.kmeans_init(residual)
            residual = residual - level.embed[level.nearest(residual)]

    @torch.no_grad()
    def refresh_unused(self, z: torch.Tensor, seed: int = 0, from_level: int = 0) -> list[int]:
        """z [N, D]: the training material's latent vectors, as extraction will see them. Level by level
        from `from_level` on, each code none of them chooses splits the most crowded code's cluster: it
        moves halfway from that code towards one of its vectors (drawn with `seed`) and takes the vectors
        now nearer to it. -> codes moved per level (0 below from_level).

        Training re-seeds dead codes on one augmented batch at a time, so a code can end training with
        no vector of the clean material near it (on 22 short files, up to a quarter of a detail
        level's codes). Moving such codes onto single vectors instead memorised the training set
        (freedesktop, held-out log-mel L1 0.147 -> 0.181, README); splitting crowded clusters keeps each code
        where the material is dense."""
        gen = torch.Generator().manual_seed(seed)
        residual = z.detach().float()
        moved = []
        for q, level in enumerate(self.levels):
            idx = level.nearest(residual)
            counts = torch.bincount(idx, minlength=level.codebook_size)
            free = (counts == 0).nonzero().flatten().tolist() if q >= from_level else []
            n = 0
            for code in free:
                big = int(counts.argmax())
                if int(counts[big]) < 2:
                    break
                members = (idx == big).nonzero().flatten()
                pick = members[int(torch.randint(len(members), (1,), generator=gen))]
                level.embed[code] = level.embed[big] + 0.5 * (residual[pick] - level.embed[big])
                level.embed_avg[code] = level.embed[code] * level.threshold
                level.cluster_size[code] = level.threshold
                # only the split cluster's vectors are re-assigned here (the exact search follows)
                mine = residual[members]
                nearer = (mine - level.embed[code]).pow(2).sum(1) < (mine - level.embed[big]).pow(2).sum(1)
                idx[members[nearer]] = code
                counts[code], counts[big] = int(nearer.sum()), int(counts[big]) - int(nearer.sum())
                n += 1
            if n:
                idx = level.nearest(residual)
            moved.append(n)
            residual = residual - level.embed[idx]
        return moved

    def forward(self, z: torch.Tensor, update: bool | None = None, levels: torch.Tensor | None = None):
        """z [B, D, T'] -> (quantised [B, D, T'] with straight-through gradient, codes [B, T', Q],
        commitment loss (scalar), stats {utilisation, perplexity, dead_codes, codes_reset: [Q]}).

        `update` (default: self.training) runs the EMA step and dead-code reset; it is skipped when
        z holds NaN/inf so one bad batch cannot poison the codebooks. `levels` (LongTensor [B], each
        1..L): item b's quantised output sums its first levels[b] levels only (every level is still
        searched, updated and committed to)."""
        update = self.training if update is None else update
        b, d, t = z.shape
        flat = z.permute(0, 2, 1).reshape(b * t, d)  # [N, D]
        if update and not bool(torch.isfinite(flat).all()):
            update = False
        residual = flat.detach()
        codes, chosen, dead, reset = [], [], [], []
        for level in self.levels:  # 48 levels: per-level work kept to the search and the EMA step
            idx = level.nearest(residual)  # [N]
            q = level.embed[idx]  # [N, D]
            n_dead, n_reset = 0, 0
            if update:
                n_dead, n_reset = level.ema_update(residual, idx)
            else:
                n_dead = int((level.cluster_size < level.threshold).sum())
            codes.append(idx)
            chosen.append(q)
            dead.append(n_dead)
            reset.append(n_reset)
            residual = residual - q
        sums = torch.stack(chosen).cumsum(0)  # [L, N, D]: the quantised vector after each level
        # commitment: the mean over levels of ||what level l was given - its code||^2, and what level l
        # was given minus its code is z minus the codes up to l
        commit = (flat.unsqueeze(0) - sums).pow(2).mean()
        out = sums[-1]
        if levels is not None:  # each item's vectors from its own number of levels
            upto = (levels.to(flat.device).clamp(1, len(self.levels)) - 1).repeat_interleave(t)  # [N]
            out = sums[upto, torch.arange(b * t, device=flat.device)]
        quantised = flat + (out - flat).detach()  # straight-through: gradient passes to the encoder
        quantised = quantised.reshape(b, t, d).permute(0, 2, 1)
        idx_all = torch.stack(codes)  # [L, N]
        codes_t = idx_all.T.reshape(b, t, self.num_quantizers)
        util, perp = _usage_stats(idx_all, self.codebook_size)
        stats = {
            "utilisation": util.detach().cpu(),
            "perplexity": perp.detach().cpu(),
            "dead_codes": torch.tensor(dead, dtype=torch.float32),
            "codes_reset": torch.tensor(reset, dtype=torch.float32),
        }
        return quantised, codes_t, commit, stats

    @torch.no_grad()
    def encode(self, z: torch.Tensor, levels: int | None = None) -> torch.Tensor:
        """z [B, D, T'] -> codes [B, T', n] long of the first n = `levels` levels (None: all; no state changes)."""
        b, d, t = z.shape
        return self.encode_rows(z.permute(0, 2, 1).reshape(b * t, d), levels).reshape(b, t, -1)

    @torch.no_grad()
    def encode_rows(self, rows: torch.Tensor, levels: int | None = None, exact: bool = True) -> torch.Tensor:
        """Latent vectors [N, D] -> codes [N, n]: each vector's exact nearest code at every level
        (models/nearest.py), so a vector's codes do not depend on the rows beside it; exact=False:
        float32's choice, the same only for the same rows (one long file's, always alone)."""
        residual, codes = rows, []
        for level in self.levels[:levels]:
            idx = nearest_codes(residual, level.embed, level._norms(), exact=exact)
            codes.append(idx)
            residual = residual - level.embed.index_select(0, idx)  # (a third cheaper than embed[idx])
        return torch.stack(codes, dim=-1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, T', n] -> z [B, D, T'] (sum of the chosen codes over the first n levels)."""
        out = 0
        for q, level in enumerate(self.levels[: codes.shape[-1]]):
            out = out + F.embedding(codes[..., q], level.embed)  # [B, T', D]
        return out.permute(0, 2, 1)


# --- encoder / decoder ----------------------------------------------------------------------


class ResBlock(nn.Module):
    """x + Conv1x1(ReLU(Conv3_dilated(ReLU(x)))): dilation widens the view along time cheaply."""

    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.conv2 = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T] -> [B, C, T]
        return x + inference_conv(self.conv2, F.relu(inference_conv(self.conv1, F.relu(x))))


def _on_onednn(x: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and torch.backends.mkldnn.is_available())


def inference_conv(conv: nn.Conv1d | nn.ConvTranspose1d, x: torch.Tensor) -> torch.Tensor:
    """conv(x); on a CPU without gradients, always on oneDNN's kernels.

    Why: (1) for one file under ~20,000 input values (a 1.7-s clip at 48 kHz) torch picks its generic
    kernels instead (im2col and a product whose last bits depend on the width; for dilated convs
    3-4x slower than oneDNN's), most of the time to encode a short one-shot; (2) oneDNN's value at a
    position is the same bit for bit whatever the batch around it, however far zeros pad the row and
    wherever along the row the position lies, as long as what it reads is the same (800 shapes checked
    for batches and padding: widths 4-6,000, batches 1-40, 1 and 2 threads; 438 files laid end to end
    at many offsets for position), which lets files of different lengths be encoded together with the
    codes they get alone (`ConvVQVAE.encode_files`). A transposed
    conv runs as its polyphase ordinary conv: oneDNN's own transposed kernel is not width-invariant."""
    if not _on_onednn(x):
        return conv(x)
    if isinstance(conv, nn.ConvTranspose1d):
        phased = _polyphase(conv)
        if phased is None:
            return conv(x)
        weight, bias, (left, right), shifts = phased
        s, w = conv.stride[0], x.shape[-1]
        y = torch.mkldnn_convolution(F.pad(x, (left, right)), weight, bias, [0], [1], [1], 1)
        y = y.reshape(y.shape[0], s, -1, y.shape[-1])  # [B, s, C_out, W + max shift]
        if len(set(shifts)) == 1:
            phases = y[..., shifts[0] : shifts[0] + w].permute(0, 2, 3, 1)
        else:
            phases = torch.stack([y[:, r, :, shift : shift + w] for r, shift in enumerate(shifts)], -1)
        return phases.reshape(y.shape[0], -1, w * s)  # [B, C_out, W * s]: out[j * s + r] = phase r at j
    return torch.mkldnn_convolution(x, conv.weight, conv.bias, conv.padding, conv.stride, conv.dilation, conv.groups)


def _polyphase(conv: nn.ConvTranspose1d):
    """A stride-s transposed conv as one ordinary conv with s x its output channels, one per output
    phase r: out[j*s + r] = sum over m of x[j - m] . w[r + p + m*s]. Phase r's taps span x[j - max m
    .. j - min m]; all phases share one kernel over the input padded on both sides, each phase read
    from its own shift. -> (weight [s * C_out, C_in, taps], bias, (left, right) padding, shifts), or
    None where the output is not s x the input's length. Kept while the weights are unchanged."""
    w = conv.weight  # [C_in, C_out, K]
    s, p, k = conv.stride[0], conv.padding[0], w.shape[-1]
    if conv.groups != 1 or conv.dilation[0] != 1 or conv.output_padding[0] != 0 or k - 2 * p != s:
        return None
    key = None  # tensors made in inference mode have no version counter: never kept
    if not w.is_inference() and (conv.bias is None or not conv.bias.is_inference()):
        key = (w.data_ptr(), w._version, None if conv.bias is None else (conv.bias.data_ptr(), conv.bias._version))
    if key is not None and getattr(conv, "_polyphase_key", None) == key:
        return conv._polyphase_value
    phases = [[((tap - r - p) // s, tap) for tap in range(k) if (tap - r - p) % s == 0] for r in range(s)]
    top = [max(m for m, _ in taps) for taps in phases]
    span = max(t - min(m for m, _ in taps) for t, taps in zip(top, phases)) + 1
    left = max(top)
    shifts = [left - t for t in top]
    weight = w.new_zeros(s, w.shape[1], w.shape[0], span)
    for r, taps in enumerate(phases):
        for m, tap in taps:
            weight[r, :, :, top[r] - m] = w[:, :, tap].T  # kernel position i reads x[j - top + i]
    # outputs needed: W + max shift, each reading `span` inputs from the left-padded start
    right = max(shifts) + span - 1 - left
    bias = (conv.bias if conv.bias is not None else w.new_zeros(w.shape[1])).repeat(s)
    value = (weight.reshape(-1, w.shape[0], span).contiguous(), bias.contiguous(), (left, max(right, 0)), shifts)
    if key is not None:
        conv._polyphase_key, conv._polyphase_value = key, value
    return value


def _widest_conv(layer: nn.Module | None) -> nn.Conv1d | nn.ConvTranspose1d | None:
    """The convolution that reaches furthest in a layer (a residual block's dilated one), or None."""
    conv = layer.conv1 if isinstance(layer, ResBlock) else layer
    return conv if isinstance(conv, (nn.Conv1d, nn.ConvTranspose1d)) else None


def _reach(layer: nn.Module) -> int:
    """The input width a layer's widest convolution spans (dilated kernel extent)."""
    conv = _widest_conv(layer)
    return 0 if conv is None else conv.dilation[0] * (conv.kernel_size[0] - 1) + 1


MIN_WIDTH = 16  # on oneDNN a conv reads at least this wide (see run_layers)


@dataclass(frozen=True)
class Spans:
    """Where files lie along a batch of rows, at one rate: (row, start, stop) each; zeros elsewhere."""

    rows: int
    parts: tuple[tuple[int, int, int], ...]

    def resampled(self, up: int = 1, down: int = 1) -> Spans:
        return Spans(self.rows, tuple((r, a * up // down, b * up // down) for r, a, b in self.parts))

    def outside(self, width: int, device: torch.device) -> torch.Tensor | None:
        """[rows, 1, width] bool, True where no file lies (None: the files cover every position)."""
        inside = torch.zeros(self.rows, width, dtype=torch.bool, device=device)
        for r, a, b in self.parts:
            inside[r, a:b] = True
        return None if bool(inside.all()) else ~inside[:, None, :]


def run_layers(layers: nn.Sequential, x: torch.Tensor, spans: Spans | None = None) -> torch.Tensor:
    """The layers on x [B, C, W] in order, convolutions through `inference_conv`. spans: where each
    file lies in x (several files can share a row, laid end to end with gaps wider than any layer
    reads: `ConvVQVAE.gap_frames`); everywhere else is set back to zero after every layer, the zero
    padding a file gets alone, so that on oneDNN a file's values do not depend on what lies beside it.

    On oneDNN a conv narrower than its kernel's reach (a 0.1-s file's 2 steps under a dilation of 3)
    takes another kernel with other last bits than the same file inside a wider row; so every conv
    reads at least MIN_WIDTH (and its reach) wide, zero-padded, alone or batched, and the output is cut
    back to the width it would have had."""
    width = x.shape[-1]
    pad_narrow = _on_onednn(x)
    outside = None if spans is None else spans.outside(x.shape[-1], x.device)
    for layer in layers:
        need = max(MIN_WIDTH, _reach(layer))
        if pad_narrow and _reach(layer) and x.shape[-1] < need:
            if spans is None:
                spans = Spans(x.shape[0], tuple((r, 0, x.shape[-1]) for r in range(x.shape[0])))
            x = F.pad(x, (0, need - x.shape[-1]))
            outside = spans.outside(x.shape[-1], x.device)
        if isinstance(layer, (nn.Conv1d, nn.ConvTranspose1d)):
            x = inference_conv(layer, x)
            if layer.stride[0] != 1:
                s = layer.stride[0]
                grow = isinstance(layer, nn.ConvTranspose1d)
                width = width * s if grow else width // s
                if spans is not None:
                    spans = spans.resampled(up=s) if grow else spans.resampled(down=s)
                    outside = spans.outside(x.shape[-1], x.device)
        else:
            x = layer(x)
        if outside is not None and not isinstance(layer, nn.ReLU):
            x = x.masked_fill(outside, 0.0)
    return x[..., :width]


def _res_stack(channels: int, n: int) -> list[nn.Module]:
    return [ResBlock(channels, 3**i) for i in range(n)]


class Encoder(nn.Module):
    """Stage s (s = 1..n_down): a stride-2 conv halves time, then residual blocks at the new rate.
    The first stride conv reads the mel bins directly, so nothing runs at the full frame rate."""

    def __init__(self, n_mels: int, hidden: int, dim: int, n_down: int, n_res: int):
        super().__init__()
        layers: list[nn.Module] = []
        for s in range(n_down):
            layers += [nn.Conv1d(n_mels if s == 0 else hidden, hidden, 4, stride=2, padding=1), *_res_stack(hidden, n_res)]
            if s < n_down - 1:
                layers.append(nn.ReLU())
        layers += [nn.ReLU(), nn.Conv1d(hidden, dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, spans: Spans | None = None) -> torch.Tensor:
        """[B, n_mels, F] -> [B, D, F / 2^n_down]; spans: where each file lies in x (run_layers)."""
        return run_layers(self.net, x, spans)


class Decoder(nn.Module):
    """Mirror of the encoder: residual blocks, then a stride-2 transposed conv doubles time; the last
    one writes the mel bins directly."""

    def __init__(self, n_mels: int, hidden: int, dim: int, n_up: int, n_res: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv1d(dim, hidden, 3, padding=1)]
        for s in range(n_up):
            last = s == n_up - 1
            layers += [*_res_stack(hidden, n_res), nn.ReLU(),
                       nn.ConvTranspose1d(hidden, n_mels if last else hidden, 4, stride=2, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, spans: Spans | None = None) -> torch.Tensor:
        """[B, D, T'] -> [B, n_mels, T' * 2^n_up]; spans: where each file lies in z (run_layers)."""
        return run_layers(self.net, z, spans)


def pack_files(frames: list[int], batch_frames: int, gap: int) -> list[list[tuple[int, int]]]:
    """Files of `frames` padded mel frames each, laid end to end for one call each -> [(file, offset)]
    per call: `gap` frames of zeros after each file, at most `batch_frames` frames a call. A file past
    SHORT_FRAMES goes alone, and so does every file where batch_frames is 0."""
    calls: list[list[tuple[int, int]]] = []
    current: list[tuple[int, int]] = []
    end = 0
    for i, f in enumerate(frames):
        if f > SHORT_FRAMES or not batch_frames:
            calls.append([(i, 0)])
            continue
        start = end + gap if current else 0
        if current and start + f > batch_frames:
            calls.append(current)
            current, start = [], 0
        current.append((i, start))
        end = start + f
    if current:
        calls.append(current)
    return calls


# --- the model ------------------------------------------------------------------------------


class ConvVQVAE(nn.Module):
    def __init__(self, n_mels: int, config: VQVAEConfig):
        super().__init__()
        if config.downsample not in (2, 4, 8):
            raise ValueError(f"downsample must be 2, 4 or 8, got {config.downsample}")
        if not 1 <= config.num_quantizers <= 8:
            raise ValueError(f"num_quantizers must be 1-8 (Distill uses 2-4), got {config.num_quantizers}")
        if not 0 <= config.detail_levels <= MAX_DETAIL_LEVELS:
            raise ValueError(f"detail_levels must be 0-{MAX_DETAIL_LEVELS}, got {config.detail_levels}")
        self.n_mels = n_mels
        self.config = copy.deepcopy(config)
        self.downsample = config.downsample
        n_stages = int(math.log2(config.downsample))
        # per-mel-bin normalisation of the log-mel input, fitted on the training files
        self.register_buffer("mel_mean", torch.zeros(n_mels))
        self.register_buffer("mel_std", torch.ones(n_mels))
        self.encoder = Encoder(n_mels, config.hidden_channels, config.codebook_dim, n_stages, config.num_res_blocks)
        self.quantizer = ResidualVQ(
            config.num_quantizers + config.detail_levels, config.codebook_size, config.codebook_dim, config.ema_decay,
            config.dead_code_threshold,
        )
        self.coarse_levels, self.detail_levels = config.num_quantizers, config.detail_levels
        # codes of what the decoder leaves out of a sound's log-mel (distill/models/spectral_detail.py),
        # after the detail levels; fitted once the codec has trained (fit_spectral_detail)
        self.spectral = (SpectralDetail(n_mels, config.downsample, config.spectral_levels, config.spectral_bands,
                                        config.codebook_size) if config.spectral_levels else None)
        self.decoder = Decoder(n_mels, config.hidden_channels, config.codebook_dim, n_stages, config.num_res_blocks)
        self.linear_path = bool(config.linear_path)
        if self.linear_path:
            ds, dim = config.downsample, config.codebook_dim
            # one block of `ds` frames <-> one latent vector, linearly; the conv paths start at zero so
            # a fresh model is exactly this linear codec (see init_linear_path)
            self.enc_linear = nn.Conv1d(n_mels, dim, ds, stride=ds)
            self.dec_linear = nn.ConvTranspose1d(dim, n_mels, ds, stride=ds)
            for last in (self.encoder.net[-1], self.decoder.net[-1]):
                nn.init.zeros_(last.weight)
                nn.init.zeros_(last.bias)

    # -- helpers --
    @torch.no_grad()
    def set_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mel_mean.copy_(mean.reshape(-1))
        self.mel_std.copy_(std.reshape(-1).clamp_min(1e-3))

    def _check(self, mel: torch.Tensor) -> None:
        if mel.dim() != 3 or mel.shape[1] != self.n_mels:
            raise ValueError(f"expected mel [B, {self.n_mels}, frames], got {tuple(mel.shape)}")
        if mel.shape[-1] == 0:
            raise ValueError("cannot encode zero frames")

    def _latent(self, mel: torch.Tensor) -> torch.Tensor:
        """mel [B, n_mels, F] -> z [B, D, ceil(F / downsample)]; the tail is padded by repeating the
        last frame (cropped away again by decode)."""
        return self._latent_normalised((self._padded(mel) - self.mel_mean[:, None]) / self.mel_std[:, None])

    def _latent_normalised(self, x: torch.Tensor, spans: Spans | None = None) -> torch.Tensor:
        """Normalised, padded mel x [B, n_mels, F] (spans: where each file lies, zeros elsewhere)
        -> z [B, D, F / downsample] (outside the spans: no file's)."""
        z = self.encoder(x, spans)
        return z + inference_conv(self.enc_linear, x) if self.linear_path else z

    def _decode_latent(self, q: torch.Tensor, spans: Spans | None = None) -> torch.Tensor:
        y = self.decoder(q, spans)
        return y + inference_conv(self.dec_linear, q) if self.linear_path else y

    def _frames_out(self, y: torch.Tensor, frames: int | None) -> torch.Tensor:
        """Normalised decoder output [B, n_mels, T'*ds] -> log-mel, cropped/padded to `frames`."""
        return self._frames_out_crop(y * self.mel_std[:, None] + self.mel_mean[:, None], frames)

    @staticmethod
    def _frames_out_crop(y: torch.Tensor, frames: int | None) -> torch.Tensor:
        if frames is None or frames == y.shape[-1]:
            return y
        if frames < y.shape[-1]:
            return y[..., :frames]
        return F.pad(y, (0, frames - y.shape[-1]), mode="replicate")

    @torch.no_grad()
    def init_linear_path(self, mels: list[torch.Tensor], max_blocks: int = 32_768) -> None:
        """Set the linear path to the principal components of blocks of `downsample` normalised frames
        from `mels` (each [n_mels, frames]; evenly thinned to at most `max_blocks` blocks): encode =
        project onto the top `codebook_dim` components, decode = map back and add the mean."""
        if not self.linear_path:
            return
        ds, n = self.downsample, self.n_mels
        blocks = []
        for m in mels:
            usable = m.shape[-1] // ds * ds
            if usable:
                x = (m[:, :usable].to(torch.float64) - self.mel_mean[:, None]) / self.mel_std[:, None]
                blocks.append(x.reshape(n, -1, ds).permute(1, 0, 2).reshape(-1, n * ds))  # (mel, tap) order
        if not blocks:
            return
        data = torch.cat(blocks)
        if data.shape[0] > max_blocks:
            data = data[torch.linspace(0, data.shape[0] - 1, max_blocks).long()]
        mean = data.mean(0)
        _, _, vh = torch.linalg.svd(data - mean, full_matrices=False)  # rows: components, largest first
        k = min(vh.shape[0], self.enc_linear.out_channels)
        comps = vh[:k].reshape(k, n, ds).to(torch.float32)
        self.enc_linear.weight[:k] = comps
        self.enc_linear.bias[:k] = -(vh[:k] @ mean).to(torch.float32)
        self.dec_linear.weight[:k] = comps
        self.dec_linear.bias.copy_(mean.reshape(n, ds).mean(1).to(torch.float32))

    @torch.no_grad()
    def init_codebooks(self, mel: torch.Tensor) -> None:
        """k-means initialise every level from a sample of mels [B, n_mels, F]."""
        self._check(mel)
        z = self._latent(mel)
        self.quantizer.kmeans_init(z.permute(0, 2, 1).reshape(-1, z.shape[1]))

    @torch.no_grad()
    def refresh_unused_codes(self, mels: list[torch.Tensor], seed: int = 0) -> list[int]:
        """`ResidualVQ.refresh_unused` of the detail levels over the latent vectors of `mels` (each
        [n_mels, frames], encoded one file at a time as extraction does) -> codes moved per level.

        The sequence model's levels are left as trained: their use is not what runs short (>= 84 % on
        every freedesktop seed), and a split there adds a choice the prior must learn with nothing to
        tell the two halves apart. With every level split, two of three freedesktop priors stopped
        within 80 steps in one run (bits vs unigram 0.973 against 0.919 without splits) though not in
        another (0.925; README): not enough to say, so the prior's codes stay the codec's own. Detail
        codes are not modelled; they are copied from the material."""
        if not self.detail_levels:
            return [0] * len(self.quantizer.levels)
        z = [self._latent(m[None].to(self.mel_mean.device, torch.float32)) for m in mels if m.shape[-1]]
        if not z:
            return [0] * len(self.quantizer.levels)
        return self.quantizer.refresh_unused(torch.cat([x[0].T for x in z]), seed, from_level=self.coarse_levels)

    def _padded(self, mel: torch.Tensor) -> torch.Tensor:
        """mel [B, n_mels, F] with its tail padded by repeating the last frame, to T' * downsample frames
        (what the encoder reads, and what the decoder's output is compared with)."""
        pad = (-mel.shape[-1]) % self.downsample
        return F.pad(mel, (0, pad), mode="replicate") if pad else mel

    @torch.no_grad()
    def fit_spectral_detail(self, mels: list[torch.Tensor], seed: int = 0) -> float | None:
        """Fit the spectral detail's codebooks to what the decoder leaves out of `mels` (each
        [n_mels, frames], encoded one file at a time with every level; past FIT_STEPS code steps in
        all, excerpts of the long files and a spread of the short ones) -> the mean absolute log-mel
        left after them there (None: the codec has no spectral detail)."""
        if self.spectral is None:
            return None
        dev = self.mel_mean.device
        residuals = []
        for m in fit_excerpts([m for m in mels if m.shape[-1]], self.downsample):
            mel = m[None].to(dev, torch.float32)
            residuals.append(self._left_out(mel, self.quantizer.encode(self._latent(mel)))[0])
        return self.spectral.fit(residuals, seed) if residuals else None

    def _left_out(self, mel: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """What the decoder leaves out of mel [B, n_mels, F] given its codes at every level: the
        padded mel minus the decoded codes, [B, n_mels, T' * downsample]."""
        return self._padded(mel) - self._frames_out(self._decode_latent(self.quantizer.decode(codes)), None)

    @property
    def detail_width(self) -> int:
        """Detail codes per step past the sequence model's levels: the detail levels, then the
        spectral detail's."""
        return self.config.detail_width

    # -- public API --
    @torch.no_grad()
    def encode(self, mel: torch.Tensor, detail: bool = False, spectral: bool = True) -> torch.Tensor:
        """mel [B, n_mels, frames] -> codes [B, ceil(frames / downsample), Q] long: the levels the
        sequence model learns (detail=True: all Q + detail_width: every level, then the spectral
        detail of what those levels decode to; spectral=False: every level only)."""
        self._check(mel)
        return torch.stack(self.encode_files(list(mel), detail=detail, spectral=spectral))

    @property
    def gap_frames(self) -> int:
        """Mel frames of zeros between files laid end to end in one call: at every layer's rate at least
        as far as its convolution reads on either side of a position, so that no file reaches its
        neighbour; a multiple of the downsample, so each file meets every stride where it does alone."""
        need = 0
        linear = [self.enc_linear, self.dec_linear] if self.linear_path else [None, None]
        for layers, rate in (([*self.encoder.net, linear[0]], 1), ([*self.decoder.net, linear[1]], self.downsample)):
            for layer in layers:
                conv = _widest_conv(layer)
                if isinstance(conv, nn.ConvTranspose1d):
                    need = max(need, -(-conv.kernel_size[0] // conv.stride[0]) * rate)
                    if conv is layer:
                        rate //= conv.stride[0]
                elif isinstance(conv, nn.Conv1d):
                    extent, pad = conv.dilation[0] * (conv.kernel_size[0] - 1), conv.padding[0]
                    need = max(need, max(pad, extent - pad) * rate)
                    if conv is layer:
                        rate *= conv.stride[0]
        return -(-need // self.downsample) * self.downsample

    @torch.no_grad()
    def encode_files(self, mels: list[torch.Tensor], detail: bool = False, spectral: bool = True,
                     batch_frames: int = BATCH_FRAMES) -> list[torch.Tensor]:
        """Mels [n_mels, frames] of any lengths -> each one's codes [ceil(frames / downsample), Q
        (+ detail_width)], as `encode` describes, bit for bit what each file gets alone.

        Short files go through the convolutions together, laid end to end (`pack_files`, up to
        `batch_frames` frames a call; 0: one file a call) with `gap_frames` of zeros between them, set
        back to zero after every layer, as the padding each gets alone; on a CPU the convolutions run on
        oneDNN (`inference_conv`), whose value at a position does not depend on what lies around the
        positions it reads. Every file's vectors then take their codes in one pass per level, each its
        exact nearest (models/nearest.py). So 27 short one-shots cost one call per layer and a pass per
        level rather than a few each per file."""
        if not mels:
            return []
        dev = self.mel_mean.device
        padded = []
        for m in mels:
            if m.dim() != 2 or m.shape[0] != self.n_mels or m.shape[-1] == 0:
                raise ValueError(f"expected mel [{self.n_mels}, frames > 0], got {tuple(m.shape)}")
            padded.append(self._padded(m[None].to(dev, torch.float32))[0])
        frames = [p.shape[-1] for p in padded]
        steps = [f // self.downsample for f in frames]
        calls = pack_files(frames, batch_frames, self.gap_frames)
        starts = [0]
        for t in steps:
            starts.append(starts[-1] + t)

        def laid(call: list[tuple[int, int]], parts: list[torch.Tensor], divisor: int) -> tuple[torch.Tensor, Spans]:
            """The call's files at 1 / divisor of the mel rate, end to end in one row, and where they lie."""
            if len(call) == 1:
                return parts[0][None], Spans(1, ((0, 0, parts[0].shape[-1]),))
            last, offset = call[-1]
            x = parts[0].new_zeros(1, parts[0].shape[0], (offset + frames[last]) // divisor)
            for (_, offset), part in zip(call, parts):
                x[0, :, offset // divisor : offset // divisor + part.shape[-1]] = part
            return x, Spans(1, tuple((0, o // divisor, (o + frames[i]) // divisor) for i, o in call))

        vectors: list[torch.Tensor | None] = [None] * len(mels)
        mean, std = self.mel_mean[:, None], self.mel_std[:, None]
        for call in calls:
            x, spans = laid(call, [(padded[i] - mean) / std for i, _ in call], 1)  # (the gaps stay zero)
            z = self._latent_normalised(x, spans)
            for i, offset in call:
                vectors[i] = z[0, :, offset // self.downsample : offset // self.downsample + steps[i]].T
        # the short files' vectors together, exactly; each long file's on its own (SHORT_FRAMES)
        short = [i for i in range(len(mels)) if frames[i] <= SHORT_FRAMES]
        parts = ([short] if short else []) + [[i] for i in range(len(mels)) if frames[i] > SHORT_FRAMES]
        levels = None if detail else self.coarse_levels
        codes = torch.zeros(starts[-1], self.quantizer.num_quantizers if detail else self.coarse_levels,
                            dtype=torch.long, device=dev)
        rows = [torch.cat([torch.arange(starts[i], starts[i + 1], device=dev) for i in part]) for part in parts]
        exact = [frames[part[0]] <= SHORT_FRAMES for part in parts]
        for part, where, certain in zip(parts, rows, exact):
            codes[where] = self.quantizer.encode_rows(torch.cat([vectors[i] for i in part]), levels, exact=certain)
        if detail and spectral and self.spectral is not None:
            # what the decoder leaves out of each file, decoded from its codes as `decode` does
            summed = self.quantizer.decode(codes[None])[0]  # [D, N]
            blocks: list[torch.Tensor | None] = [None] * len(mels)
            for call in calls:
                q, spans = laid(call, [summed[:, starts[i] : starts[i + 1]] for i, _ in call], self.downsample)
                y = self._frames_out(self._decode_latent(q, spans), None)
                for i, offset in call:
                    blocks[i] = self.spectral.to_blocks((padded[i] - y[0, :, offset : offset + frames[i]])[None])[0]  # [bands, T', d]
            detail_codes = codes.new_zeros(starts[-1], self.spectral.levels * self.spectral.bands)
            for part, where, certain in zip(parts, rows, exact):
                detail_codes[where] = self.spectral.encode_blocks(torch.cat([blocks[i] for i in part], 1), exact=certain)
            codes = torch.cat([codes, detail_codes], -1)
        return [codes[starts[i] : starts[i + 1]] for i in range(len(mels))]

    def decode(self, codes: torch.Tensor, frames: int | None = None) -> torch.Tensor:
        """codes [B, T', Q] (the sequence model's levels alone), [B, T', Q + detail_levels] (with the
        detail levels) or [B, T', Q + detail_width] (and the spectral detail) -> log-mel [B, n_mels,
        frames] (frames None: T' * downsample)."""
        levels = self.coarse_levels + self.detail_levels
        allowed = {self.coarse_levels, levels, self.coarse_levels + self.detail_width}
        if codes.dim() != 3 or codes.shape[-1] not in allowed:
            raise ValueError(f"expected codes [B, T', {' or '.join(map(str, sorted(allowed)))}], got {tuple(codes.shape)}")
        codes = codes.long()
        y = self._decode_latent(self.quantizer.decode(codes[..., :levels].clamp(0, self.quantizer.codebook_size - 1)))
        y = self._frames_out(y, None)
        if codes.shape[-1] > levels:
            y = y + self.spectral.decode(codes[..., levels:])
        return self._frames_out_crop(y, frames)

    def forward(self, mel: torch.Tensor) -> VQVAEOutput:
        """mel [B, n_mels, F] -> VQVAEOutput; in training mode also k-means-initialises (first call,
        if not done yet and enabled) and updates the codebooks."""
        self._check(mel)
        frames = mel.shape[-1]
        z = self._latent(mel)
        if self.training and self.config.kmeans_init and not self.quantizer.initted:
            self.quantizer.kmeans_init(z.detach().permute(0, 2, 1).reshape(-1, z.shape[1]))
        levels = None
        if self.training and self.detail_levels and self.config.coarse_dropout > 0:
            # some windows decode from the sequence model's levels alone (VQVAEConfig.coarse_dropout)
            coarse = torch.rand(z.shape[0]) < self.config.coarse_dropout
            levels = torch.where(coarse, self.coarse_levels, self.coarse_levels + self.detail_levels)
        quantised, codes, commit, stats = self.quantizer(z, levels=levels)
        recon = self._frames_out(self._decode_latent(quantised), frames)
        return VQVAEOutput(recon=recon, codes=codes, commit_loss=commit, stats=stats)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


# --- device check ---------------------------------------------------------------------------


@torch.no_grad()
def quantizer_matches_cpu(model: ConvVQVAE, device: str | torch.device, n_vectors: int = 512) -> bool:
    """Does the residual quantiser pick the same codes on `device` as on CPU for a fixed input?

    The input mixes sums of real codes plus small noise (the common case) with wide random vectors
    (far from every code), drawn from a fixed CPU generator. Used once before training on MPS."""
    q_cpu = copy.deepcopy(model.quantizer).to("cpu").eval()
    gen = torch.Generator().manual_seed(1234)
    d, k = q_cpu.dim, q_cpu.codebook_size
    half = n_vectors // 2
    pick = torch.randint(0, k, (half, q_cpu.num_quantizers), generator=gen)
    near = sum(level.embed[pick[:, i]] for i, level in enumerate(q_cpu.levels))
    scale = float(q_cpu.levels[0].embed.std()) or 1.0
    near = near + 0.05 * scale * torch.randn(half, d, generator=gen)
    far = 2.0 * scale * torch.randn(n_vectors - half, d, generator=gen)
    z = torch.cat([near, far]).T.unsqueeze(0).contiguous()  # [1, D, N]
    try:
        q_dev = copy.deepcopy(q_cpu).to(device)
        codes_dev = q_dev.encode(z.to(device)).cpu()
    except (RuntimeError, NotImplementedError, TypeError):
        return False
    return bool(torch.equal(codes_dev, q_cpu.encode(z)))
