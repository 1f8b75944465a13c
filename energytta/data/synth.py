"""The embedded default dataset: procedurally synthesised, captioned sound clips.

Every clip is drawn from one of 15 sound types and a set of compositional attributes
(pitch, count, tempo, loudness, fade, direction, background). The attributes are chosen
first, the audio is rendered from them, and the caption is written from them, so every
attribute word in a caption is audible and machine-checkable (see tests/test_synth.py).

The test split holds out a few attribute *combinations* (e.g. a high beep three times)
that never occur in train/val, to measure compositional generalisation (as in CLEVR's
CoGenT split). Everything is pure numpy and deterministic given (seed, clip index): each
clip draws from its own `np.random.SeedSequence(seed, spawn_key=(index,))`, so the output
is byte-identical for any number of worker processes.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from energytta.locks import folder_lock
from energytta.utils import atomic_path, atomic_write_text

SR = 16000
SPLITS = {"train": 0.8, "val": 0.1, "test": 0.1}
# Peak levels; loud vs soft is 20*log10(0.9/0.2) = 13 dB apart, unlabelled clips in between.
PEAK = {None: 0.5, "loud": 0.9, "soft": 0.2}
BACKGROUND_RATIO = 0.25  # background peak relative to the foreground peak (-12 dB)
FADE_DB = 30.0  # fade in/out spans 30 dB over the clip
# Onset spacing (seconds) per tempo word; events fill at most 60 % of the spacing so
# that a silent gap separates consecutive onsets.
SPACING = {"fast": (0.16, 0.22), None: (0.3, 0.42), "slow": (0.55, 0.75)}
LEAD = 0.1  # silence before the first event (s)
TAIL = 0.05

# Pitch ranges (Hz) of each pitched type: low / unlabelled / high do not overlap.
PITCH = {
    "beep": {"low": (250, 400), None: (600, 900), "high": (1600, 2400)},
    "bell": {"low": (200, 300), None: (450, 650), "high": (1000, 1400)},
    "pluck": {"low": (90, 140), None: (200, 300), "high": (550, 800)},
    "whistle": {"low": (700, 950), None: (1200, 1500), "high": (2200, 2900)},
    "bark": {"low": (200, 280), None: (380, 480), "high": (650, 800)},
    "siren": {"low": (450, 600), None: (750, 950), "high": (1300, 1700)},
    "engine": {"low": (30, 45), None: (60, 80), "high": (140, 200)},
}
EVENT_TYPES = ("beep", "bell", "pluck", "knock", "noise_burst", "whistle", "bark", "sweep")
TEXTURE_TYPES = ("rain", "wind", "engine", "ticking", "birds", "footsteps", "siren")
TYPES = EVENT_TYPES + TEXTURE_TYPES
BACKGROUND_TYPES = ("rain", "wind", "engine", "birds", "ticking")
DIRECTION_TYPES = {"sweep": 1.0, "whistle": 0.4}  # type -> probability of a direction
TEMPO_TEXTURES = ("ticking", "footsteps")
# Natural event durations (s) before fitting into the onset spacing.
EVENT_DUR = {"beep": (0.1, 0.2), "bell": (0.5, 0.9), "pluck": (0.4, 0.8), "knock": (0.06, 0.1),
             "noise_burst": (0.12, 0.25), "whistle": (0.25, 0.45), "bark": (0.14, 0.22),
             "sweep": (0.3, 0.6)}
# Attribute combinations that only ever appear in the test split.
HELDOUT = [
    {"type": "beep", "pitch": "high", "count": 3},
    {"type": "bell", "pitch": "low", "count": 2},
    {"type": "pluck", "pitch": "high", "count": 4},
    {"type": "bark", "pitch": "high", "count": 2},
    {"type": "whistle", "pitch": "low", "direction": "rising"},
    {"type": "sweep", "direction": "falling", "count": 3},
    {"type": "siren", "background": "rain"},
    {"type": "engine", "pitch": "high", "envelope": "fade_out"},
]


def is_heldout(attrs: dict[str, Any]) -> bool:
    """True when `attrs` contains every key/value of some held-out combination."""
    return any(all(attrs.get(k) == v for k, v in combo.items()) for combo in HELDOUT)


# =========================================================================== DSP helpers
def _time(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float64) / SR


def _ramps(x: np.ndarray, attack: float, release: float) -> np.ndarray:
    """Raised-cosine fade-in/out of `attack`/`release` seconds (avoids clicks)."""
    n = len(x)
    a, r = min(int(attack * SR), n // 2), min(int(release * SR), n // 2)
    env = np.ones(n)
    if a > 0:
        env[:a] = 0.5 - 0.5 * np.cos(np.pi * np.arange(a) / a)
    if r > 0:
        env[n - r:] *= 0.5 + 0.5 * np.cos(np.pi * np.arange(1, r + 1) / r)
    return x * env


def _phase(freq: np.ndarray | float, n: int) -> np.ndarray:
    """Instantaneous phase of a tone with (possibly time-varying) frequency in Hz."""
    f = np.broadcast_to(np.asarray(freq, dtype=np.float64), (n,))
    return 2 * np.pi * np.cumsum(f) / SR


def _band_noise(rng: np.random.Generator, n: int, lo: float, hi: float,
                tilt: float = 0.0, x: np.ndarray | None = None) -> np.ndarray:
    """White noise (or `x`) band-limited to [lo, hi] Hz with a 1/f^tilt slope, unit RMS.

    Filtering in the frequency domain keeps this pure numpy and fast (one FFT pair).
    """
    x = rng.standard_normal(n) if x is None else x
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(n, 1 / SR)
    # Smooth (Gaussian-edged) band so the filter rings little.
    gain = np.exp(-0.5 * (np.maximum(lo - f, 0) / (0.2 * lo + 1)) ** 2)
    gain *= np.exp(-0.5 * (np.maximum(f - hi, 0) / (0.2 * hi)) ** 2)
    gain /= np.maximum(f, lo * 0.5 + 1) ** (tilt / 2)
    y = np.fft.irfft(spec * gain, n)
    return y / (np.sqrt(np.mean(y**2)) + 1e-12)


def _smooth_random(rng: np.random.Generator, n: int, rate: float, lo: float,
                   hi: float) -> np.ndarray:
    """A slowly varying random curve in [lo, hi] with about `rate` new values per second."""
    k = max(2, int(n / SR * rate) + 2)
    knots = rng.uniform(lo, hi, k)
    x = np.linspace(0, k - 1, n)
    i = np.minimum(x.astype(int), k - 2)
    w = x - i
    w = w * w * (3 - 2 * w)  # smoothstep: no corners in the gust envelope
    return knots[i] * (1 - w) + knots[i + 1] * w


def _place(out: np.ndarray, x: np.ndarray, start: int) -> None:
    end = min(len(out), start + len(x))
    if end > start:
        out[start:end] += x[:end - start]


# ======================================================================= event sounds
# Each takes (rng, n samples, f0 Hz, attrs) and returns one event of length n.
def _beep(rng, n, f0, attrs):
    return _ramps(np.sin(_phase(f0, n) + rng.uniform(0, 2 * np.pi)), 0.005, 0.005)


def _bell(rng, n, f0, attrs):
    t = _time(n)
    ratios, amps, taus = (1.0, 2.0, 2.76, 4.07, 5.4), (1, .6, .5, .3, .2), (.6, .4, .25, .15, .1)
    x = sum(a * np.exp(-t / tau) * np.sin(_phase(f0 * r, n))
            for r, a, tau in zip(ratios, amps, taus))
    return _ramps(x, 0.002, 0.15 * n / SR)


def _pluck(rng, n, f0, attrs):
    t = _time(n)
    pos = rng.uniform(0.15, 0.3)  # pluck position along the string shapes the harmonics
    x = sum(np.sin(np.pi * k * pos) / k * np.exp(-t * (2 + 1.5 * k)) * np.sin(_phase(f0 * k, n))
            for k in range(1, 13))
    return _ramps(x, 0.002, 0.15 * n / SR)


def _knock(rng, n, f0, attrs):
    t = _time(n)
    body = np.exp(-t / 0.025) * np.sin(_phase(rng.uniform(150, 250), n))
    click = 0.5 * np.exp(-t / 0.004) * _band_noise(rng, n, 800, 4000)
    return _ramps(body + click, 0.001, 0.2 * n / SR)


def _noise_burst(rng, n, f0, attrs):
    return _ramps(_band_noise(rng, n, 100, 7500), 0.004, 0.01)


def _glide(f0: float, n: int, direction: str | None, span: float) -> np.ndarray:
    """Geometric pitch glide around f0 spanning `span` (ratio), or a flat pitch."""
    if direction is None:
        return np.full(n, f0)
    lo, hi = f0 / np.sqrt(span), f0 * np.sqrt(span)
    a, b = (lo, hi) if direction == "rising" else (hi, lo)
    return a * (b / a) ** np.linspace(0, 1, n)


def _whistle(rng, n, f0, attrs):
    t = _time(n)
    f = _glide(f0, n, attrs.get("direction"), 1.6) * (1 + 0.015 * np.sin(2 * np.pi * 5.5 * t))
    x = np.sin(_phase(f, n)) + 0.05 * _band_noise(rng, n, 1000, 5000)
    return _ramps(x, 0.02, 0.03)


def _bark(rng, n, f0, attrs):
    t = _time(n)
    f = f0 * (1 + 0.3 * np.exp(-t / 0.02)) * (1 - 0.25 * t / t[-1])
    ph = _phase(f, n)
    x = np.zeros(n)
    for k in range(1, 16):  # harmonics coloured by two formants (~700 Hz and ~1.6 kHz);
        fk = f0 * k  # the fundamental stays strongest so "high"/"low" is the dominant pitch
        w = np.exp(-0.5 * ((fk - 700) / 300) ** 2) + 0.6 * np.exp(-0.5 * ((fk - 1600) / 400) ** 2)
        x += (1.0 / k + 0.4 * w) * np.sin(k * ph)
    x = x / np.max(np.abs(x)) + 0.15 * _band_noise(rng, n, 300, 4000)
    env = np.minimum(t / 0.01, 1) * np.exp(-t / (0.4 * t[-1]))
    return _ramps(x * env, 0.0, 0.02)


def _sweep(rng, n, f0, attrs):
    lo, hi = rng.uniform(300, 500), rng.uniform(1800, 3000)
    a, b = (lo, hi) if attrs["direction"] == "rising" else (hi, lo)
    f = a * (b / a) ** np.linspace(0, 1, n)
    return _ramps(np.sin(_phase(f, n)), 0.01, 0.01)


EVENTS: dict[str, Callable[..., np.ndarray]] = {
    "beep": _beep, "bell": _bell, "pluck": _pluck, "knock": _knock,
    "noise_burst": _noise_burst, "whistle": _whistle, "bark": _bark, "sweep": _sweep,
}


# ===================================================================== texture sounds
# Each takes (rng, n samples, f0 Hz, attrs) and fills the whole clip.
def _rain(rng, n, f0, attrs):
    hiss = _band_noise(rng, n, 800, 7000, tilt=0.5)
    drops = np.zeros(n)
    k = rng.poisson(80 * n / SR)  # ~80 droplets per second
    drops[rng.integers(0, n, k)] = rng.uniform(0.3, 1.0, k) * rng.choice([-1, 1], k)
    drops = _band_noise(rng, n, 2000, 6000, x=drops)
    return 0.5 * hiss * _smooth_random(rng, n, 3, 0.7, 1.0) + drops


def _wind(rng, n, f0, attrs):
    rumble = _band_noise(rng, n, 60, 900, tilt=1.0)
    return rumble * _smooth_random(rng, n, 1.5, 0.15, 1.0)


def _engine(rng, n, f0, attrs):
    t = _time(n)
    ph = _phase(f0 * (1 + 0.01 * np.sin(2 * np.pi * 0.7 * t)), n)
    x = sum(rng.uniform(0.6, 1.0) / k**0.8 * np.sin(k * ph) for k in range(1, 11))
    firing = 1 + 0.3 * np.sin(ph / 2)  # cylinder firing at half the fundamental
    return x * firing + 0.1 * _band_noise(rng, n, 50, 1500, tilt=1.0)


def _regular_onsets(rng, n: int, tempo: str | None, base: dict) -> np.ndarray:
    """Onset sample indices at the tempo's interval with a few % jitter."""
    step = rng.uniform(*base[tempo])
    times = np.arange(rng.uniform(0, step), n / SR, step)
    times += rng.normal(0, 0.03 * step, len(times))
    return np.clip((times * SR).astype(int), 0, n - 1)


