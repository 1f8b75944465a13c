"""Distribution metrics of text-to-audio evaluation, computed the `audioldm_eval` way.

- Fréchet distance (FD / FAD): distance between Gaussians fitted to two feature sets
  (Heusel et al. 2017, eq. 6): ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2).
- KL: mean over paired files of KL(softmax(reference logits) || softmax(generated logits)),
  as audioldm_eval's `calculate_kl` (and AudioGen); also the sigmoid (multi-label) variant.
- Inception score (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))) over 10 splits of
  the softmax of the logits, after a fixed shuffle (torch-fidelity's rng seed 2020).
- CLAP score: mean cosine between paired text and audio embeddings.
- KID (Bińkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel, subsets.
All functions take numpy arrays or tensors and return python floats.
"""
from __future__ import annotations

import numpy as np
import scipy.linalg
import torch

EPS_KL = 1e-6  # audioldm_eval adds this to the generated probabilities before the log
SQRTM_OFFSET = 1e-6  # pytorch-fid's diagonal offset for a singular covariance product
IS_SPLITS = 10
IS_SEED = 2020


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """features (N, D) -> (mean (D,), covariance (D, D)) in float64 (unbiased covariance)."""
    f = _np(features)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need features (N >= 2, D), got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    Args:
        mu1, mu2: (D,) means; sigma1, sigma2: (D, D) covariances.
    Uses scipy's stable matrix square root of sigma1·sigma2; if it is not finite (singular
    product, e.g. fewer samples than dimensions) the diagonals are offset by 1e-6 first,
    and a small imaginary part from numerical error is dropped (pytorch-fid's rules).
    """
    mu1, mu2 = np.atleast_1d(_np(mu1)), np.atleast_1d(_np(mu2))
    s1, s2 = np.atleast_2d(_np(sigma1)), np.atleast_2d(_np(sigma2))
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(f"mismatched statistics: {mu1.shape} vs {mu2.shape}, "
                         f"{s1.shape} vs {s2.shape}")
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * SQRTM_OFFSET
        covmean = scipy.linalg.sqrtm((s1 + offset).dot(s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"matrix square root has a large imaginary part "
                             f"({np.max(np.abs(covmean.imag)):.3g})")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def frechet_distance_features(features_a, features_b) -> float:
    """FD between Gaussians fitted to two feature sets (Na, D) and (Nb, D)."""
    return frechet_distance(*gaussian_stats(features_a), *gaussian_stats(features_b))


def kl_divergence(reference_logits, generated_logits, activation: str = "softmax") -> float:
    """Mean over pairs of KL(p_ref || p_gen), p = softmax (or sigmoid) of the logits.

    Args:
        reference_logits, generated_logits: (N, C), row i of both from the same file name.
        activation: "softmax" (one distribution over C classes) or "sigmoid" (C Bernoullis,
            summed as audioldm_eval's `kl_div(reduction="sum")` does).
    """
    ref = torch.as_tensor(_np(reference_logits))
    gen = torch.as_tensor(_np(generated_logits))
    if ref.shape != gen.shape or ref.dim() != 2:
        raise ValueError(f"need paired logits of equal shape (N, C), got {tuple(ref.shape)} "
                         f"and {tuple(gen.shape)}")
    act = {"softmax": lambda x: x.softmax(dim=1), "sigmoid": torch.sigmoid}[activation]
    p, q = act(ref), act(gen)
    # kl_div(log q, p) = sum p (log p - log q); EPS keeps log q finite (audioldm_eval).
    kl = torch.nn.functional.kl_div((q + EPS_KL).log(), p, reduction="sum") / len(ref)
    return float(kl)


def inception_score(logits, splits: int = IS_SPLITS, seed: int = IS_SEED
                    ) -> tuple[float, float]:
    """Inception score (mean, std over splits) of the softmax of logits (N, C).

    The rows are shuffled with `np.random.RandomState(seed)` first (torch-fidelity), then cut
    into `splits` contiguous chunks; each chunk scores exp(mean_x KL(p(y|x) || mean p(y))).
    """
    x = torch.as_tensor(_np(logits))
    if x.dim() != 2 or x.shape[0] < splits:
        raise ValueError(f"need logits (N >= {splits}, C), got shape {tuple(x.shape)}")
    x = x[np.random.RandomState(seed).permutation(x.shape[0])]
    log_p = x.log_softmax(dim=1)
    p = log_p.exp()
    n = x.shape[0]
    scores = []
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits
        log_q = p[lo:hi].mean(dim=0, keepdim=True).log()
        kl = (p[lo:hi] * (log_p[lo:hi] - log_q)).sum(dim=1).mean()
        scores.append(float(kl.exp()))
    return float(np.mean(scores)), float(np.std(scores))


def clap_score(text_embeddings, audio_embeddings) -> float:
    """Mean cosine similarity of paired rows of (N, D) text and audio embeddings."""
    t = torch.nn.functional.normalize(torch.as_tensor(_np(text_embeddings)), dim=-1)
    a = torch.nn.functional.normalize(torch.as_tensor(_np(audio_embeddings)), dim=-1)
    if t.shape != a.shape:
        raise ValueError(f"need paired embeddings, got {tuple(t.shape)} and {tuple(a.shape)}")
    return float((t * a).sum(dim=-1).mean())


def kernel_inception_distance(features_a, features_b, subsets: int = 100,
                              subset_size: int = 1000, seed: int = IS_SEED
                              ) -> tuple[float, float]:
    """KID (mean, std over subsets): unbiased MMD^2, kernel k(x, y) = (x·y / D + 1)^3.

    Subset size is capped at the smaller set; subsets are drawn with
    `np.random.RandomState(seed)` (torch-fidelity's defaults).
    """
    a, b = _np(features_a), _np(features_b)
    m = min(len(a), len(b), subset_size)
    if m < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    rng = np.random.RandomState(seed)
    dim = a.shape[1]
    out = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = ((u @ v.T / dim + 1) ** 3 for u, v in ((x, x), (y, y), (x, y)))
        mmd = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1))
        out.append(mmd - 2 * kxy.mean())
    return float(np.mean(out)), float(np.std(out))
