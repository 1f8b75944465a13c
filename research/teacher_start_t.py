"""Choose a diffusion teacher's `head.sample_max_t`: the scale of the tokens its head samples
when the chain starts at each candidate timestep, against the real tokens' scale.

    python -m research.teacher_start_t runs/shipped_teacher/model.safetensors \
        --data data/cache/synth10k_train [--clips 4] [--starts 999,950,925,900,875,850]

The head is run on backbone features of real clips with every token masked (the first
decoding iteration), with 100 steps from each start, no CFG, temperature 1. A start is
usable when the sampled tokens' std (overall, and of each token's mean) is close to the
real tokens'; from t = 999 an ε-predicting head that has not converged overshoots by
several times (teachers/diffusion.py, `create_diffusion`). Prints a markdown table.
"""
from __future__ import annotations

import argparse
from typing import Any

from energytta.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m research.teacher_start_t",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("ckpt", help="teacher checkpoint (inference file, step or run folder)")
    p.add_argument("--data", required=True,
                   help="cached-latent folder (energytta-data cache) of the teacher's codec")
    p.add_argument("--clips", type=int, default=4, help="clips to condition on (default 4)")
    p.add_argument("--starts", default="999,950,925,900,875,850", help="candidate starts")
    p.add_argument("--seed", type=int, default=0)
    return p


def token_stats(x: Any) -> tuple[float, float]:
    """(std of all values, std of the per-token means) of tokens (M, d)."""
    return float(x.std()), float(x.mean(-1).std())


def scan(ckpt: str, data: str, clips: int, starts: list[int], seed: int) -> list[dict]:
    """One row per start (plus "real"): std and per-token-mean std of the tokens.

    Args:
        ckpt: the teacher; data: its codec's latent cache; clips: how many to condition on.
        starts: candidate `head.sample_max_t` values; seed: the sampling generator's seed.
    """
    import dataclasses

    import torch

    from energytta.checkpoint import load_model
    from energytta.data.dataset import CachedLatentDataset, collate
    from energytta.models.heads import build_head
    from energytta.models.geometry import patchify

    cfg, kind, model, _ = load_model(ckpt, "cpu")
    if kind != "teacher":
        raise UserError(f"{ckpt} holds a {kind}; this tool scans a diffusion teacher")
    frames = model.frames_for(cfg.audio.crop_seconds)
    ds = CachedLatentDataset(data, frames, train=False)
    batch = collate([ds[i] for i in range(min(clips, len(ds)))])
    tokens = patchify(batch["latents"], model.patch_t, model.patch_f)  # (B, N, d)
    B, N, d = tokens.shape
    h = cfg.head
    with torch.no_grad():
        z = model.backbone(tokens, torch.ones(B, N, dtype=torch.bool), batch["text"],
                           batch["text_mask"]).reshape(B * N, -1)
        rows = [{"start": "real", "stats": token_stats(tokens.reshape(B * N, d))}]
        for t in starts:
            # the same weights in a head built for this start: its sampling chain follows
            # every head setting (schedule, prediction, ...), and energytta never names teachers
            head = build_head(dataclasses.replace(h, sample_max_t=t), model.token_dim,
                              model.backbone.out_dim)
            head.load_state_dict(model.head.state_dict())
            g = torch.Generator().manual_seed(seed)
            rows.append({"start": t, "stats": token_stats(head.eval().sample(z, 1.0, g))})
    return rows


def main(argv: list[str]) -> int:
    """Print the table of `scan`.

    Args:
        argv: arguments without the program name.
    Returns:
        0; bad input raises UserError.
    """
    args = build_parser().parse_args(argv)
    try:
        starts = [int(s) for s in args.starts.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--starts {args.starts!r}: give integers like 999,900") from None
    rows = scan(args.ckpt, args.data, args.clips, starts, args.seed)
    print("| chain start t | token std | std of token means |\n|---|---|---|")
    for r in rows:
        print(f"| {r['start']} | {r['stats'][0]:.3f} | {r['stats'][1]:.3f} |")
    return 0


if __name__ == "__main__":
    from energytta.errors import run_cli

    raise SystemExit(run_cli(main))
