"""energytta: fast text-to-audio with a MAR backbone and a one-step energy-score head.

    from energytta import TextToAudio, audio_write

The two names load on first use (PEP 562), so `import energytta` stays light and the
commands' `--help` never waits for torch.
"""
__version__ = "0.1.0"

_LAZY = {"TextToAudio": "energytta.pipeline", "audio_write": "energytta.outputs"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'energytta' has no attribute {name!r}")
