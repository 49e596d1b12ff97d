"""How much the sequence model learned, in words a musician reads: the judgement of a finished run.

The analysis stage measures the prior's held-out bits per code; on their own they mean nothing to a
person. Here they are compared with two guesses that know nothing about time: picking any code at
random (log2 of the codebook size) and picking codes as often as the training files use them (the
order-free, unigram guess). The better of the two is the bar the model must clear; how far below it
lands decides the verdict. Pure Python, so the page, the CLI and the API share it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

# Held-out bits over the better order-free guess. At or above LITTLE the model predicts the next code
# no better than a guess that ignores time (noise in, noise out); below CLEAR it has picked up real
# structure (on asterisk-en a 4-minute prior reached 0.90 x, about a smoothed bigram: DESIGN.md).
LITTLE_RATIO = 0.97
CLEAR_RATIO = 0.85
MAX_BITS = 64.0  # held-out bits per code beyond any real model (the codebooks have at most 2^20 codes)
EARLY_BEST_SHARE = 0.25  # the kept version came from the first quarter of the steps: it stopped improving at once


class Learned:
    """Values of `LearningVerdict.level`."""

    LITTLE = "little"
    SOME = "some"
    CLEAR = "clear"


@dataclass(frozen=True)
class LearningVerdict:
    level: str  # Learned.LITTLE | SOME | CLEAR
    headline: str  # one sentence: what the model learned
    advice: str  # what to do about it ("" when nothing needs doing)
    detail: str  # the numbers behind it, for those who want them
    ratio: float  # held-out bits / the better order-free guess's bits
    val_bits: float
    chance_bits: float
    unigram_bits: float | None

    @property
    def ok(self) -> bool:
        return self.level != Learned.LITTLE

    def to_dict(self) -> dict:
        return asdict(self)


def judge_prior(val_bits, codebook_size, unigram_bits=None, steps=None, best_step=None,
                preset: str | None = None) -> LearningVerdict | None:
    """The verdict on a prior from its held-out bits per code; None when the numbers are missing."""
    # a manifest may come from a stranger's bundle: numbers no model can give are not judged
    if not _finite(val_bits) or not 0 <= val_bits <= MAX_BITS or not isinstance(codebook_size, int) \
            or isinstance(codebook_size, bool) or not 2 <= codebook_size <= 2 ** 20:
        return None
    chance = math.log2(codebook_size)
    unigram = float(unigram_bits) if _finite(unigram_bits) and 0 < unigram_bits <= MAX_BITS else None
    reference = min(chance, unigram) if unigram is not None else chance
    ratio = float(val_bits) / reference
    order_free = ("guessing from how often each code is used" if unigram is not None and unigram < chance
                  else "picking codes at random")
    choices = 2 ** float(val_bits)
    detail = (f"On held-back sounds: {float(val_bits):.2f} bits per code (like choosing among about {choices:.0f} "
              f"of the {codebook_size} codes at each step); picking at random: {chance:.2f} bits"
              + (f"; the order-free guess: {unigram:.2f} bits" if unigram is not None else "") + ".")
    if _int(steps) and _int(best_step) is not None and steps > 0:
        detail += f" The version kept is from step {best_step} of {steps}."
    early = _int(steps) and _int(best_step) is not None and best_step <= EARLY_BEST_SHARE * steps
    more = "Auto preset, which sizes the model to your collection" if preset == "quick" else "Auto preset"
    if ratio >= LITTLE_RATIO:
        headline = ("The sequence model learned little about how your sounds unfold in time: on sounds it did not "
                    f"train on, it predicts what comes next no better than {order_free}. Generated sounds will be "
                    "close to shuffled noise made of your sounds' colours.")
        if early:
            headline += " It stopped improving almost as soon as it started."
        options = ("Train for more minutes or add more material (more or longer files)" if preset == "auto" else
                   f"Train for more minutes, add more material (more or longer files), or use the {more}")
        advice = f"{options}. Then retrain the sequence model; the sound model can stay."
        level = Learned.LITTLE
    elif ratio >= CLEAR_RATIO:
        gain = (1 - ratio) * 100
        headline = (f"The sequence model learned a little about how your sounds unfold: it predicts what comes next "
                    f"{gain:.0f} % better than {order_free}. Expect textures that echo your material more than "
                    "its phrases.")
        advice = "More minutes or more material usually help it learn more."
        level = Learned.SOME
    else:
        gain = (1 - ratio) * 100
        headline = (f"The sequence model learned how your sounds unfold: it predicts what comes next {gain:.0f} % "
                    f"better than {order_free}.")
        advice = ""
        level = Learned.CLEAR
    return LearningVerdict(level, headline, advice, detail, round(ratio, 4), float(val_bits), round(chance, 4),
                           unigram)


def judge_manifest(manifest: dict | None) -> LearningVerdict | None:
    """The verdict on a run from its manifest (its analysis results and codebook size); None before the analysis."""
    if not isinstance(manifest, dict):
        return None
    results = manifest.get("results") if isinstance(manifest.get("results"), dict) else {}
    analysis = results.get("analysis") if isinstance(results.get("analysis"), dict) else {}
    prior = results.get("prior") if isinstance(results.get("prior"), dict) else {}
    vq = manifest.get("vqvae_config") if isinstance(manifest.get("vqvae_config"), dict) else {}
    options = manifest.get("options") if isinstance(manifest.get("options"), dict) else {}
    return judge_prior(analysis.get("val_nll_bits"), vq.get("codebook_size"), analysis.get("unigram_bits"),
                       prior.get("steps"), prior.get("best_step"), options.get("preset"))


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _int(x):
    return x if isinstance(x, int) and not isinstance(x, bool) else None
