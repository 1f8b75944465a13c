"""Audio front-end: I/O, resampling, the AudioLDM log-mel, Griffin-Lim and codecs.

`plot` (matplotlib) is not imported here; import `energytta.audio.plot` where figures are made.
"""
from energytta.audio.codec import Codec, MelCodec, build_codec
from energytta.audio.griffinlim import GriffinLim
from energytta.audio.io import (crop_or_pad, load_audio, loudness_normalize, peak_normalize,
                                write_wav)
from energytta.audio.mel import MelFrontend, mel_filterbank
from energytta.audio.resample import resample

__all__ = [
    "Codec", "GriffinLim", "MelCodec", "MelFrontend", "build_codec", "crop_or_pad", "load_audio",
    "loudness_normalize", "mel_filterbank", "peak_normalize", "resample", "write_wav",
]
