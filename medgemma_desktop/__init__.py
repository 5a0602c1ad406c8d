"""MedGemma Desktop: MedGemma 1.5 4B (4-bit NF4 + LoRA) offline on a workstation GPU. Research use only."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("medgemma-desktop")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.1.0"
