"""Spectral detail: what the codec's decoder leaves out of a sound, as codes of the log-mel itself.

Past a point the codec's error is its decoder's, not its codes': the same network with an unquantised
latent comes within 5 % of 48 levels (README), and neither more training time, a wider latent, more
channels nor deeper blocks moved drascula's ViSQOL past 4.05 (4.71 for the real mel). So the
difference between a file's log-mel and its decoded codes is quantised directly, in the mel domain:
`levels` residual levels over `bands` bands of mel bins, each vector one band over one code step
(n_mels / bands bins x `downsample` frames), K codes per band and level, fitted by k-means on the
training files' own differences once the codec has trained. Cut into bands, the codebooks learn
shapes that recur across sounds (a partial's edge, a note's onset in one register) and so serve files
they never saw: on drascula's six held-out tracks two levels of 256 took ViSQOL 4.04 -> 4.35, four
4.45 (README).

Codes: [B, T', levels * bands], level by level, band by band within a level; code 0 of every band and
level is no change (a zero vector, kept out of the fit), so all-zero codes decode to the codec's own
output. They ride with the codec's detail levels: a file heard through its codes keeps its own, and a
generated sound takes them from the material only where a step plays as the material did
(distill/detail.py): elsewhere the material's residual does not fit the decoded sound, and on drascula
it made held notes grainy and frames flicker.
"""
from __future__ import annotations

import torch
from torch import nn

from distill.models.nearest import nearest_codes

FIT_VECTORS = 16_384  # per band: the training vectors k-means fits each level to (evenly thinned)
FIT_ITERS = 10
# The residuals are taken from at most this many code steps of the training files (`fit_excerpts`:
# excerpts of the long files, a spread of the short ones): the fit then takes about as long for hours
# of material as for minutes, where encoding and decoding all of it grew with the collection
# (drascula's 36 minutes: 9-10 s of the codec's 8-s share).
FIT_STEPS = 2 * FIT_VECTORS
EXCERPT_STEPS = 512  # an excerpt's length (~22 s at 48 kHz): its edges, encoded alone, are a small part


