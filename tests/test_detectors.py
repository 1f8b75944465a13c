"""Attribute detectors are calibrated on the synthetic generator's own clips (>= 95 %)."""
from __future__ import annotations

import numpy as np
import pytest

from energytta.data import synth
from energytta.eval import detectors


@pytest.fixture(scope="module")
def clips() -> list[tuple[np.ndarray, dict]]:
    """60 fresh 4-s clips (a seed the shipped corpus does not use): 4 of every sound type,
    then 16 from the test-split sampler so that held-out combinations are included."""
    out = []
    for i in range(60):
        rng = synth.clip_rng(12345, i)
        if i < 44:
            attrs = synth.sample_attributes(rng, 4.0, forced={"type": synth.TYPES[i % 15]})
        else:
            attrs = synth.attributes_for_split(rng, 4.0, "test")
        out.append((synth.render(rng, attrs, 4.0), attrs))
    return out


def test_every_attribute_at_least_95_percent(clips):
    # named_only=False: omitted attributes must read as their default class too, so a
    # detector that always answered "high" or "fade_in" could not pass.
    checks = [detectors.check_clip(wav, attrs, named_only=False) for wav, attrs in clips]
    summary = detectors.summarize(checks, [bool(a.get("heldout")) for _, a in clips])
    for name in detectors.NAMES:
        res = summary["all"][name]
        assert res["n"] >= 8, name
        assert res["accuracy"] >= 0.95, (name, res)
    assert "heldout" in summary and "seen" in summary


def test_detectors_notice_wrong_audio(clips):
    """A clip checked against another clip's attributes fails often: the checks can fail."""
    wrong = 0
    total = 0
    for (wav, _), (_, other) in zip(clips, clips[1:] + clips[:1]):
        c = detectors.check_clip(wav, other, named_only=False)
        wrong += sum(not v for v in c.values())
        total += len(c)
    assert wrong / total > 0.2


def test_single_detectors_on_hand_made_signals():
    t = np.arange(4 * synth.SR) / synth.SR
    beeps = np.zeros_like(t)
    for k in range(3):  # three 0.15 s beeps at 2 kHz, 0.5 s apart
        on = (t >= 0.2 + 0.5 * k) & (t < 0.35 + 0.5 * k)
        beeps[on] = 0.9 * np.sin(2 * np.pi * 2000 * t[on])
    attrs = {"type": "beep", "count": 3, "pitch": "high", "loudness": "loud"}
    assert detectors.detect_count(beeps, attrs) == 3
    assert detectors.detect_pitch(beeps, attrs) == "high"
    assert detectors.detect_loudness(beeps, attrs) == "loud"
    u = np.arange(synth.SR // 2) / synth.SR  # one 0.5 s glide from 400 Hz to 2 kHz
    rising = np.zeros_like(t)
    rising[synth.SR:synth.SR + len(u)] = np.sin(2 * np.pi * np.cumsum(400 * 5 ** (u / 0.5))
                                                / synth.SR)
    assert detectors.detect_direction(rising, {"type": "sweep"}) == "rising"
    assert detectors.detect_direction(rising[::-1].copy(), {"type": "sweep"}) == "falling"
    noise = np.random.default_rng(0).standard_normal(len(t)) * 0.1
    fade = noise * 10 ** (np.linspace(-30, 0, len(t)) / 20)
    assert detectors.detect_envelope(fade, {"type": "rain"}) == "fade_in"
    assert detectors.detect_envelope(noise, {"type": "rain"}) is None


def test_summary_splits_seen_and_heldout():
    checks = [{"pitch": True, "count": False}, {"pitch": True}, {"pitch": False}]
    s = detectors.summarize(checks, [False, False, True])
    assert s["all"]["pitch"] == {"accuracy": pytest.approx(2 / 3), "n": 3}
    assert s["seen"]["count"] == {"accuracy": 0.0, "n": 1}
    assert s["seen"]["clips_all_correct"]["accuracy"] == 0.5
    assert s["heldout"]["overall"] == {"accuracy": 0.0, "n": 1}
