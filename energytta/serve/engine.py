"""The model side of the server: one `TextToAudio`, requests -> settings -> batches ->
clips. Runs in the batcher's single worker thread (the model is never called twice at
once).

Reproducibility: the sampler draws a batch's noise and decoding orders together from
one generator, so a clip depends on its batch-mates. Hence a request that names a
`seed` is never batched with other requests: its answer is the same bytes every time,
on any server, batched or not: `pipe.generate([prompt] * num_samples,
pipe.settings(seed=seed, ..., batch_size=num_samples))` as 16-bit WAV. Requests without
a seed share batches (that is where the throughput comes from) and get a fresh random
seed per batch; their `seed` answer reproduces them only together with the batch-mates
(`batch_rows` > num_samples says so).
"""
from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from energytta.errors import UserError
from energytta.pipeline import SHIPPED, SampleSettings, TextToAudio
from energytta.serve.batcher import Job
from energytta.serve.request import BadRequest, GenerateRequest


@dataclass
class Clips:
    """One request's answer: wavs (n, S), mels (n, n_mels, T), what made them."""

    wavs: np.ndarray
    mels: np.ndarray
    sample_rate: int
    settings: SampleSettings
    batch_rows: int  # clips in the model call it shared (== n when it ran alone)
    edit: dict | None = None


def model_name(ckpt: str) -> str:
    """What /v1/models calls the checkpoint: a shipped name, or the file's stem."""
    return ckpt if ckpt in SHIPPED else Path(ckpt).stem


class Engine:
    """Checks requests against the loaded model and runs batches of them.

    Args:
        pipe: the loaded pipeline; name: the model's public name; batching: False keeps
            every request in a model call of its own.
    """

    def __init__(self, pipe: TextToAudio, name: str, batching: bool = True) -> None:
        self.pipe, self.name, self.batching = pipe, name, batching

    def describe(self) -> dict:
        s = self.pipe.cfg.sample
        return {"id": self.name, "kind": self.pipe.kind, "sample_rate": self.pipe.sample_rate,
                "max_seconds_per_window": self.pipe.cfg.audio.max_seconds,
                "defaults": {"duration": s.duration, "iterations": s.iterations, "cfg": s.cfg,
                             "temperature": s.temperature}}

    def settings(self, req: GenerateRequest) -> SampleSettings:
        """The request's full settings (model defaults filled), or BadRequest (422)."""
        if req.model is not None and req.model != self.name:
            raise BadRequest(f"unknown model {req.model!r}; this server serves {self.name!r} "
                             f"(GET /v1/models; start another with --ckpt {req.model})")
        try:
            return self.pipe.settings(
                seed=req.seed, duration=req.duration if req.edit != "inpaint" else None,
                iterations=req.iterations, cfg=req.cfg, temperature=req.temperature,
                negative_prompt=req.negative_prompt, batch_size=req.num_samples)
        except UserError as e:
            raise BadRequest(str(e)) from None

    def key(self, req: GenerateRequest, s: SampleSettings) -> tuple:
        """Jobs with equal keys share a model call: same everything but prompt (and no
        seed or edit of their own, which need a call to themselves)."""
        if req.seed is not None or req.edit is not None or not self.batching:
            return ("alone", object())
        return ("plain", s.duration, s.iterations, s.cfg, s.cfg_schedule, s.temperature,
                s.negative_prompt, s.one_pass_cfg)

    def warm_up(self) -> None:
        """One short generation: loads the text encoder and touches every kernel."""
        s = self.pipe.settings(iterations=2, batch_size=1)  # the default duration
        self.pipe.generate(["warm up"], s)

    # ------------------------------------------------------------------ worker thread
    def run(self, jobs: list[Job]) -> list[Clips]:
        """One model call for `jobs` (equal keys), split back per job."""
        reqs: list[GenerateRequest] = [j.payload[0] for j in jobs]
        settings: SampleSettings = jobs[0].payload[1]
        if reqs[0].edit is not None:
            return [self._edit(reqs[0], settings)]
        prompts = [r.prompt for r in reqs for _ in range(r.num_samples)]
        seed = reqs[0].seed if reqs[0].seed is not None else secrets.randbelow(2 ** 63)
        s = dataclasses.replace(settings, seed=seed, batch_size=len(prompts))
        gen = self._generate(lambda: self.pipe.generate(prompts, s))
        out, row = [], 0
        for r in reqs:
            out.append(Clips(gen.wavs[row:row + r.num_samples], gen.mels[row:row + r.num_samples],
                             gen.sample_rate, s, len(prompts)))
            row += r.num_samples
        return out

    def _edit(self, req: GenerateRequest, s: SampleSettings) -> Clips:
        from energytta.audio.resample import resample

        audio = req.audio
        if req.audio_rate != self.pipe.sample_rate:
            audio = resample(audio, req.audio_rate, self.pipe.sample_rate)
        seed = req.seed if req.seed is not None else secrets.randbelow(2 ** 63)
        knobs = dict(seed=seed, iterations=req.iterations, cfg=req.cfg,
                     temperature=req.temperature, negative_prompt=req.negative_prompt,
                     batch_size=req.num_samples)
        prompts = [req.prompt] * req.num_samples
        if req.edit == "continue":
            gen = self._generate(lambda: self.pipe.continue_audio(
                prompts, audio, req.duration, **knobs))
        else:
            gen = self._generate(lambda: self.pipe.inpaint(
                prompts, audio, keep=req.keep, regenerate=req.regenerate, **knobs))
        edit = gen.edit if isinstance(gen.edit, dict) else None
        return Clips(gen.wavs, gen.mels, gen.sample_rate, gen.settings, req.num_samples, edit)

    @staticmethod
    def _generate(call):
        try:
            return call()
        except UserError as e:  # the input's fault (an edit span, a clip too short, ...)
            raise BadRequest(str(e)) from None
