"""Evaluation of generated audio: `metrics` (FD, KL, IS, CLAP score, KID), `embedders`
(mel-stats, synth-classifier, PANNs CNN14, VGGish, CLAP), `detectors` (caption-attribute
checks on the synthetic corpus) and `runner` (what `energytta-eval` runs)."""
