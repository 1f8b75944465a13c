"""Inputs of the editing API and the commands: arrays of any common layout, numbers out of
range, outputs that cannot be written, too-short clips, malformed CSV and running out of
memory are mixed, scaled or refused in one line, never a traceback or silently cut data."""
import math

import numpy as np
import pytest

from energytta import editing
from energytta.errors import UserError
from energytta.pipeline import TextToAudio

SR = 16000


def _clip(seconds: float = 1.0) -> np.ndarray:
    """(S,) float32 tone, peak 0.5."""
    t = np.arange(int(seconds * SR)) / SR
    return (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


@pytest.fixture(scope="module")
def student(tiny_ckpts) -> TextToAudio:
    return TextToAudio.from_pretrained(tiny_ckpts["student"], "cpu")


# ------------------------------------------------------------------ editing API arrays
def test_stereo_arrays_are_mixed_to_mono_and_integer_pcm_is_scaled():
    x = _clip()
    both = np.stack([x, 0.5 * x])  # (2, S): the mix is 0.75 x, as a stereo file reads
    for layout in (both, both.T, x[None], x[:, None]):
        wav = editing.read_source(layout, SR).wav
        assert wav.shape == (x.size,)
    assert np.allclose(editing.read_source(both.T, SR).wav, 0.75 * x, atol=1e-6)
    for dtype, offset, scale in ((np.int16, 0, 2 ** 15), (np.int32, 0, 2 ** 31),
                                 (np.uint8, 128, 128)):
        pcm = np.round(x * (scale - 1) + offset).astype(dtype)
        wav = editing.read_source(np.stack([pcm, pcm]), SR).wav
        assert wav.shape == (x.size,) and np.abs(wav).max() <= 1.0
        assert np.allclose(wav, x, atol=2.0 / scale + 1e-6)


@pytest.mark.parametrize("array, match", [
    (np.zeros((2, 2), np.float32) + 0.5, "cannot tell channels"),
    (np.zeros((16, 4000), np.float32) + 0.5, "cannot tell channels"),
    (np.zeros((2, 2, 4000), np.float32) + 0.5, "not a clip"),
    (np.ones(4000, np.int64), "int64"),
])
def test_arrays_of_unclear_layout_or_type_are_refused_in_one_line(array, match):
    with pytest.raises(UserError, match=match):
        editing.read_source(array, SR)


def test_inpaint_of_a_stereo_int16_array_keeps_its_length_and_level(student):
    x = _clip(1.0)
    pcm = np.round(np.stack([x, x], axis=1) * 32767).astype(np.int16)  # (S, 2)
    out = student.inpaint("a beep", pcm, keep="0-0.5", seed=0, iterations=2)
    assert out.wavs.shape == (1, x.size)  # not a clip twice as long
    assert np.abs(out.wavs).max() <= 1.0
    assert np.allclose(out.wavs[0, :4000], x[:4000], atol=1e-4)  # the kept span, scaled


# ------------------------------------------------------------------ durations, devices
@pytest.mark.parametrize("duration", [math.nan, math.inf])
def test_continue_to_a_non_finite_duration_is_one_line(student, duration):
    with pytest.raises(UserError, match="finite"):
        student.continue_audio("a beep", _clip(), duration=duration)
