"""Clips -> HTTP answers: one WAV with the settings in headers, or JSON with base64 WAVs,
their spectrograms (uint8 images the page draws in a canvas) and the settings."""
from __future__ import annotations

import base64
import dataclasses
import io

import numpy as np
from fastapi.responses import JSONResponse, Response

from energytta.serve.engine import Clips

MAX_COLUMNS = 600  # spectrogram columns sent to the page (longer clips are strided)


def wav_bytes(wav: np.ndarray, sample_rate: int) -> bytes:
    """(S,) float32 -> a 16-bit PCM WAV file, in memory."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(wav, -1.0, 1.0), int(sample_rate), subtype="PCM_16", format="WAV")
    return buf.getvalue()


def spectrogram(mel: np.ndarray) -> dict:
    """(n_mels, T) log-mel -> {"n_mels", "frames", "data": base64 uint8, row-major,
    low bins first}, scaled to its own range."""
    mel = mel[:, ::max(1, -(-mel.shape[1] // MAX_COLUMNS))]
    low, high = float(mel.min()), float(mel.max())
    scaled = (mel - low) / (high - low) if high > low else np.zeros_like(mel)
    data = np.round(scaled * 255).astype(np.uint8)
    return {"n_mels": int(mel.shape[0]), "frames": int(mel.shape[1]),
            "data": base64.b64encode(data.tobytes()).decode("ascii")}


def settings_record(clips: Clips, model: str) -> dict:
    s = dataclasses.asdict(clips.settings)
    s.pop("batch_size")
    return {"model": model, **s, "num_samples": int(clips.wavs.shape[0]),
            "sample_rate": clips.sample_rate, "batch_rows": clips.batch_rows}


def headers(record: dict) -> dict[str, str]:
    """The settings as X-... headers (the negative prompt, free text, stays in JSON)."""
    return {"X-" + "-".join(w.capitalize() for w in k.split("_")): str(v)
            for k, v in record.items() if k != "negative_prompt"}


def wants_json(accept: str, num_samples: int) -> bool:
    """JSON when asked for, or when there is more than one clip (a WAV holds one)."""
    return "application/json" in accept.lower() or num_samples > 1


def respond(clips: Clips, model: str, accept: str) -> Response:
    record = settings_record(clips, model)
    if not wants_json(accept, record["num_samples"]):
        return Response(wav_bytes(clips.wavs[0], clips.sample_rate), media_type="audio/wav",
                        headers=headers(record))
    items = [{"audio": base64.b64encode(wav_bytes(w, clips.sample_rate)).decode("ascii"),
              "seconds": round(w.shape[-1] / clips.sample_rate, 4),
              "spectrogram": spectrogram(m)} for w, m in zip(clips.wavs, clips.mels)]
    return JSONResponse({"settings": record, "edit": clips.edit, "clips": items},
                        headers=headers(record))
