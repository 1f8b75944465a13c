"""Reconstruction quality and speed of the codecs: wav -> latents -> mel -> vocoder -> wav.

For the first `--num` clips of a JSONL manifest (start crops of `--seconds`) and each of

    mel + Griffin-Lim | mel + trained vocoder | VAE + trained vocoder | VAE + Griffin-Lim
    (| AudioLDM VAE + HiFi-GAN, with --audioldm FOLDER)

it measures, against the original clip:
- mel SC: spectral convergence of the re-analysed linear mel, ||e^M - e^M̂||_F / ||e^M||_F;
- log-mel L1 (nats) of the re-analysed audio, and of the codec's own mel before vocoding
  (the latent round trip alone; 0 for the mel codec);
- MR-STFT: `energytta.audio.vocoder.mr_stft_distance` (3 resolutions, SC + log-magnitude L1);
- mel-stats FD: Fréchet distance of `energytta.eval` mel-statistics embeddings between the
  originals and the reconstructions (when `energytta.eval` is importable);
- encode / decode / vocode seconds per second of audio (one thread, batch 1).

It prints a markdown table, writes JSON (`--out`) and a figure of one clip (`--figure`).

    python -m research.codec_report --manifest data/synth/test.jsonl --num 64 \
        --vae runs/codec_vae/codec.safetensors --vocoder runs/vocoder/vocoder.safetensors
"""
from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from energytta.audio.codec import Codec, build_codec
from energytta.audio.io import load_audio
from energytta.audio.mel import MelFrontend
from energytta.audio.vocoder import mr_stft_distance
from energytta.config import Config, load_config
from research.spectral import read_rows, spectral_convergence
from energytta.utils import atomic_write_text


def part_overrides(path: Path, flag: str, kind: str) -> list[str]:
    """`codec.*` overrides that rebuild the architecture stored in a trained part file."""
    from energytta.audio.vocoder import part_settings

    return [f"codec.{k}={v}" for k, v in part_settings(path, kind, flag)["codec"].items()]


def pipelines(args: argparse.Namespace) -> dict[str, Codec]:
    """name -> codec (with its vocoder), for the parts given on the command line."""
    gl = [f"codec.griffin_lim_iters={args.gl_iters}"]
    voc = []
    if args.vocoder:
        voc = ["codec.vocoder=trained", f"codec.vocoder_path={args.vocoder}",
               *part_overrides(args.vocoder, "--vocoder", "vocoder")]
    out: dict[str, Codec] = {f"mel + Griffin-Lim ({args.gl_iters} it)": build_codec(
        load_config(None, gl))}
    vae = []
    if args.vae:
        vae = ["codec.name=vae", f"codec.path={args.vae}",
               *part_overrides(args.vae, "--vae", "vae")]
    if voc:
        out["mel + trained vocoder"] = build_codec(load_config(None, voc))
    if vae and voc:
        out["VAE + trained vocoder"] = build_codec(load_config(None, vae + voc))
    if vae:
        out[f"VAE + Griffin-Lim ({args.gl_iters} it)"] = build_codec(load_config(None, vae + gl))
    if args.audioldm:
        ldm = ["codec.name=audioldm", f"codec.path={args.audioldm}", "codec.vocoder=hifigan"]
        out["AudioLDM VAE + HiFi-GAN"] = build_codec(load_config(None, ldm))
    return {k: v.eval() for k, v in out.items()}


def timed(fn: Callable[..., torch.Tensor], *a: Any, **kw: Any) -> tuple[torch.Tensor, float]:
    """fn's output and its wall time in seconds."""
    start = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - start


@torch.no_grad()
def evaluate(codec: Codec, clips: list[torch.Tensor], fe: MelFrontend, seed: int
             ) -> tuple[dict[str, float], list[torch.Tensor], torch.Tensor]:
    """Metrics of one pipeline over clips [(1, S), ...] -> (means, reconstructions, first mel)."""
    rows, recon, first = [], [], None
    for wav in clips:
        mel = fe(wav)  # (1, M, T)
        lat, t_enc = timed(codec.encode, wav)
        mel_hat, t_dec = timed(codec.decode, lat)
        mel_hat = mel_hat[..., :mel.shape[-1]]  # latent codecs pad to whole latent frames
        out, t_voc = timed(codec.vocode, mel_hat, generator=torch.Generator().manual_seed(seed))
        mel_out = fe(out)
        n = min(mel.shape[-1], mel_out.shape[-1])
        seconds = wav.shape[-1] / fe.sample_rate
        rows.append({
            "mel_sc": spectral_convergence(mel[..., :n], mel_out[..., :n]),
            "logmel_l1": float((mel[..., :n] - mel_out[..., :n]).abs().mean()),
            "latent_logmel_l1": float((mel - mel_hat).abs().mean()),
            "mr_stft": float(mr_stft_distance(out, wav[:, :out.shape[-1]])),
            "encode_s_per_s": t_enc / seconds, "decode_s_per_s": t_dec / seconds,
            "vocode_s_per_s": t_voc / seconds})
        recon.append(out[0])
        first = mel_out[0] if first is None else first
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}, recon, first