def _ticking(rng, n, f0, attrs):
    base = {"fast": (0.12, 0.16), None: (0.3, 0.4), "slow": (0.7, 0.9)}
    out = np.zeros(n)
    m = int(0.006 * SR)
    decay = np.exp(-_time(m) / 0.0015)
    for j, s in enumerate(_regular_onsets(rng, n, attrs.get("tempo"), base)):
        lo = 3000 if j % 2 == 0 else 1500  # alternate "tick" and "tock"
        _place(out, decay * _band_noise(rng, m, lo, lo * 2), s)
    return out


def _birds(rng, n, f0, attrs):
    out = np.zeros(n)
    for s in np.sort(rng.integers(0, n, rng.poisson(5 * n / SR) + 1)):
        m = int(rng.uniform(0.04, 0.09) * SR)
        f = np.linspace(rng.uniform(4000, 6000), rng.uniform(2500, 3500), m)
        ph = _phase(f, m)
        chirp = np.sin(ph) + 0.2 * np.sin(2 * ph)
        _place(out, chirp * np.hanning(m) * rng.uniform(0.4, 1.0), s)
    return out


def _footsteps(rng, n, f0, attrs):
    base = {"fast": (0.26, 0.32), None: (0.45, 0.55), "slow": (0.75, 0.9)}
    out = np.zeros(n)
    m = int(0.12 * SR)
    t = _time(m)
    for s in _regular_onsets(rng, n, attrs.get("tempo"), base):
        thud = np.exp(-t / 0.02) * (_band_noise(rng, m, 60, 600, tilt=1.0)
                                    + np.sin(_phase(rng.uniform(60, 90), m)))
        _place(out, thud * rng.uniform(0.7, 1.0), s)
    return out


