"""Models: the MAR backbone shared by teacher and student, heads, the token geometry and
`TTAModel`."""
from energytta.models.blocks import Block
from energytta.models.geometry import TokenGeometry, patchify, unpatchify
from energytta.models.heads import Head, build_head, register_head
from energytta.models.mar import MARBackbone, build_backbone
from energytta.models.tta import TTAModel, latent_shape

__all__ = ["Block", "Head", "MARBackbone", "TTAModel", "TokenGeometry", "build_backbone",
           "build_head", "latent_shape", "patchify", "register_head", "unpatchify"]