def mel_stats_fd(reference: list[torch.Tensor], generated: list[torch.Tensor]) -> float | None:
    """FD of `energytta.eval`'s mel-stats embeddings, or None when it is not available."""
    try:
        from energytta.eval.embedders import get_embedder
        from energytta.eval.metrics import frechet_distance_features
    except ImportError:
        return None
    emb = get_embedder("mel-stats")
    feats = [np.concatenate([emb.embed(w.float()).features for w in ws]) for ws in
             (reference, generated)]
    return frechet_distance_features(*feats)


def table(results: dict[str, dict[str, float]]) -> str:
    """Markdown table: one row per pipeline."""
    lines = ["| pipeline | mel SC ↓ | log-mel L1 (nats) ↓ | latent-only log-mel L1 ↓ "
             "| MR-STFT ↓ | mel-stats FD ↓ | encode s/s | decode s/s | vocode s/s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        fd = "pending" if r.get("fd") is None else f"{r['fd']:.3f}"
        lines.append(f"| {name} | {r['mel_sc']:.4f} | {r['logmel_l1']:.4f} "
                     f"| {r['latent_logmel_l1']:.4f} | {r['mr_stft']:.4f} | {fd} "
                     f"| {r['encode_s_per_s']:.4f} | {r['decode_s_per_s']:.4f} "
                     f"| {r['vocode_s_per_s']:.4f} |")
    return "\n".join(lines)


def save_figure(original: torch.Tensor, mels: dict[str, torch.Tensor], path: Path,
                cfg: Config) -> None:
    """The first clip's log-mel and each pipeline's re-analysed reconstruction."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from energytta.utils import atomic_path

    panels = {"original": original, **mels}
    fig = Figure(figsize=(12, 2.2 * len(panels)))
    FigureCanvasAgg(fig)
    seconds = original.shape[-1] * cfg.audio.hop_length / cfg.audio.sample_rate
    for i, (name, mel) in enumerate(panels.items()):
        ax = fig.add_subplot(len(panels), 1, i + 1)
        ax.imshow(mel.numpy(), origin="lower", aspect="auto", vmin=-11.5, vmax=float(
            original.max()), extent=(0, seconds, 0, mel.shape[0]), cmap="magma")
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("mel bin")
    ax.set_xlabel("time (s)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m research.codec_report",
                                description=__doc__.splitlines()[0])
    p.add_argument("--manifest", type=Path, default=Path("data/synth/test.jsonl"))
    p.add_argument("--num", type=int, default=64, help="clips (first N of the manifest)")
    p.add_argument("--seconds", type=float, default=4.0, help="start crop per clip")
    p.add_argument("--vae", type=Path, help="trained VAE file (energytta-train codec_vae)")
    p.add_argument("--vocoder", type=Path, help="trained vocoder file (energytta-train vocoder)")
    p.add_argument("--audioldm", type=Path, help="local AudioLDM folder (vae/, vocoder/)")
    p.add_argument("--gl-iters", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/codec_report.json"))
    p.add_argument("--figure", type=Path, default=Path("research/reports/img/codecs_mels.png"))
    return p


def main(argv: list[str]) -> int:
    """Evaluate every pipeline; print the table, write the JSON and the figure.

    Args:
        argv: arguments without the program name.
    Returns:
        0; bad input raises UserError.
    """
    from rich.progress import track

    args = build_parser().parse_args(argv)
    torch.set_num_threads(1)  # timings comparable across runs on a shared machine
    cfg = load_config(None)
    fe = MelFrontend(cfg.audio)
    n = int(round(args.seconds * cfg.audio.sample_rate))
    clips = [torch.from_numpy(load_audio(a, cfg.audio.sample_rate)[:n])[None]
             for a, _ in read_rows(args.manifest, args.num)]
    codecs = pipelines(args)

    results, first_mels = {}, {}
    for name, codec in track(list(codecs.items()), description="codecs"):
        results[name], recon, first_mels[name] = evaluate(codec, clips, fe, args.seed)
        results[name]["fd"] = mel_stats_fd([c[0] for c in clips], recon)
    command = "python -m research.codec_report " + shlex.join(argv)
    md = table(results)
    print(f"{len(clips)} clips, {args.seconds} s each; command: {command}\n\n{md}")
    atomic_write_text(args.out, json.dumps({"command": command, "clips": len(clips),
                                            "results": results}, indent=1))
    save_figure(fe(clips[0])[0], first_mels, args.figure, cfg)
    return 0


if __name__ == "__main__":
    from energytta.errors import run_cli

    raise SystemExit(run_cli(main))