def _siren(rng, n, f0, attrs):
    t = _time(n)
    period = rng.uniform(1.2, 2.5)
    f = f0 * (1 + 0.25 * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi)))
    ph = _phase(f, n)
    return np.sin(ph) + 0.3 * np.sin(3 * ph) + 0.15 * np.sin(5 * ph)


TEXTURES: dict[str, Callable[..., np.ndarray]] = {
    "rain": _rain, "wind": _wind, "engine": _engine, "ticking": _ticking,
    "birds": _birds, "footsteps": _footsteps, "siren": _siren,
}


# ========================================================================= attributes
def _count_fits(count: int, tempo: str | None, seconds: float) -> bool:
    lo = SPACING[tempo][0]
    return LEAD + (count - 1) * lo + 0.6 * lo + TAIL <= seconds


def _choose(rng: np.random.Generator, options: list, probs: list[float]) -> Any:
    p = np.asarray(probs, dtype=np.float64)
    return options[int(rng.choice(len(options), p=p / p.sum()))]


def _event_attrs(rng, kind: str, attrs: dict, forced: dict, seconds: float) -> None:
    counts = [c for c in range(1, 6) if _count_fits(c, "fast", seconds)]
    attrs["count"] = forced.get("count", int(rng.choice(counts)))
    if "tempo" in forced:
        attrs["tempo"] = forced["tempo"]
    elif attrs["count"] > 1:
        options = [t for t in (None, "fast", "slow") if _count_fits(attrs["count"], t, seconds)]
        tempo = _choose(rng, options, [{None: 0.4}.get(t, 0.3) for t in options])
        if tempo is not None:
            attrs["tempo"] = tempo
    if "tempo" in attrs and not _count_fits(attrs["count"], attrs["tempo"], seconds):
        raise ValueError(f"{attrs} does not fit in {seconds} s")