class SpectralDetail(nn.Module):
    def __init__(self, n_mels: int, downsample: int, levels: int, bands: int, codebook_size: int):
        super().__init__()
        if levels < 1 or bands < 1 or n_mels % bands:
            raise ValueError(f"spectral detail needs levels >= 1 and bands dividing n_mels ({n_mels}), "
                             f"got {levels} levels, {bands} bands")
        self.n_mels, self.ds, self.levels, self.bands, self.k = n_mels, downsample, levels, bands, codebook_size
        self.band_mels = n_mels // bands
        # [levels, bands, K, band_mels * downsample]: zeros until fitted, which decode as no change
        self.register_buffer("books", torch.zeros(levels, bands, codebook_size, self.band_mels * downsample))

    def to_blocks(self, mel: torch.Tensor) -> torch.Tensor:
        """[B, n_mels, T' * ds] -> [B, bands, T', band_mels * ds]."""
        b, _, f = mel.shape
        t = f // self.ds
        x = mel.reshape(b, self.bands, self.band_mels, t, self.ds).permute(0, 1, 3, 2, 4)
        return x.reshape(b, self.bands, t, self.band_mels * self.ds)

    def from_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """[B, bands, T', band_mels * ds] -> [B, n_mels, T' * ds]."""
        b, _, t, _ = x.shape
        x = x.reshape(b, self.bands, t, self.band_mels, self.ds).permute(0, 1, 3, 2, 4)
        return x.reshape(b, self.n_mels, t * self.ds)

    def _lookup(self, book: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """book [bands, K, d], codes [B, bands, N] -> [B, bands, N, d]."""
        idx = codes + torch.arange(self.bands, device=codes.device)[None, :, None] * self.k
        return book.reshape(-1, book.shape[-1])[idx]

    @torch.no_grad()
    def encode(self, residual: torch.Tensor) -> torch.Tensor:
        """The log-mel the decoder left out [B, n_mels, T' * ds] -> codes [B, T', levels * bands]."""
        x = self.to_blocks(residual.float())
        b, _, t, d = x.shape
        return self.encode_blocks(x.transpose(0, 1).reshape(self.bands, b * t, d)).reshape(b, t, -1)

    @torch.no_grad()
    def encode_blocks(self, x: torch.Tensor, exact: bool = True) -> torch.Tensor:
        """Blocks [bands, N, band_mels * ds] (`to_blocks`, any files' steps side by side) -> codes
        [N, levels * bands]: each vector's exact nearest code (models/nearest.py), so a step's codes
        do not depend on the steps beside it (exact=False: float32's choice, for one long file's)."""
        x = x.float().clone()
        out = []
        for level in range(self.levels):
            book = self.books[level]
            codes = nearest_codes(x, book, exact=exact)  # [bands, N]
            x -= self._lookup(book, codes[None])[0]
            out.append(codes)
        return torch.stack(out).reshape(self.levels * self.bands, -1).T.contiguous()

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, T', levels * bands] -> the log-mel they add [B, n_mels, T' * ds]."""
        b, t, _ = codes.shape
        c = codes.long().clamp(0, self.k - 1).permute(0, 2, 1).reshape(b, self.levels, self.bands, t)
        x = sum(self._lookup(self.books[level], c[:, level]) for level in range(self.levels))
        return self.from_blocks(x)

    @torch.no_grad()
    def fit(self, residuals: list[torch.Tensor], seed: int = 0) -> float:
        """k-means every level, band by band, on what the decoder left out of the training files
        (each [n_mels, T' * ds]) -> the mean absolute residual left after the last level."""
        x = torch.cat([self.to_blocks(r[None].float().cpu())[0] for r in residuals], 1)  # [bands, N, d]
        if x.shape[1] > FIT_VECTORS:
            x = x[:, torch.linspace(0, x.shape[1] - 1, FIT_VECTORS).long()]
        gen = torch.Generator().manual_seed(seed)
        n = x.shape[1]
        for level in range(self.levels):
            # start from K of the vectors (drawn with replacement where there are fewer than K)
            pick = torch.randperm(n, generator=gen)[: self.k] if n >= self.k else torch.randint(0, n, (self.k,), generator=gen)
            book = x[:, pick].clone()  # [bands, K, d]
            book[:, 0] = 0.0  # code 0: no change
            for it in range(FIT_ITERS):
                a = nearest_codes(x, book, exact=False)  # [bands, N]: float32's choice is enough for k-means
                sums = torch.zeros_like(book).scatter_add_(1, a[..., None].expand_as(x), x)
                counts = torch.zeros(self.bands, self.k).scatter_add_(1, a, torch.ones_like(a, dtype=torch.float32))
                book = torch.where(counts[..., None] > 0, sums / counts.clamp_min(1)[..., None], book)
                book[:, 0] = 0.0
                if it < FIT_ITERS - 1:
                    self._reseed_unused(book, counts, x, a)
            self.books[level] = book.to(self.books.device)
            x -= self._lookup(book, nearest_codes(x, book, exact=False)[None])[0]  # (on the CPU, wherever the model is)
        return float(x.abs().mean())

    def _reseed_unused(self, book: torch.Tensor, counts: torch.Tensor, x: torch.Tensor, assigned: torch.Tensor) -> None:
        """Move each band's codes that no vector chose (past code 0) onto the vectors its codes fit
        worst, in place. Short clips with silent tails drew near-identical starting vectors, and a
        third of freedesktop's deepest codes went unused; these codes only encode (no model predicts
        them), so a code spent on a rare training shape costs nothing where it is not needed."""
        unused = counts[:, 1:] == 0
        if not bool(unused.any()):
            return
        err = ((x - self._lookup(book, assigned[None])[0]) ** 2).sum(-1)  # [bands, N]
        for band in range(self.bands):
            codes = unused[band].nonzero()[:, 0] + 1
            if len(codes):
                worst = err[band].topk(min(len(codes), err.shape[1])).indices
                book[band, codes[: len(worst)]] = x[band, worst]


def fit_excerpts(mels: list[torch.Tensor], downsample: int, max_steps: int = FIT_STEPS,
                 excerpt_steps: int = EXCERPT_STEPS) -> list[torch.Tensor]:
    """The parts of `mels` (each [n_mels, frames]) whose residuals the fit takes: every file whole
    where they come to at most `max_steps` code steps; else each file's share of them: from a file
    longer than an excerpt, excerpts of `excerpt_steps` steps spread evenly over it (so every part of
    a long file is heard), and of the shorter files, whole ones spread evenly over the collection
    (every k-th, as their shares add up)."""
    total = sum(-(-m.shape[-1] // downsample) for m in mels)
    if total <= max_steps:
        return list(mels)
    frames = excerpt_steps * downsample
    out, owed = [], 0.0  # owed: the short files' shares not yet taken, in frames
    for m in mels:
        n = m.shape[-1]
        keep = n * max_steps / total  # this file's share, in frames
        if n <= frames:
            owed += keep
            if owed >= n / 2:
                out.append(m)
                owed -= n
            continue
        count = max(1, round(keep / frames))
        for start in torch.linspace(0, n - frames, count).tolist():
            a = int(start) // downsample * downsample
            out.append(m[:, a : a + frames])
    return out
