"""The procedural corpus: determinism, and that every caption word is true of the audio."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from energytta.data import synth as S


# ------------------------------------------------------------------- signal analysis
def frame_rms(wav: np.ndarray, hop: float = 0.005) -> np.ndarray:
    h = int(hop * S.SR)
    n = len(wav) // h
    return np.sqrt(np.mean(wav[:n * h].reshape(n, h) ** 2, axis=1))


def onsets(wav: np.ndarray) -> list[float]:
    """Onset times (s): rises of the energy envelope above 30 % of its maximum, after it
    fell below 5 % (hysteresis, so one event's wobble is not counted twice)."""
    env = frame_rms(wav)
    hi, lo = 0.3 * env.max(), 0.05 * env.max()
    times, armed = [], True
    for i, e in enumerate(env):
        if armed and e > hi:
            times.append(i * 0.005)
            armed = False
        elif e < lo:
            armed = True
    return times


def dominant_hz(wav: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(wav))
    return float(np.fft.rfftfreq(len(wav), 1 / S.SR)[spec.argmax()])


def pitch_track(wav: np.ndarray) -> np.ndarray:
    """Strongest frequency of each loud 32 ms frame."""
    n = 512
    frames = wav[:len(wav) // n * n].reshape(-1, n)
    loud = np.sqrt((frames ** 2).mean(1)) > 0.3 * np.sqrt((frames ** 2).mean(1)).max()
    spec = np.abs(np.fft.rfft(frames[loud] * np.hanning(n), axis=1))
    return np.fft.rfftfreq(n, 1 / S.SR)[spec.argmax(1)]


def render(attrs: dict, seed: int, seconds: float = 2.0) -> np.ndarray:
    return S.render(np.random.default_rng(seed), attrs, seconds)


# ------------------------------------------------------------------------ corpus files
def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_corpus_identical_for_any_worker_count(tmp_path):
    counts = S.generate(tmp_path / "w1", num=20, seconds=1.0, seed=3, workers=1, progress=False)
    S.generate(tmp_path / "w2", num=20, seconds=1.0, seed=3, workers=2, progress=False)
    a, b = _tree(tmp_path / "w1"), _tree(tmp_path / "w2")
    assert counts == {"train": 16, "val": 2, "test": 2}
    assert len([k for k in a if k.endswith(".wav")]) == 20
    assert a == b
    S.generate(tmp_path / "s4", num=20, seconds=1.0, seed=4, workers=1, progress=False)
    c = _tree(tmp_path / "s4")
    assert c["audio/000000.wav"] != a["audio/000000.wav"]


def test_manifest_lines_and_heldout_file(tmp_path):
    S.generate(tmp_path, num=20, seconds=1.0, seed=0, workers=1, progress=False)
    rows = [json.loads(x) for s in ("train", "val", "test")
            for x in (tmp_path / f"{s}.jsonl").read_text().splitlines()]
    assert len(rows) == 20
    for r in rows:
        assert set(r) == {"audio", "caption", "attributes"}
        assert (tmp_path / r["audio"]).is_file()
        assert r["attributes"]["type"] in S.TYPES
    assert json.loads((tmp_path / "heldout_combinations.json").read_text()) == S.HELDOUT


# ------------------------------------------------------------------- held-out combos
def test_heldout_combinations_only_in_test():
    seen = {"train": 0, "val": 0, "test": 0}
    flags = []
    for i in range(1500):
        split = S.split_of(i, 1500)
        attrs = S.attributes_for_split(S.clip_rng(0, i), 4.0, split)
        if split == "test":
            flags.append(attrs["heldout"])
            assert attrs["heldout"] == S.is_heldout(attrs)
        else:
            assert "heldout" not in attrs and not S.is_heldout(attrs)
        seen[split] += 1
    assert seen == {"train": 1200, "val": 150, "test": 150}
    assert 0.3 < np.mean(flags) < 0.7  # both seen and held-out combinations in test


def test_heldout_combination_is_renderable_and_described():
    rng = np.random.default_rng(0)
    attrs = S.sample_attributes(rng, 1.0, forced=S.HELDOUT[0])  # high beep, three times
    caption = S.make_caption(rng, attrs).lower()
    assert attrs["count"] == 3 and attrs["pitch"] == "high"
    assert len(onsets(S.render(rng, attrs, 1.0))) == 3
    assert re.search(r"\b(three|high|high-pitched|shrill)\b", caption)


# ---------------------------------------------------------------- captions vs attrs
WORDS = {
    ("pitch", "high"): r"\b(high|high-pitched|shrill)\b",
    ("pitch", "low"): r"\b(low|low-pitched|deep)\b",
    ("loudness", "loud"): r"\bloud\b",
    ("loudness", "soft"): r"\b(soft|quiet|faint)\b",
    ("direction", "rising"): r"\b(rising|upward|ascending)\b",
    ("direction", "falling"): r"\b(falling|downward|descending)\b",
    ("tempo", "fast"): r"\b(quickly|rapidly|quick|rapid|fast)\b",
    ("tempo", "slow"): r"\b(slowly|slow|long pauses|slowly spaced|widely spaced|long gaps)\b",
    ("envelope", "fade_in"): r"\b(fading in|fades in|fade in|louder)\b",
    ("envelope", "fade_out"):
        r"\b(fading out|fading away|fades away|fades out|fade away|fade out|quieter|dying)",
}
COUNTS = {1: r"\b(once|one time|single)\b", 2: r"\b(twice|two)\b", 3: r"\bthree\b",
          4: r"\bfour\b", 5: r"\bfive\b"}


def _foreground(caption: str) -> str:
    """The caption without its background clause (which names only the background type)."""
    return re.split(r" with \S.* in the background| while .* in the background|, [^,]* in the "
                    r"background", caption.lower())[0]


def test_every_attribute_word_in_captions_is_true():
    for i in range(800):
        rng = S.clip_rng(1, i)
        attrs = S.sample_attributes(rng, 4.0)
        caption = S.make_caption(rng, attrs)
        fg = _foreground(caption)
        for (key, value), pattern in WORDS.items():
            if key == "loudness" and value == "loud" and "louder" in fg:
                fg_check = fg.replace("louder", "")
            else:
                fg_check = fg
            said = re.search(pattern, fg_check) is not None
            assert not said or attrs.get(key) == value, (caption, attrs, key)
        for n, pattern in COUNTS.items():
            said = re.search(pattern, fg) is not None
            assert not said or attrs.get("count") == n, (caption, attrs)
        if attrs.get("count"):  # the count is always stated (a/an/single = one)
            assert attrs["count"] == 1 or re.search(COUNTS[attrs["count"]], fg), caption
        if "background" in attrs:
            assert "background" in caption.lower()


def test_captions_vary():
    attrs = {"type": "beep", "pitch": "high", "count": 3, "tempo": "fast"}
    captions = {S.make_caption(np.random.default_rng(s), attrs) for s in range(40)}
    assert len(captions) >= 10


# --------------------------------------------------------------- audio vs attributes
@pytest.mark.parametrize("kind", sorted(S.PITCH))
def test_high_is_higher_than_low(kind):
    extra = {"count": 2} if kind in S.EVENT_TYPES else {}
    for seed in range(3):
        low = dominant_hz(render({"type": kind, "pitch": "low", **extra}, seed, 1.0))
        high = dominant_hz(render({"type": kind, "pitch": "high", **extra}, seed, 1.0))
        assert high > 1.8 * low, (kind, low, high)


@pytest.mark.parametrize("kind", S.EVENT_TYPES)
def test_count_gives_that_many_onsets(kind):
    for count in range(1, 6):
        attrs = S.sample_attributes(np.random.default_rng(count), 2.0,
                                    forced={"type": kind, "count": count})
        attrs.pop("background", None)  # a textured background would add onsets
        attrs.pop("envelope", None)
        wav = render(attrs, seed=count)
        assert len(onsets(wav)) == count, attrs


def test_fast_is_faster_than_slow():
    for kind in ("beep", "knock", "bark"):
        gaps = {}
        for tempo in ("fast", "slow"):
            times = onsets(render({"type": kind, "count": 3, "tempo": tempo}, 0, 2.0))
            assert len(times) == 3
            gaps[tempo] = np.mean(np.diff(times))
        assert gaps["slow"] > 2 * gaps["fast"]
    for kind in ("ticking", "footsteps"):
        n = {t: len(onsets(render({"type": kind, "tempo": t}, 0, 4.0))) for t in ("fast", "slow")}
        assert n["fast"] > 2 * n["slow"], (kind, n)


@pytest.mark.parametrize("kind", ["sweep", "whistle"])
def test_rising_and_falling(kind):
    for seed in range(3):
        for direction, sign in (("rising", 1), ("falling", -1)):
            track = pitch_track(render({"type": kind, "direction": direction, "count": 1},
                                       seed, 1.0))
            slope = np.polyfit(np.arange(len(track)), track, 1)[0]
            assert np.sign(slope) == sign, (kind, direction, track)


def test_loud_is_12db_above_soft():
    for kind in ("beep", "rain", "siren", "bell"):
        extra = {"count": 2} if kind in S.EVENT_TYPES else {}
        loud = render({"type": kind, "loudness": "loud", **extra}, 0)
        soft = render({"type": kind, "loudness": "soft", **extra}, 0)
        plain = render({"type": kind, **extra}, 0)
        db = 20 * np.log10(np.sqrt(np.mean(loud ** 2)) / np.sqrt(np.mean(soft ** 2)))
        assert db > 12
        assert np.abs(soft).max() < np.abs(plain).max() < np.abs(loud).max()


def test_fade_in_and_out():
    for kind in ("rain", "engine", "wind"):
        for env, sign in (("fade_in", 1), ("fade_out", -1)):
            rms = frame_rms(render({"type": kind, "envelope": env}, 0, 2.0), hop=0.5)
            change = 20 * np.log10(rms[-1] / rms[0])
            assert sign * change > 15, (kind, env, change)


def test_background_is_quieter_than_foreground():
    alone = render({"type": "beep", "count": 1}, 0)
    mixed = render({"type": "beep", "count": 1, "background": "rain"}, 0)
    # the foreground is drawn first from the same generator, so it is the same beep:
    # project it out and what is left is the background.
    fg = alone * (alone @ mixed) / (alone @ alone)
    bg = mixed - fg
    assert 0.15 < np.abs(bg).max() / np.abs(fg).max() < 0.35
    assert frame_rms(bg)[-50:].mean() > 0  # the background lasts the whole clip


def test_all_types_render_distinct_nonsilent_audio():
    profiles = []
    for kind in S.TYPES:
        attrs = S.sample_attributes(np.random.default_rng(0), 1.0, forced={"type": kind})
        for key in ("background", "loudness", "envelope"):
            attrs.pop(key, None)
        wav = S.render(np.random.default_rng(0), attrs, 1.0)
        assert wav.dtype == np.float32 and wav.shape == (S.SR,)
        assert np.isfinite(wav).all() and abs(np.abs(wav).max() - S.PEAK[None]) < 1e-3
        spec = np.abs(np.fft.rfft(wav)) ** 2
        bands = np.add.reduceat(spec, np.geomspace(1, len(spec) - 1, 25).astype(int))
        profiles.append(np.log10(bands / bands.sum() + 1e-9))
    profiles = np.array(profiles)
    dist = np.linalg.norm(profiles[:, None] - profiles[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    assert len(S.TYPES) >= 12 and dist.min() > 1.0


def test_a_second_synth_into_a_folder_being_written_is_refused(tmp_path, capsys):
    from energytta.cli import data_main
    from energytta.locks import folder_lock

    out = tmp_path / "corpus"
    with folder_lock(out, "energytta-data synth", "pass another --out"):  # a run is writing
        code = data_main(["synth", "--out", str(out), "--num", "4", "--seconds", "1",
                          "--workers", "1", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "in use by another energytta-data synth" in err[0] and "--out" in err[0]
    assert not list(out.rglob("*.wav")) and not (out / "train.jsonl").exists()
