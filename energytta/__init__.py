"""energytta: fast text-to-audio with a MAR backbone and a one-step energy-score head."""
__version__ = "0.1.0"
