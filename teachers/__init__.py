"""The diffusion-head MAR teacher (IMPACT-style) that the energytta student learns from."""
from teachers.diffusion import GaussianDiffusion, create_diffusion
from teachers.diffusion_head import DiffusionHead
from teachers.load import load_teacher

__all__ = ["DiffusionHead", "GaussianDiffusion", "create_diffusion", "load_teacher"]