def _optional(rng, attrs: dict, forced: dict, key: str, p: float, values: list) -> None:
    """Set attrs[key] from `forced`, else with probability p to a random value."""
    if key in forced:
        attrs[key] = forced[key]
    elif rng.random() < p:
        attrs[key] = values[int(rng.integers(len(values)))]


def sample_attributes(rng: np.random.Generator, seconds: float,
                      forced: dict[str, Any] | None = None) -> dict[str, Any]:
    """Draw a consistent attribute set for one clip.

    Args:
        rng: the clip's generator.
        seconds: clip length (limits how many events fit).
        forced: attributes that must take the given values (held-out combinations).
    Returns:
        attrs: `type` plus only the attributes this clip really has.
    """
    forced = forced or {}
    kind = forced.get("type", TYPES[int(rng.integers(len(TYPES)))])
    attrs: dict[str, Any] = {"type": kind}
    if kind in PITCH:
        _optional(rng, attrs, forced, "pitch", 0.7, ["low", "high"])
    if kind in DIRECTION_TYPES:
        _optional(rng, attrs, forced, "direction", DIRECTION_TYPES[kind], ["rising", "falling"])
    if kind in EVENT_TYPES:
        _event_attrs(rng, kind, attrs, forced, seconds)
    elif kind in TEMPO_TEXTURES:
        _optional(rng, attrs, forced, "tempo", 0.7, ["fast", "slow"])
    _optional(rng, attrs, forced, "loudness", 0.35, ["loud", "soft"])
    if kind in TEXTURE_TYPES:
        _optional(rng, attrs, forced, "envelope", 0.3, ["fade_in", "fade_out"])
    backgrounds = [b for b in BACKGROUND_TYPES if b != kind]
    _optional(rng, attrs, forced, "background", 0.3, backgrounds)
    return attrs


