"""Data: manifests (JSONL, AudioCaps, Clotho), the procedural captioned corpus (`synth`),
datasets + collate (`dataset`), and the `energytta-data` CLI (`cli`).

Only the light manifest reader is imported here; `dataset` (torch) and `synth` load on use.
"""
from energytta.data.manifest import Item, read_manifest

__all__ = ["Item", "read_manifest"]
