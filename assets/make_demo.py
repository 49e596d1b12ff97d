"""Generate Distill's built-in demo dataset: 16 short synthetic clips (plucks, bells, drums, textures).

    python assets/make_demo.py            # writes assets/demo/*.flac (deterministic)

Everything is synthesised here from a fixed seed, so the repo carries its own training material
without any licence question. The clips are varied on purpose: pitched and unpitched, sharp attacks
and slow textures, so the codebook and the prior have something to learn.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 24_000


def _t(seconds: float) -> np.ndarray:
    return np.arange(int(seconds * SR)) / SR


def pluck(freq: float, seconds: float, rng: np.random.Generator, damping: float = 0.996) -> np.ndarray:
    """Karplus-Strong string: a noise burst circulating in a damped delay line."""
    period = int(SR / freq)
    buf = rng.uniform(-1, 1, period)
    out = np.empty(int(seconds * SR))
    for i in range(out.size):
        j = i % period
        out[i] = buf[j]
        buf[j] = damping * 0.5 * (buf[j] + buf[(j + 1) % period])
    return out


def bell(freq: float, seconds: float) -> np.ndarray:
    """Additive inharmonic partials with per-partial decay (a struck metal bar)."""
    t = _t(seconds)
    partials = [(1.0, 1.0, 1.2), (2.76, 0.6, 2.0), (5.40, 0.4, 3.1), (8.93, 0.25, 4.5), (13.34, 0.12, 6.0)]
    out = sum(a * np.exp(-d * t) * np.sin(2 * np.pi * freq * r * t) for r, a, d in partials)
    return out * (1 - np.exp(-t * 800))


def kick(seconds: float) -> np.ndarray:
    t = _t(seconds)
    freq = 45 + 110 * np.exp(-t * 30)
    phase = 2 * np.pi * np.cumsum(freq) / SR
    return np.sin(phase) * np.exp(-t * 7)


def snare(seconds: float, rng: np.random.Generator) -> np.ndarray:
    t = _t(seconds)
    noise = rng.standard_normal(t.size) * np.exp(-t * 18)
    tone = np.sin(2 * np.pi * 190 * t) * np.exp(-t * 25)
    return 0.6 * noise + 0.5 * tone


def hihat(seconds: float, rng: np.random.Generator, decay: float = 40) -> np.ndarray:
    t = _t(seconds)
    noise = rng.standard_normal(t.size)
    noise = np.diff(noise, prepend=0.0)  # crude high-pass: cymbals live up top
    return noise * np.exp(-t * decay)


def drum_loop(seconds: float, rng: np.random.Generator, bpm: float) -> np.ndarray:
    out = np.zeros(int(seconds * SR))
    step = int(SR * 60 / bpm / 2)
    for i, pos in enumerate(range(0, out.size, step)):
        hit = kick(0.4) if i % 4 == 0 else snare(0.3, rng) if i % 4 == 2 else 0.4 * hihat(0.1, rng)
        end = min(out.size, pos + hit.size)
        out[pos:end] += hit[: end - pos]
    return out


def texture(seconds: float, rng: np.random.Generator, centre: float, width: float) -> np.ndarray:
    """Band-limited noise with a slow swell: wind, breath, rain-like beds."""
    n = int(seconds * SR)
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SR)
    spec *= np.exp(-0.5 * ((f - centre) / width) ** 2)
    out = np.fft.irfft(spec, n)
    t = _t(seconds)
    return out * (0.6 + 0.4 * np.sin(2 * np.pi * 0.4 * t + rng.uniform(0, 6.28)))


def drone(freq: float, seconds: float) -> np.ndarray:
    t = _t(seconds)
    return sum(np.sin(2 * np.pi * freq * k * (1 + 0.002 * np.sin(2 * np.pi * 0.3 * t)) * t) / k for k in range(1, 7))


def arpeggio(base: float, seconds: float, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(int(seconds * SR))
    note = int(0.25 * SR)
    for i, pos in enumerate(range(0, out.size - note // 2, note)):
        semis = [0, 4, 7, 12, 7, 4][i % 6]
        p = pluck(base * 2 ** (semis / 12), 0.6, rng)
        end = min(out.size, pos + p.size)
        out[pos:end] += p[: end - pos]
    return out


def _fade(x: np.ndarray, ms: float = 10) -> np.ndarray:
    n = min(int(SR * ms / 1000), x.size // 2)
    ramp = np.linspace(0, 1, n)
    x = x.copy()
    x[:n] *= ramp
    x[-n:] *= ramp[::-1]
    return x


def clips(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "plucks/pluck_a2.flac": pluck(110.0, 2.5, rng),
        "plucks/pluck_e3.flac": pluck(164.8, 2.5, rng),
        "plucks/pluck_a3_bright.flac": pluck(220.0, 2.0, rng, damping=0.999),
        "plucks/arpeggio_c3.flac": arpeggio(130.8, 3.0, rng),
        "bells/bell_c5.flac": bell(523.3, 3.0),
        "bells/bell_g4.flac": bell(392.0, 3.0),
        "bells/bell_low_d3.flac": bell(146.8, 3.0),
        "drums/kick.flac": np.concatenate([kick(0.5)] * 3),
        "drums/snare.flac": np.concatenate([snare(0.4, rng) for _ in range(4)]),
        "drums/hats.flac": np.concatenate([hihat(0.125, rng, decay=d) for d in [60, 30, 60, 15] * 4]),
        "drums/loop_100bpm.flac": drum_loop(3.0, rng, 100),
        "drums/loop_128bpm.flac": drum_loop(3.0, rng, 128),
        "textures/wind.flac": texture(3.0, rng, 600, 300),
        "textures/hiss.flac": texture(3.0, rng, 5000, 2000),
        "textures/drone_a1.flac": drone(55.0, 3.0),
        "textures/drone_e2.flac": drone(82.4, 3.0),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).parent / "demo"))
    args = ap.parse_args()
    rng = np.random.default_rng(20261123)
    out = Path(args.out)
    for rel, wave in clips(rng).items():
        wave = _fade(wave)
        wave = 0.8 * wave / np.abs(wave).max()
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, wave.astype(np.float32), SR, subtype="PCM_16")
        print(f"{path}  {wave.size / SR:.1f} s")


if __name__ == "__main__":
    main()
