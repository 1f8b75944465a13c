"""Analytic detectors of the synthetic corpus's caption attributes (energytta.data.synth).

Each detector measures how the generator realises an attribute, on a 16 kHz waveform:

- loudness: the clip's peak level (synth peak-normalises to 0.9 / 0.5 / 0.2 for loud /
  unlabelled / soft; thresholds at the geometric midpoints).
- pitch: the dominant spectral peak of the loud frames, searched inside the type's pitch
  ranges (synth.PITCH) and assigned to the nearest range on a log-frequency axis.
- count: onsets (with hysteresis) of the level envelope in the type's frequency band, a
  stationary background removed per frequency bin (events are separated by silent gaps:
  they fill at most 60 % of the onset spacing).
- tempo: median inter-onset interval, against the midpoints of synth.SPACING (events) or the
  ticking / footsteps spacings.
- direction: slope of the log peak frequency over time inside each loud segment.
- envelope: level change (dB over the clip) of a Theil-Sen line through the 1-s upper
  envelope of the level in the texture's band (fades span 30 dB).
Type and background are not detected (they need a classifier: see synth-classifier).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import scipy.stats

from energytta.data import synth

SR = synth.SR
STEP = 80  # 5 ms hop of the level envelopes
ON_DB, OFF_DB = -12.0, -20.0  # onset hysteresis, dB below the loudest frame
MIN_GAP = 0.03  # s; shorter dips do not split an event
# Peak thresholds between soft / unlabelled / loud: geometric midpoints of synth.PEAK.
LOUD_EDGES = (np.sqrt(synth.PEAK["soft"] * synth.PEAK[None]),
              np.sqrt(synth.PEAK[None] * synth.PEAK["loud"]))
EVENT_TEMPO = {"fast": synth.SPACING["fast"], None: synth.SPACING[None],
               "slow": synth.SPACING["slow"]}
TEXTURE_TEMPO = {"ticking": {"fast": (0.12, 0.16), None: (0.3, 0.4), "slow": (0.7, 0.9)},
                 "footsteps": {"fast": (0.26, 0.32), None: (0.45, 0.55), "slow": (0.75, 0.9)}}
# Frequency band (Hz) where each type's events carry their energy; onsets are found there
# so that a background in another band (birds, engine hum) adds no onsets.
# Bird chirps (a background) start at 2.5 kHz and wind stops near 900 Hz, hence e.g. the
# noise-burst band.
ONSET_BAND = {"beep": (200, 2450), "bell": (150, 2400), "pluck": (80, 2400),
              "knock": (100, 2400), "noise_burst": (950, 2400), "whistle": (500, 4000),
              "bark": (180, 2400), "sweep": (250, 3500), "ticking": (1400, 7000),
              "footsteps": (40, 700)}
# Band of each texture for the fade detector (a background elsewhere does not fade).
TEXTURE_BAND = {"rain": (800, 7000), "wind": (60, 900), "engine": (25, 2000),
                "ticking": (1400, 7000), "birds": (2400, 6500), "footsteps": (40, 700),
                "siren": (300, 2500)}
PITCH_WINDOW = {"engine": 8192, "siren": 2048}  # long frames resolve the low engine tones
DIRECTION_SLOPE = 0.5  # |d ln f / dt| per second below this = no glide (vibrato is ~0.5)
ENVELOPE_DB = 9.0  # |level change over the clip| above this = a fade


# ------------------------------------------------------------------------ primitives
def band_envelope_db(wav: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Foreground level (dB, re its max) in [lo, hi] Hz of 32 ms frames every 5 ms: (T,).

    A stationary background (rain, wind, engine hum) is removed first: each frequency bin's
    10th-percentile power over time is its floor, and only power above 3x the floor counts.
    """
    win = 512
    _, freqs, mag = _spectral_frames(wav, win, hop=STEP, pad=1)
    power = mag[:, (freqs >= lo) & (freqs <= hi)] ** 2  # (T, K)
    floor = np.percentile(power, 10, axis=0, keepdims=True)
    level = np.maximum(power - 3 * floor, 0).sum(axis=1)
    db = 10 * np.log10(level + 1e-20)
    return db - db.max()


def onsets(wav: np.ndarray, lo: float = 20.0, hi: float = 8000.0) -> np.ndarray:
    """Onset times (s) of events in [lo, hi] Hz: rises above ON_DB after a dip below OFF_DB."""
    db = band_envelope_db(wav, lo, hi)
    times, active, last_off = [], False, -1.0
    for i, level in enumerate(db):
        t = i * STEP / SR
        if not active and level > ON_DB:
            if times and t - last_off < MIN_GAP:
                active = True  # a short dip: same event
                continue
            times.append(t)
            active = True
        elif active and level < OFF_DB:
            active, last_off = False, t
    return np.asarray(times)


