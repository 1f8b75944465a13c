"""`POST /v1/generate` bodies: parsed and checked into a `GenerateRequest`, or one line
saying what is wrong (`BadRequest`, answered as a 4xx with that line)."""
from __future__ import annotations

import base64
import binascii
import io
import json
import math
from dataclasses import dataclass, field

import numpy as np

from energytta.serve.options import ServeOptions

FIELDS = ("prompt", "negative_prompt", "duration", "seed", "model", "iterations", "cfg",
          "temperature", "num_samples", "edit", "audio", "keep", "regenerate")
EDITS = ("continue", "inpaint")
MAX_SEED = 2 ** 63  # torch's generator range


class BadRequest(Exception):
    """A request the server refuses; `status` is the HTTP code, the message one line."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class GenerateRequest:
    """One checked request. None = the model's default (its `cfg.sample`)."""

    prompt: str
    negative_prompt: str | None = None
    duration: float | None = None
    seed: int | None = None
    model: str | None = None
    iterations: int | None = None
    cfg: float | None = None
    temperature: float | None = None
    num_samples: int = 1
    edit: str | None = None  # "continue" | "inpaint": needs `audio`
    audio: np.ndarray | None = field(default=None, repr=False)  # (S,) float32 at audio_rate
    audio_rate: int | None = None
    keep: str | None = None
    regenerate: str | None = None


def parse(body: bytes, opts: ServeOptions) -> GenerateRequest:
    """Bytes of a JSON object -> GenerateRequest; raises BadRequest naming the problem."""
    if len(body) > opts.max_body_bytes:
        raise BadRequest(f"request body is {len(body)} bytes; the limit is "
                         f"{opts.max_body_bytes}", 413)
    try:
        data = json.loads(body, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"body is not valid JSON ({str(e).splitlines()[0]}); send an object "
                         'like {"prompt": "a dog barks"}', 400) from None
    if not isinstance(data, dict):
        raise BadRequest('body must be a JSON object like {"prompt": "a dog barks"}', 400)
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise BadRequest(f"unknown field(s) {', '.join(map(repr, unknown))}; the fields are "
                         f"{', '.join(FIELDS)}")
    data = {k: v for k, v in data.items() if v is not None}
    req = GenerateRequest(prompt=_prompt(data, "prompt", opts, required=True))
    req.negative_prompt = _prompt(data, "negative_prompt", opts) or None
    req.model = _string(data, "model")
    req.duration = _number(data, "duration", 0.0, opts.max_duration, "s", open_low=True)
    req.cfg = _number(data, "cfg", 0.0, 100.0)
    req.temperature = _number(data, "temperature", 0.0, 100.0)
    req.seed = _integer(data, "seed", 0, MAX_SEED - 1)
    req.iterations = _integer(data, "iterations", 1, opts.max_iterations)
    req.num_samples = _integer(data, "num_samples", 1, opts.max_num_samples) or 1
    _edit(data, req, opts)
    return req


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def _prompt(data: dict, key: str, opts: ServeOptions, required: bool = False) -> str | None:
    text = _string(data, key)
    if text is None or not text.strip():
        if required:
            raise BadRequest(f"'{key}' is required: a non-empty string")
        return None
    if len(text) > opts.max_prompt_chars:
        raise BadRequest(f"'{key}' is {len(text)} characters; the limit is "
                         f"{opts.max_prompt_chars}", 413)
    return text


def _string(data: dict, key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"'{key}' must be a string, not {type(value).__name__}")
    return value


def _number(data: dict, key: str, low: float, high: float, unit: str = "",
            open_low: bool = False) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f"'{key}' must be a number, not {type(value).__name__}")
    value = float(value)
    too_low = value <= low if open_low else value < low
    if not math.isfinite(value) or too_low or value > high:
        bound = f"> {low:g}" if open_low else f">= {low:g}"
        raise BadRequest(f"'{key}' is {value:g}{unit}; it must be {bound} and <= {high:g}{unit}")
    return value


def _integer(data: dict, key: str, low: int, high: int) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise BadRequest(f"'{key}' must be a whole number, not {value!r}")
    if not low <= value <= high:
        raise BadRequest(f"'{key}' is {value}; it must be in [{low}, {high}]")
    return value


def _edit(data: dict, req: GenerateRequest, opts: ServeOptions) -> None:
    """The editing fields: `edit` with a base64 WAV in `audio` (decoded in memory)."""
    req.edit = _string(data, "edit")
    req.keep, req.regenerate = _string(data, "keep"), _string(data, "regenerate")
    encoded = _string(data, "audio")
    if req.edit is None:
        if encoded is not None or req.keep or req.regenerate:
            raise BadRequest("'audio', 'keep' and 'regenerate' need 'edit': "
                             f"one of {', '.join(EDITS)}")
        return
    if req.edit not in EDITS:
        raise BadRequest(f"'edit' is {req.edit!r}; it must be one of {', '.join(EDITS)}")
    if not encoded:
        raise BadRequest(f"'edit': {req.edit} needs 'audio': a base64-encoded WAV file")
    if req.edit == "continue" and req.duration is None:
        raise BadRequest("'edit': continue needs 'duration': the length of the result in s")
    if req.edit == "inpaint" and req.duration is not None:
        raise BadRequest("'edit': inpaint keeps the input's length; leave out 'duration'")
    req.audio, req.audio_rate = decode_wav(encoded)
    if req.audio.size / req.audio_rate > opts.max_duration:
        raise BadRequest(f"'audio' is {req.audio.size / req.audio_rate:.1f} s; the limit is "
                         f"{opts.max_duration:g} s", 413)


def decode_wav(encoded: str) -> tuple[np.ndarray, int]:
    """base64 of an audio file -> ((S,) float32 mono, rate), all in memory."""
    import soundfile as sf

    try:
        raw = base64.b64decode(encoded, validate=True)
        data, rate = sf.read(io.BytesIO(raw), dtype="float32", always_2d=True)  # (S, C)
    except (binascii.Error, ValueError, RuntimeError, TypeError, sf.LibsndfileError):
        raise BadRequest("'audio' is not a base64-encoded WAV/FLAC/OGG file") from None
    if data.size == 0 or not np.isfinite(data).all():
        raise BadRequest("'audio' is empty or holds NaN/inf samples")
    return np.ascontiguousarray(data.mean(axis=1), dtype=np.float32), int(rate)
