"""The diffusion-head MAR teacher (IMPACT-style) that the energytta student learns from."""