def _spectral_frames(wav: np.ndarray, win: int, hop: int | None = None, pad: int = 4
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(times (T,), freqs (K,), magnitudes (T, K)) of Hann frames hopped by `hop`
    (default win // 4), zero-padded `pad` times for a finer peak position."""
    hop = hop or max(win // 4, 1)
    wav = np.pad(wav, (0, max(0, win - len(wav))))
    n = 1 + (len(wav) - win) // hop
    idx = np.arange(win)[None, :] + hop * np.arange(n)[:, None]
    mag = np.abs(np.fft.rfft(wav[idx] * np.hanning(win), n=pad * win))
    return (idx[:, 0] + win / 2) / SR, np.fft.rfftfreq(pad * win, 1 / SR), mag


def peak_track(wav: np.ndarray, lo: float, hi: float, win: int = 1024,
               floor_db: float = -10.0) -> tuple[np.ndarray, np.ndarray]:
    """Peak frequency (Hz) inside [lo, hi] of the frames within `floor_db` of the loudest.

    Returns (times (T',), frequencies (T',)) of those frames.
    """
    times, freqs, mag = _spectral_frames(wav, win)
    band = (freqs >= lo) & (freqs <= hi)
    energy = (mag[:, band] ** 2).sum(axis=1)
    keep = 10 * np.log10(energy / (energy.max() + 1e-20) + 1e-20) > floor_db
    peaks = freqs[band][np.argmax(mag[keep][:, band], axis=1)]
    return times[keep], peaks


# ------------------------------------------------------------------------- detectors
# Every detector takes (wav (S,) float at 16 kHz, the caption's attributes — for the type)
# and returns the attribute's value in synth's vocabulary (None = the unlabelled default).
def detect_loudness(wav: np.ndarray, attrs: dict) -> str | None:
    """"loud" / None / "soft" from the clip's peak."""
    peak = float(np.max(np.abs(wav)))
    return "soft" if peak < LOUD_EDGES[0] else "loud" if peak > LOUD_EDGES[1] else None


def detect_pitch(wav: np.ndarray, attrs: dict) -> str | None:
    """"low" / None / "high": the type's pitch range nearest the median dominant peak."""
    ranges = synth.PITCH[attrs["type"]]
    lo = min(r[0] for r in ranges.values()) / 1.4
    hi = max(r[1] for r in ranges.values()) * 1.4
    _, f = peak_track(wav, lo, hi, PITCH_WINDOW.get(attrs["type"], 1024))
    if len(f) == 0:
        return None
    logf = np.median(np.log(f))
    centres = {k: 0.5 * (np.log(a) + np.log(b)) for k, (a, b) in ranges.items()}
    return min(centres, key=lambda k: abs(centres[k] - logf))


def detect_count(wav: np.ndarray, attrs: dict) -> int:
    """Number of onsets in the type's band."""
    return int(len(onsets(wav, *ONSET_BAND[attrs["type"]])))


def _tempo_from_spacing(spacing: float, table: dict) -> str | None:
    order = ["fast", None, "slow"]
    edges = [np.sqrt(table[a][1] * table[b][0]) for a, b in zip(order, order[1:])]
    return "fast" if spacing < edges[0] else None if spacing < edges[1] else "slow"


def detect_tempo(wav: np.ndarray, attrs: dict) -> str | None:
    """"fast" / None / "slow" from the median inter-onset interval (None below 2 onsets)."""
    t = onsets(wav, *ONSET_BAND[attrs["type"]])
    if len(t) < 2:
        return None
    table = TEXTURE_TEMPO.get(attrs["type"], EVENT_TEMPO)
    return _tempo_from_spacing(float(np.median(np.diff(t))), table)


def detect_direction(wav: np.ndarray, attrs: dict) -> str | None:
    """"rising" / None / "falling" from the within-segment slope of log peak frequency."""
    times, f = peak_track(wav, 150.0, 5000.0, 512, floor_db=-15.0)
    if len(f) < 3:
        return None
    # Split into loud segments (gaps between kept frames) and pool within-segment slopes.
    cuts = np.flatnonzero(np.diff(times) > 0.02) + 1
    num = den = 0.0
    for t, lf in zip(np.split(times, cuts), np.split(np.log(f), cuts)):
        if len(t) >= 3:
            tc = t - t.mean()
            num += float((tc * (lf - lf.mean())).sum())
            den += float((tc ** 2).sum())
    if den == 0:
        return None
    slope = num / den  # d ln f / dt, 1/s
    return "rising" if slope > DIRECTION_SLOPE else "falling" if slope < -DIRECTION_SLOPE else None


def level_change_db(wav: np.ndarray, lo: float = 20.0, hi: float = 8000.0) -> float:
    """Level change (dB) over the clip in [lo, hi] Hz: slope of a line fitted to the upper
    envelope (max frame level over a sliding 1 s window, which bridges the gaps of sparse
    textures such as slow footsteps)."""
    _, freqs, mag = _spectral_frames(wav, 512, hop=STEP, pad=1)
    db = 10 * np.log10((mag[:, (freqs >= lo) & (freqs <= hi)] ** 2).sum(axis=1) + 1e-20)
    db = np.maximum(db, db.max() - 50.0)  # digital silence would dominate any fit
    half = int(0.5 * SR / STEP)
    padded = np.pad(db, half, mode="edge")
    upper = np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1).max(axis=1)
    every = int(0.1 * SR / STEP)
    t = np.arange(len(upper))[::every] * STEP / SR
    # Theil-Sen (median of pairwise slopes): a lone gap or burst cannot tilt the line.
    slope = scipy.stats.theilslopes(upper[::every], t)[0]
    return float(slope * len(wav) / SR)


def detect_envelope(wav: np.ndarray, attrs: dict) -> str | None:
    """"fade_in" / None / "fade_out" from the level change in the texture's band."""
    change = level_change_db(wav, *TEXTURE_BAND[attrs["type"]])
    return "fade_in" if change > ENVELOPE_DB else "fade_out" if change < -ENVELOPE_DB else None


# ------------------------------------------------------------------------ attributes
@dataclass(frozen=True)
class Attribute:
    """An attribute a detector checks: which clips it applies to and how to read it."""

    name: str
    applies: Callable[[dict], bool]
    detect: Callable[[np.ndarray, dict], Any]
    default: Any = None  # the value of a clip whose attributes omit it


ATTRIBUTES = (
    Attribute("loudness", lambda a: True, detect_loudness),
    Attribute("pitch", lambda a: a["type"] in synth.PITCH, detect_pitch),
    Attribute("count", lambda a: a["type"] in synth.EVENT_TYPES, detect_count),
    Attribute("tempo", lambda a: (a["type"] in synth.EVENT_TYPES and a.get("count", 1) > 1)
              or a["type"] in synth.TEMPO_TEXTURES, detect_tempo),
    Attribute("direction", lambda a: a["type"] in synth.DIRECTION_TYPES, detect_direction),
    Attribute("envelope", lambda a: a["type"] in synth.TEXTURE_TYPES, detect_envelope),
)
NAMES = tuple(a.name for a in ATTRIBUTES)


def check_clip(wav: np.ndarray, attrs: dict[str, Any], named_only: bool = True
               ) -> dict[str, bool]:
    """Which attributes of `attrs` the clip has.

    Args:
        wav: (S,) float at 16 kHz.
        attrs: the caption's attributes (a synth manifest's "attributes"; needs "type").
        named_only: check only attributes the caption names (present in `attrs`); else
            also check that omitted ones take their default (e.g. neither loud nor soft).
    Returns:
        {attribute name: detected value == expected} for the checked attributes.
    """
    if attrs.get("type") not in synth.TYPES:
        return {}
    wav = np.asarray(wav, dtype=np.float64)
    out = {}
    for a in ATTRIBUTES:
        if not a.applies(attrs) or (named_only and a.name not in attrs):
            continue
        out[a.name] = a.detect(wav, attrs) == attrs.get(a.name, a.default)
    return out


def summarize(checks: list[dict[str, bool]], heldout: list[bool]) -> dict[str, dict]:
    """Per-attribute and overall accuracy for all, seen and held-out clips.

    Args:
        checks: `check_clip` results, one per clip; heldout: the clips' held-out flags.
    Returns:
        {"all" | "seen" | "heldout": {attribute: {"accuracy", "n"}, "overall": ...,
        "clips_all_correct": ...}}; "overall" pools every attribute check, and
        "clips_all_correct" is the fraction of clips with every check right.
    """
    out = {}
    for split, keep in (("all", lambda h: True), ("seen", lambda h: not h),
                        ("heldout", lambda h: h)):
        rows = [c for c, h in zip(checks, heldout) if keep(h) and c]
        if not rows:
            continue
        res: dict[str, dict] = {}
        for name in ("type", *NAMES):  # "type": the classifier's check, when one was made
            vals = [c[name] for c in rows if name in c]
            if vals:
                res[name] = {"accuracy": float(np.mean(vals)), "n": len(vals)}
        pooled = [v for c in rows for v in c.values()]
        res["overall"] = {"accuracy": float(np.mean(pooled)), "n": len(pooled)}
        res["clips_all_correct"] = {"accuracy": float(np.mean([all(c.values()) for c in rows])),
                                    "n": len(rows)}
        out[split] = res
    return out
