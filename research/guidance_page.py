"""Markdown of docs/guidance.md from the rows `research.guidance` read."""
from __future__ import annotations

METHOD = """\
## Method

MAR-family students guide in **feature space**: the energy head reads
z_g = z_u + w·(z_c − z_u), where z_c and z_u are the backbone's features with the caption
and with the learned null text (EAR's `ScoreLoss.sample`; `energytta.sampling.decode`). So
every decoding step runs two backbone rows per clip. Distilling guidance into one pass is
stage one of Meng et al. 2023 ("On distillation of guided diffusion models"), applied to
these features, where the target is a vector, not a sample, and exact:

    tokens, text ~ training data;   mask ~ MAR's training mask (ratio ~ truncnorm[0.7, 1])
    w ~ U[1, guide.max_scale] per row (w = 1 for guide.unguided_frac of the rows)
    z_c, z_u = reference(tokens, mask, text), reference(tokens, mask, null text)   no grad
    loss = mean over masked tokens of ‖student(tokens, mask, text, w) − (z_u + w·(z_c − z_u))‖²

- **Reference and start.** The reference is the frozen shipped student (`guide.init`); the
  student starts as a copy of it. Its energy head is frozen (the head keeps reading the
  feature space it was trained on); the backbone and the new guidance head train.
- **The guidance head.** The target is exactly linear in w with slope z_c − z_u, so the
  student is built linear in w: z(w) = z_c + (w − 1)·Δ(z_c), where Δ is a head on the
  backbone's output (`GuidanceHead`, `model.guidance_embed`) whose last layer starts at
  zero. Any guidance scale, and any schedule of scales (the shipped linear ramp), is then
  one multiply-add on the same pass; at w = 1 it is exactly the conditional model. The
  A/B below compares Δ per token (`model.guidance_head=mlp`) with Δ after one transformer
  block over all tokens (`attention`), which lets each token's slope read its context as
  the unconditional pass does.
- **What is kept.** Caption-dropout rows (`model.text_dropout`, 10 %) learn the null-text
  features at w = 1, so the checkpoint still runs the two-pass CFG
  (`energytta-sample --two-pass-cfg`) and negative prompts (always two passes). The loss
  covers masked positions only: those are the features the head samples from.
- **Sampling.** The checkpoint records `sample.one_pass_cfg: true`; the sampler passes the
  step's scale (from `sample.cfg` and `sample.cfg_schedule`) as `guidance=` and runs the
  conditional rows alone: half the backbone batch at every step.
- **Diagnostic.** `val/guide_residual` = Σ‖z(w) − z_g‖² / Σ‖z_c − z_g‖² over the masked
  tokens of the validation batches at w = `sample.cfg`: 1 at step 0 (no guidance at all),
  0 when the second pass is fully distilled. The validation stage also generates 32 clips
  of the validation split at 16 iterations in one pass and scores type and attributes.
"""


def findings(recs: list[dict]) -> list[str]:
    """Sentences computed from the per-K records (see `guidance.quality_table`)."""
    if not recs:
        return ["(No K has both a student and a guided row yet.)"]
    out = []
    for r in recs:
        s, g = r["student"], r["guided"]
        gap = 100 * (s["attributes"] - g["attributes"])
        where = f"{gap:.1f} points below" if gap > 0 else f"{-gap:.1f} points above"
        out.append(f"- K = {r['k']}: the one-pass student scores {g['attributes']:.3f} "
                   f"attribute accuracy, {where} the two-pass student ({s['attributes']:.3f}); "
                   f"type {g['type']:.3f} vs {s['type']:.3f}; generation CPU time "
                   f"{g['cpu']:.2f} vs {s['cpu']:.2f} s per clip "
                   f"({s['cpu'] / g['cpu']:.2f}× faster).")
    return out