def attributes_for_split(rng: np.random.Generator, seconds: float,
                         split: str) -> dict[str, Any]:
    """Train/val never match a held-out combination; half of test is held-out items."""
    if split == "test" and rng.random() < 0.5:
        combo = HELDOUT[int(rng.integers(len(HELDOUT)))]
        attrs = sample_attributes(rng, seconds, forced=combo)
        attrs["heldout"] = True
        return attrs
    while True:  # rejection sampling: held-out combinations are a small fraction
        attrs = sample_attributes(rng, seconds)
        if not is_heldout(attrs):
            if split == "test":
                attrs["heldout"] = False
            return attrs


# ========================================================================== rendering
def _pitch_hz(rng, attrs: dict) -> float:
    ranges = PITCH.get(attrs["type"])
    return float(rng.uniform(*ranges[attrs.get("pitch")])) if ranges else 0.0


def _render_events(rng, attrs: dict, n: int) -> np.ndarray:
    seconds, count = n / SR, attrs["count"]
    lo, hi = SPACING[attrs.get("tempo")]
    fit = (seconds - LEAD - TAIL) / (count - 1 + 0.6)  # so that the last event ends in time
    spacing = rng.uniform(lo, min(hi, fit)) if count > 1 else seconds
    dur = rng.uniform(*EVENT_DUR[attrs["type"]])
    dur = min(dur, 0.6 * spacing) if count > 1 else min(dur, seconds - LEAD - TAIL)
    slack = seconds - LEAD - TAIL - (count - 1) * spacing - dur
    start = LEAD + rng.uniform(0, max(slack, 0) * 0.5)
    f0 = _pitch_hz(rng, attrs)
    out = np.zeros(n)
    m = int(dur * SR)
    for j in range(count):
        event = EVENTS[attrs["type"]](rng, m, f0, attrs)
        _place(out, event / (np.max(np.abs(event)) + 1e-12), int((start + j * spacing) * SR))
    return out


def _fade(n: int, envelope: str | None) -> np.ndarray:
    if envelope is None:
        return np.ones(n)
    db = np.linspace(-FADE_DB, 0, n) if envelope == "fade_in" else np.linspace(0, -FADE_DB, n)
    return 10 ** (db / 20)


def _peak_normalize(x: np.ndarray, peak: float) -> np.ndarray:
    return x * (peak / (np.max(np.abs(x)) + 1e-12))


def render(rng: np.random.Generator, attrs: dict[str, Any], seconds: float) -> np.ndarray:
    """Synthesise the clip described by `attrs`.

    Args:
        rng: the clip's generator.
        attrs: from `sample_attributes`.
        seconds: clip length.
    Returns:
        wav: (round(seconds*SR),) float32, peak at PEAK[attrs.get("loudness")].
    """
    n = int(round(seconds * SR))
    kind = attrs["type"]
    if kind in EVENTS:
        fg = _render_events(rng, attrs, n)
    else:
        fg = TEXTURES[kind](rng, n, _pitch_hz(rng, attrs), attrs)
    fg = _peak_normalize(fg, 1.0) * _fade(n, attrs.get("envelope"))
    if "background" in attrs:
        bg = TEXTURES[attrs["background"]](rng, n, _pitch_hz(rng, {"type": attrs["background"]}),
                                           {})
        fg = fg + _peak_normalize(bg, BACKGROUND_RATIO * np.max(np.abs(fg)))
    return _peak_normalize(fg, PEAK[attrs.get("loudness")]).astype(np.float32)


