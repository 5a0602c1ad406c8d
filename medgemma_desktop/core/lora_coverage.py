"""Which parts of the model a LoRA adapter changes, read from its weights, and what a server that applies LoRA to
the language model alone leaves out.

vLLM applies LoRA adapters to the language model only; MedGemma's published rank-8 adapter (and any adapter
trained with PEFT's `target_modules=["q_proj", "v_proj", ...]`, which match by name in every tower) also changes
the SigLIP vision tower's attention. On such a server the vision tower runs as the base model's, so answers about
images can differ from the app's, which applies every part of the adapter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from medgemma_desktop.core.errors import AdapterFolderError
from medgemma_desktop.core.safetensors_file import read_header

_LORA_KEY = re.compile(r"\.(?P<module>[A-Za-z0-9_]+)\.lora_[AB](?:\.[^.]+)?\.weight$")
_LAYER = re.compile(r"\.layers\.(\d+)\.")


@dataclass(frozen=True)
class LoraCoverage:
    """The adapted module names per tower, and how many vision-tower layers the adapter changes."""

    language: tuple[str, ...]
    vision: tuple[str, ...]
    projector: tuple[str, ...]
    vision_layers: int

    def language_only_note(self) -> str:
        """What a language-model-only LoRA server (vLLM) ignores of this adapter; "" when nothing."""
        ignored = []
        if self.vision:
            ignored.append(f"its vision-tower LoRA ({', '.join(self.vision)} in {self.vision_layers} layers)")
        if self.projector:
            ignored.append(f"its image-projector LoRA ({', '.join(self.projector)})")
        if not ignored:
            return ""
        return (f"a server that applies LoRA to the language model only (vLLM) ignores {' and '.join(ignored)}: "
                "image answers there can differ from this app's, which applies the whole adapter")


def lora_coverage(adapter_dir: Path | str) -> LoraCoverage:
    weights = Path(adapter_dir) / "adapter_model.safetensors"
    try:
        header = read_header(weights)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AdapterFolderError(f"the adapter weights cannot be read ({type(exc).__name__})", path=weights,
                                 fix="Copy the adapter folder again.") from exc
    towers: dict[str, set[str]] = {"language": set(), "vision": set(), "projector": set()}
    vision_layers: set[str] = set()
    for key in header:
        found = _LORA_KEY.search(key)
        if not found:
            continue
        tower = "vision" if "vision_tower" in key else "projector" if "multi_modal_projector" in key else "language"
        towers[tower].add(found["module"])
        layer = _LAYER.search(key)
        if tower == "vision" and layer:
            vision_layers.add(layer[1])
    return LoraCoverage(tuple(sorted(towers["language"])), tuple(sorted(towers["vision"])),
                        tuple(sorted(towers["projector"])), len(vision_layers))
