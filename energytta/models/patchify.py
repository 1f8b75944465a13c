"""Latents (B, C, T, F) <-> tokens (B, N, C·pt·pf), time-major (MAR's patchify on a 2-D map).

Time patches are the outer index and frequency patches the inner one, so the first N
tokens of a long clip are exactly the tokens of a shorter clip: positional embeddings
learned for the longest clip are sliced `[:N]` for shorter ones.
"""
from __future__ import annotations

import torch

from energytta.config_rules import check_value
from energytta.errors import UserError


def _check(T: int, F: int, pt: int, pf: int) -> None:
    check_value("model.patch_t", pt)
    check_value("model.patch_f", pf)
    if T % pt:
        raise UserError(f"{T} latent frames are not divisible by model.patch_t={pt}; "
                        "crop the latents to a multiple of the time patch")
    if F % pf:
        raise UserError(f"{F} latent frequency bins are not divisible by model.patch_f={pf}; "
                        "pick a patch_f that divides the codec's latent_freq")


def patchify(lat: torch.Tensor, pt: int, pf: int) -> torch.Tensor:
    """Args:
        lat: (B, C, T, F) latents.
        pt, pf: time / frequency patch size.
    Returns (B, N, C·pt·pf) with N = (T/pt)·(F/pf), time patch outer.
    """
    if lat.dim() != 4:
        raise ValueError(f"patchify expects latents (B, C, T, F), got shape {tuple(lat.shape)}")
    B, C, T, F = lat.shape
    _check(T, F, pt, pf)
    x = lat.reshape(B, C, T // pt, pt, F // pf, pf)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, T/pt, F/pf, C, pt, pf)
    return x.reshape(B, (T // pt) * (F // pf), C * pt * pf)


def unpatchify(tokens: torch.Tensor, C: int, T: int, F: int, pt: int, pf: int) -> torch.Tensor:
    """Inverse of `patchify`.

    Args:
        tokens: (B, N, C·pt·pf).
        C, T, F: latent shape to rebuild; pt, pf: patch sizes.
    Returns (B, C, T, F).
    """
    _check(T, F, pt, pf)
    B, N, d = tokens.shape
    nt, nf = T // pt, F // pf
    if N != nt * nf or d != C * pt * pf:
        raise ValueError(f"tokens of shape {tuple(tokens.shape)} do not fit latents "
                         f"(C={C}, T={T}, F={F}) with patches {pt}x{pf}: expected "
                         f"({nt * nf}, {C * pt * pf})")
    x = tokens.reshape(B, nt, nf, C, pt, pf).permute(0, 3, 1, 4, 2, 5)  # (B, C, nt, pt, nf, pf)
    return x.reshape(B, C, T, F)