# =========================================================================== captions
def _pick(rng, options: list | tuple) -> Any:
    return options[int(rng.integers(len(options)))]


PITCH_WORDS = {"low": ["low", "low-pitched", "deep"], "high": ["high", "high-pitched", "shrill"]}
LOUD_WORDS = {"loud": ["loud", "loud"], "soft": ["soft", "quiet", "faint"]}
DIRECTION_WORDS = {"rising": ["rising", "upward", "ascending"],
                   "falling": ["falling", "downward", "descending"]}
COUNT_ADV = {1: ["once", "one time"], 2: ["twice", "two times"], 3: ["three times"],
             4: ["four times"], 5: ["five times"]}
NUMBER = {2: "two", 3: "three", 4: "four", 5: "five"}
TEMPO_ADV = {"fast": ["quickly", "rapidly", "in quick succession", "in rapid succession"],
             "slow": ["slowly", "with long pauses", "at a slow pace"]}
TEMPO_ADJ = {"fast": ["rapid", "quick", "fast"], "slow": ["slow", "slowly spaced", "widely spaced"]}
ENV_ING = {"fade_in": ["fading in", "growing louder", "getting louder", "gradually getting louder"],
           "fade_out": ["fading out", "fading away", "growing quieter", "dying down"]}
ENV_VERB = {"fade_in": ["fades in", "grows louder", "gets louder"],
            "fade_out": ["fades away", "fades out", "gets quieter"]}
ENV_VERB_PLURAL = {"fade_in": ["fade in", "grow louder", "get louder"],
                   "fade_out": ["fade away", "fade out", "get quieter"]}
PLURAL_TEXTURES = ("birds", "footsteps")
TEMPO_PP = {"fast": ["in quick succession", "in rapid succession"],
            "slow": ["with long pauses", "with long gaps between them"]}
# Event types: (singular, plural, verbs that fit the singular noun).
EVENT_WORDS = {
    "beep": [("beep", "beeps", ["sounds", "goes off"]), ("bleep", "bleeps", ["sounds"]),
             ("electronic beep", "electronic beeps", ["sounds", "goes off"]),
             ("tone", "tones", ["sounds", "beeps"])],
    "bell": [("bell", "bell chimes", ["rings", "chimes", "is struck"]),
             ("chime", "chimes", ["rings", "sounds"])],
    "pluck": [("plucked string", "plucked notes", ["sounds", "twangs", "rings out"]),
              ("string pluck", "string plucks", ["sounds"]),
              ("guitar-like pluck", "guitar-like plucks", ["sounds", "rings out"])],
    "knock": [("knock", "knocks", ["sounds"]), ("knock on wood", "knocks on wood", ["sounds"]),
              ("door knock", "door knocks", ["sounds", "raps"])],
    "noise_burst": [("burst of noise", "bursts of noise", ["sounds"]),
                    ("noise burst", "noise bursts", ["sounds", "hisses"]),
                    ("burst of static", "bursts of static", ["sounds", "crackles"])],
    "whistle": [("whistle", "whistles", ["sounds", "blows"]),
                ("whistled note", "whistled notes", ["sounds", "rings out"])],
    "bark": [("dog-like bark", "dog-like barks", ["sounds", "rings out"]),
             ("bark", "barks", ["sounds"]), ("dog bark", "dog barks", ["sounds", "rings out"])],
    "sweep": [("sweep", "sweeps", ["sounds", "plays"]), ("tone sweep", "tone sweeps", ["sounds"]),
              ("chirp", "chirps", ["sounds"]), ("glide", "glides", ["sounds", "plays"])],
}
# Texture types: (article, noun, verbs that agree with it).
TEXTURE_WORDS = {
    "rain": [("", "rain", ["falls", "patters"]), ("", "rainfall", ["patters", "continues"]),
             ("", "steady rain", ["falls", "patters"])],
    "wind": [("", "wind", ["blows", "rushes", "whooshes"]),
             ("", "gusting wind", ["blows", "rushes", "whooshes"])],
    "engine": [("a", "engine", ["hums", "drones", "runs"]), ("a", "motor", ["hums", "drones"]),
               ("a", "engine hum", ["drones on", "continues"])],
    "ticking": [("a", "clock", ["ticks"]), ("a", "ticking clock", ["goes on", "is heard"])],
    "birds": [("", "birds", ["chirp", "tweet", "twitter"]),
              ("", "small birds", ["chirp", "tweet"]), ("", "songbirds", ["chirp", "twitter"])],
    "footsteps": [("", "footsteps", ["thud", "sound", "fall"]), ("", "steps", ["sound", "thud"])],
    "siren": [("a", "siren", ["wails", "sounds"]), ("a", "wailing siren", ["sounds"]),
              ("a", "emergency siren", ["wails", "sounds"])],
}
BACKGROUND_WORDS = {
    "rain": (["rain", "rainfall"], ["rain falls", "rain patters"]),
    "wind": (["wind", "blowing wind"], ["wind blows", "the wind rushes"]),
    "engine": (["an engine hum", "a humming engine"], ["an engine hums", "a motor drones"]),
    "birds": (["birds chirping", "chirping birds"], ["birds chirp", "birds tweet"]),
    "ticking": (["a ticking clock", "a clock ticking"], ["a clock ticks"]),
}