def render(command: str, arms: list, arm_lines: list[str], table: list[str],
           missing: list[str], recs: list[dict], work: str,
           sweep: tuple[list[str], list[dict]] = ([], [])) -> str:
    runs = ", ".join(f"`{run}`" for _, run, _ in arms)
    lines = [
        "# Single-pass guidance: a student that guides with one backbone pass",
        "",
        "<!-- Written by research/guidance.py; edit that tool, not this page. -->",
        f"Regenerate with `{command}` from the arms' run folders ({runs}) and the quality "
        f"rows in `{work}`. Code: `energytta/train/objectives/guidance.py` (the objective), "
        "`GuidanceHead` in `energytta/models/mar.py`, `energytta.sampling.decode` (the "
        "one-pass path); config `energytta/configs/guidance.yaml`.",
        "",
        METHOD,
        "## The A/B (same data, seed and steps)",
        "",
        "```bash",
        "energytta-train --config guidance model.guidance_head=mlp              # runs/guidance",
        "energytta-train --config guidance model.guidance_head=attention \\",
        "    train.out_dir=runs/guidance_attn",
        "energytta-export runs/guidance_attn --half --out energytta/assets/guided.safetensors \\",
        "    sample.iterations=4   # the K chosen on the validation split (below)",
        "```",
        "",
        "(`guidance.yaml` now defaults to the winner, `attention`.) The attention arm, "
        "exported in float16, was the shipped `guided` model of the previous student; the shipped "
        "`guided` (`--ckpt guided`) is the same recipe run again on the current student (its "
        "leg and its K, chosen on the validation split: [training log]"
        "(../research/reports/training_log.md#the-student-recipe-on-the-long-teacher); its rows: "
        "[quality.md](../research/reports/quality.md)).",
        "",
        "600 steps of batch 16 each on `data/synth10k` (audio encoded on the fly with the "
        "reference's codec), lr 2e-4 cosine to 2e-5, EMA 0.995; validation every 200 steps "
        "(EMA weights; the generation check is 32 clips, so ±0.08 is noise); `wall s`: seconds "
        "since the run started (one thread, on 2 cores shared with other jobs):",
        "",
        *arm_lines,
        "",
        "## What one pass costs in quality (test split, research/quality.py rows)",
        "",
        "`python -m research.quality --models student,guided --iterations 64,32,16,8,4,2` "
        "computes these rows (the same 100 test captions, seed and batch as "
        "[research/reports/quality.md](../research/reports/quality.md)); the guided student is "
        "the A/B's "
        "`guided` (the attention arm), the student the `student` it was distilled "
        "from (the previous shipped pair).",
        "",
        *table,
        "",
        *findings(recs),
    ]
    if missing:
        lines += ["", "Rows not computed yet: " + ", ".join(missing) + "."]
    sweep_lines, sweep_recs = sweep
    if sweep_recs:
        best = max(sweep_recs, key=lambda r: (r["attributes"], -r["fd"]))
        lines += ["", "## Iterations on the validation split (the A/B's default)", "",
                  "`for k in 2 4 8 16 32; do python -m research.sampling_sweep guided --cfg 5 "
                  "--iterations $k --work runs/sweep; done` (the first 100 captions of "
                  "`data/synth10k/val.jsonl`, CFG 5 in one pass, temperature 1):", "",
                  *sweep_lines, "",
                  f"Highest attribute accuracy on the validation split (ties broken by the "
                  f"lower FD): K = {best['k']} ({best['attributes']:.3f}), the A/B's "
                  "`guided` model's default (`sample.iterations`); each cell scores "
                  f"{best['n']} checks, so its "
                  f"standard error is about "
                  f"{100 * (best['attributes'] * (1 - best['attributes']) / best['n']) ** 0.5:.1f}"
                  " points."]
    lines += ["", "End-to-end batch timings of the same settings, next to their quality: "
              "[research/reports/speed_quality.md](../research/reports/speed_quality.md).", ""]
    return "\n".join(lines)