def _article(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def _adjectives(rng, attrs: dict) -> list[str]:
    """Loudness, pitch, direction words (in English adjective order)."""
    adj = []
    for key, table in (("loudness", LOUD_WORDS), ("pitch", PITCH_WORDS),
                       ("direction", DIRECTION_WORDS)):
        if key in attrs:
            adj.append(_pick(rng, table[attrs[key]]))
    return adj


def _event_caption(rng, attrs: dict) -> str:
    sg, pl, verbs = _pick(rng, EVENT_WORDS[attrs["type"]])
    np_sg = " ".join(_adjectives(rng, attrs) + [sg])
    count, tempo = attrs["count"], attrs.get("tempo")
    if count == 1:
        return _pick(rng, [f"{_article(np_sg)} {_pick(rng, verbs)} once",
                           f"a single {np_sg}",
                           f"{_article(np_sg)} {_pick(rng, verbs)}"])
    adv = f" {_pick(rng, TEMPO_ADV[tempo])}" if tempo else ""
    pp = f" {_pick(rng, TEMPO_PP[tempo])}" if tempo else ""
    tempo_adj = f"{_pick(rng, TEMPO_ADJ[tempo])} " if tempo else ""
    np_pl = " ".join(_adjectives(rng, attrs) + [pl])
    times = _pick(rng, COUNT_ADV[count])
    return _pick(rng, [
        f"{_article(np_sg)} {_pick(rng, verbs)} {times}{adv}",
        f"{NUMBER[count]} {tempo_adj}{np_pl}",
        f"{NUMBER[count]} {np_pl}{pp}",
        f"{_article(np_sg)} is heard {times}{adv}",
    ])


def _texture_caption(rng, attrs: dict) -> str:
    article, head, verbs = _pick(rng, TEXTURE_WORDS[attrs["type"]])
    np_ = " ".join(_adjectives(rng, attrs) + [head])
    np_ = _article(np_) if article else np_
    tempo, env = attrs.get("tempo"), attrs.get("envelope")
    adv = f" {_pick(rng, TEMPO_ADV[tempo])}" if tempo else ""
    clause = f"{np_} {_pick(rng, verbs)}{adv}"
    env_verbs = ENV_VERB_PLURAL if attrs["type"] in PLURAL_TEXTURES else ENV_VERB
    if env is None:
        return clause if tempo else _pick(rng, [clause, f"the sound of {np_}"])
    options = [f"{clause}, {_pick(rng, ENV_ING[env])}",
               f"{clause} and {_pick(rng, env_verbs[env])}"]
    if not tempo:  # "the sound of a clock slowly fading" would tie the tempo to the fade
        options.append(f"the sound of {np_} {_pick(rng, ENV_ING[env])}")
    return _pick(rng, options)


def make_caption(rng: np.random.Generator, attrs: dict[str, Any]) -> str:
    """A natural-language caption whose every attribute word is true of `attrs`."""
    main = _event_caption(rng, attrs) if attrs["type"] in EVENTS else _texture_caption(rng, attrs)
    if "background" in attrs:
        nps, clauses = BACKGROUND_WORDS[attrs["background"]]
        main += _pick(rng, [f" with {_pick(rng, nps)} in the background",
                            f" while {_pick(rng, clauses)} in the background",
                            f", {_pick(rng, nps)} in the background"])
    return main[0].upper() + main[1:]


# ========================================================================= generation
@dataclass(frozen=True)
class Job:
    index: int
    split: str
    seconds: float
    seed: int
    out: str


def clip_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of clip `index`: independent of worker count and clip order."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def _write_wav(path: Path, wav: np.ndarray) -> None:
    try:
        from energytta.audio.io import write_wav
    except ImportError:  # the audio package may not be installed in a minimal setup
        write_wav = None
    if write_wav is not None:
        write_wav(path, wav, SR)
        return
    import soundfile as sf

    with atomic_path(path) as tmp:
        sf.write(str(tmp), np.clip(wav, -1, 1), SR, subtype="PCM_16", format="WAV")


def make_clip(job: Job) -> tuple[int, str, dict[str, Any]]:
    """Render, write and describe one clip; returns (index, split, manifest record)."""
    rng = clip_rng(job.seed, job.index)
    attrs = attributes_for_split(rng, job.seconds, job.split)
    wav = render(rng, attrs, job.seconds)
    caption = make_caption(rng, attrs)
    rel = f"audio/{job.index:06d}.wav"
    _write_wav(Path(job.out) / rel, wav)
    return job.index, job.split, {"audio": rel, "caption": caption, "attributes": attrs}


def split_of(index: int, num: int) -> str:
    """Contiguous index ranges: the first 80 % train, then 10 % val, then test."""
    n_train = int(round(num * SPLITS["train"]))
    n_val = int(round(num * SPLITS["val"]))
    return "train" if index < n_train else "val" if index < n_train + n_val else "test"


def _progress():
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    return Progress(TextColumn("[bold]synth"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), transient=False)


def _run_jobs(jobs: list[Job], workers: int, progress: bool) -> list[tuple]:
    """Run `make_clip` over `jobs` (in `workers` processes); results sorted by index."""
    bar = _progress() if progress else None
    task = bar.add_task("synth", total=len(jobs)) if bar else None
    results = []

    def collect(it) -> None:
        for r in it:
            results.append(r)
            if bar:
                bar.advance(task)

    if bar:
        bar.start()
    try:
        if workers <= 1:
            collect(map(make_clip, jobs))
        else:
            # spawned, not forked: a fork copies the caller's threads' held locks (torch's
            # pool, a server's threads), and a child that needs one waits forever
            with mp.get_context("spawn").Pool(workers) as pool:
                collect(pool.imap_unordered(make_clip, jobs, chunksize=8))
    finally:
        if bar:
            bar.stop()
    return sorted(results, key=lambda r: r[0])


def generate(out: str | Path, num: int, seconds: float, seed: int = 0,
             workers: int | None = None, progress: bool = True) -> dict[str, int]:
    """Write the corpus: `out/audio/*.wav`, `out/{train,val,test}.jsonl`,
    `out/heldout_combinations.json`.

    Args:
        out: output folder (created).
        num: number of clips over all splits.
        seconds: clip length.
        seed: corpus seed; same seed -> identical files.
        workers: processes (default: number of CPUs); does not change the output.
        progress: show a rich progress bar.
    Returns:
        counts: clips per split.
    """
    out = Path(out)
    # one writer per corpus folder: two runs into one folder paired one's captions with
    # the other's audio
    with folder_lock(out, "energytta-data synth", "pass another --out"):
        return _generate(out, num, seconds, seed, workers, progress)


def _generate(out: Path, num: int, seconds: float, seed: int, workers: int | None,
              progress: bool) -> dict[str, int]:
    """`generate`'s work, done while holding the folder's lock."""
    (out / "audio").mkdir(parents=True, exist_ok=True)
    workers = workers or os.cpu_count() or 1
    jobs = [Job(i, split_of(i, num), float(seconds), int(seed), str(out)) for i in range(num)]
    results = _run_jobs(jobs, workers, progress)
    lines: dict[str, list[str]] = {s: [] for s in SPLITS}
    for _, split, record in results:
        lines[split].append(json.dumps(record, sort_keys=True))
    for split, rows in lines.items():  # manifests last: a crash never leaves a partial one
        atomic_write_text(out / f"{split}.jsonl", "".join(r + "\n" for r in rows))
    atomic_write_text(out / "heldout_combinations.json", json.dumps(HELDOUT, indent=1) + "\n")
    return {s: len(r) for s, r in lines.items()}
