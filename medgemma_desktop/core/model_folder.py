"""Checks of a base model folder and a LoRA adapter folder before anything is loaded.

Each failure names the file that is wrong and what to do, so that a user with a USB disk of weights can fix it
without reading a traceback. Only safetensors are accepted: pickle weights can run code when loaded.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medgemma_desktop.core.errors import AdapterFolderError, ModelFolderError

ARCHITECTURE = "Gemma3ForConditionalGeneration"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
GET_MODEL = "Copy the whole google/medgemma-1.5-4b-it folder again."


@dataclass(frozen=True)
class ModelFolder:
    """A checked base model folder."""

    path: Path
    config: dict[str, Any]
    shards: tuple[Path, ...]

    @property
    def text_config(self) -> dict[str, Any]:
        return self.config.get("text_config", {})

    @property
    def vision_config(self) -> dict[str, Any]:
        return self.config.get("vision_config", {})

    @property
    def tokens_per_image(self) -> int:
        return int(self.config.get("mm_tokens_per_image", 256))

    @property
    def weight_bytes(self) -> int:
        return sum(shard.stat().st_size for shard in self.shards)


@dataclass(frozen=True)
class AdapterFolder:
    """A checked LoRA adapter folder."""

    path: Path
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    weights: Path
    config: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name


def _read_json(path: Path, error: type[ModelFolderError] | type[AdapterFolderError], fix: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"cannot be read as JSON ({type(exc).__name__})", path=path, fix=fix) from exc
    if not isinstance(data, dict):
        raise error("is not a JSON object", path=path, fix=fix)
    return data


def safetensors_header(path: Path) -> dict[str, Any]:
    """The tensor table of a safetensors file; raises ValueError when the file is cut short or not safetensors."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ValueError("the file is empty or cut short")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > size - 8 or header_len > 100_000_000:
            raise ValueError("the file is not safetensors or is cut short")
        header = json.loads(handle.read(header_len))
    data_end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    if 8 + header_len + data_end > size:
        raise ValueError(f"the file is cut short ({size:,} bytes, needs {8 + header_len + data_end:,})")
    return header


def _check_shard(path: Path) -> None:
    try:
        safetensors_header(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelFolderError(f"weights file is damaged: {exc}", path=path, fix=GET_MODEL) from exc


def _refuse_pickles(folder: Path, error: type[ModelFolderError] | type[AdapterFolderError], what: str) -> None:
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise error(f"holds only pickle weights ({', '.join(pickles)}), which can run code when loaded",
                    path=folder, fix=f"Use the safetensors version of the {what}.")


def check_model_folder(path: Path | str) -> ModelFolder:
    """Validate a MedGemma base model folder (Hugging Face layout) without loading any weights."""
    folder = Path(path).expanduser()
    pick = "Choose the folder that holds MedGemma's config.json and model-*.safetensors files."
    if not folder.is_dir():
        raise ModelFolderError("folder not found", path=folder, fix=pick)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelFolderError("no config.json in this folder", path=folder, fix=pick)
    config = _read_json(config_path, ModelFolderError, GET_MODEL)
    architectures = config.get("architectures") or []
    if ARCHITECTURE not in architectures and config.get("model_type") != "gemma3":
        found = ", ".join(architectures) or config.get("model_type", "unknown")
        raise ModelFolderError(f"is a {found} model, not MedGemma ({ARCHITECTURE})", path=config_path,
                               fix="Choose the google/medgemma-1.5-4b-it folder.")
    if "vision_config" not in config:
        raise ModelFolderError("has no vision_config: this is a text-only model", path=config_path,
                               fix="Choose the multimodal google/medgemma-1.5-4b-it folder.")

    index_path = folder / "model.safetensors.index.json"
    if index_path.is_file():
        index = _read_json(index_path, ModelFolderError, GET_MODEL)
        names = sorted(set(index.get("weight_map", {}).values()))
        if not names:
            raise ModelFolderError("lists no weight files", path=index_path, fix=GET_MODEL)
        shards = tuple(folder / name for name in names)
        for shard in shards:
            if not shard.is_file():
                raise ModelFolderError("weights file listed in model.safetensors.index.json is missing",
                                       path=shard, fix=GET_MODEL)
    elif (folder / "model.safetensors").is_file():
        shards = (folder / "model.safetensors",)
    else:
        _refuse_pickles(folder, ModelFolderError, "model")
        raise ModelFolderError("no model.safetensors or model.safetensors.index.json", path=folder, fix=GET_MODEL)
    for shard in shards:
        _check_shard(shard)

    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelFolderError("tokenizer missing (tokenizer.json)", path=folder, fix=GET_MODEL)
    if not any((folder / name).is_file() for name in PROCESSOR_FILES):
        raise ModelFolderError("image processor missing (processor_config.json or preprocessor_config.json)",
                               path=folder, fix=GET_MODEL)
    tokenizer_config = folder / "tokenizer_config.json"
    has_template = any((folder / name).is_file() for name in CHAT_TEMPLATE_FILES) or (
        tokenizer_config.is_file() and "chat_template" in _read_json(tokenizer_config, ModelFolderError, GET_MODEL))
    if not has_template:
        raise ModelFolderError("chat template missing (chat_template.jinja)", path=folder, fix=GET_MODEL)
    return ModelFolder(path=folder, config=config, shards=shards)


# Which config dimension each LoRA target's input and output have, per tower.
_LANGUAGE_DIMS = {
    "q_proj": ("hidden_size", "q_out"), "k_proj": ("hidden_size", "kv_out"), "v_proj": ("hidden_size", "kv_out"),
    "o_proj": ("q_out", "hidden_size"), "gate_proj": ("hidden_size", "intermediate_size"),
    "up_proj": ("hidden_size", "intermediate_size"), "down_proj": ("intermediate_size", "hidden_size"),
}
_VISION_DIMS = {
    "q_proj": ("hidden_size", "hidden_size"), "k_proj": ("hidden_size", "hidden_size"),
    "v_proj": ("hidden_size", "hidden_size"), "out_proj": ("hidden_size", "hidden_size"),
    "fc1": ("hidden_size", "intermediate_size"), "fc2": ("intermediate_size", "hidden_size"),
}
_LORA_KEY = re.compile(r"\.(?P<module>[a-z0-9_]+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight$")


def _expected_dims(model: ModelFolder) -> tuple[dict[str, int], dict[str, int]]:
    text, vision = model.text_config, model.vision_config
    heads, kv_heads = int(text.get("num_attention_heads", 8)), int(text.get("num_key_value_heads", 4))
    head_dim = int(text.get("head_dim", 256))
    language = {"hidden_size": int(text.get("hidden_size", 2560)),
                "intermediate_size": int(text.get("intermediate_size", 10240)),
                "q_out": heads * head_dim, "kv_out": kv_heads * head_dim}
    vision_dims = {"hidden_size": int(vision.get("hidden_size", 1152)),
                   "intermediate_size": int(vision.get("intermediate_size", 4304))}
    return language, vision_dims


def check_adapter_folder(path: Path | str, model: ModelFolder) -> AdapterFolder:
    """Validate a PEFT LoRA adapter folder and that its tensor shapes fit `model`."""
    folder = Path(path).expanduser()
    pick = "Choose the folder that holds adapter_config.json and adapter_model.safetensors."
    if not folder.is_dir():
        raise AdapterFolderError("adapter folder not found", path=folder, fix=pick)
    config_path = folder / "adapter_config.json"
    if not config_path.is_file():
        raise AdapterFolderError("no adapter_config.json in this folder", path=folder, fix=pick)
    config = _read_json(config_path, AdapterFolderError, "Copy the adapter folder again.")
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise AdapterFolderError(f"is a {config.get('peft_type')} adapter, not LoRA", path=config_path, fix=pick)
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        _refuse_pickles(folder, AdapterFolderError, "adapter")
        raise AdapterFolderError("adapter_model.safetensors is missing", path=folder,
                                 fix="Copy the adapter folder again, including adapter_model.safetensors.")
    try:
        header = safetensors_header(weights)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AdapterFolderError(f"adapter weights are damaged: {exc}", path=weights,
                                 fix="Copy the adapter folder again.") from exc

    language, vision = _expected_dims(model)
    layers = int(model.text_config.get("num_hidden_layers", 34))
    matched = 0
    for key, entry in header.items():
        found = _LORA_KEY.search(key)
        if key == "__metadata__" or not found:
            continue
        module, which = found.group("module"), found.group("which")
        in_vision = "vision" in key
        table, dims = (_VISION_DIMS, vision) if in_vision else (_LANGUAGE_DIMS, language)
        if module not in table:
            continue
        layer = re.search(r"layers\.(\d+)\.", key)
        if layer and not in_vision and int(layer.group(1)) >= layers:
            raise AdapterFolderError(f"was made for a deeper model: {key} names layer {layer.group(1)}, this model "
                                     f"has {layers}", path=weights, fix="Use an adapter trained on MedGemma 1.5 4B.")
        in_dim, out_dim = (dims[name] for name in table[module])
        shape = entry["shape"]
        fits = len(shape) == 2 and (shape[1] == in_dim if which == "A" else shape[0] == out_dim)
        if not fits:
            needed = f"[r, {in_dim}]" if which == "A" else f"[{out_dim}, r]"
            raise AdapterFolderError(f"was made for another base model: {key} has shape {shape}, MedGemma needs "
                                     f"{needed}", path=weights, fix="Use an adapter trained on MedGemma 1.5 4B.")
        matched += 1
    if matched == 0:
        raise AdapterFolderError("holds no LoRA weights for this model's layers", path=weights,
                                 fix="Use a LoRA adapter trained on MedGemma 1.5 4B.")
    targets = config.get("target_modules") or []
    targets = (targets,) if isinstance(targets, str) else tuple(sorted(targets))
    return AdapterFolder(path=folder, rank=int(config.get("r", 0)), alpha=float(config.get("lora_alpha", 0)),
                         target_modules=targets, weights=weights, config=config)


def describe_model(model: ModelFolder) -> list[tuple[str, str]]:
    """The report the model manager shows for a checked base model folder."""
    text, vision = model.text_config, model.vision_config
    return [
        ("folder", str(model.path)),
        ("architecture", ", ".join(model.config.get("architectures") or [model.config.get("model_type", "?")])),
        ("weights", f"{len(model.shards)} safetensors file(s), {model.weight_bytes / 1e9:.2f} GB"),
        ("text model", f"{text.get('num_hidden_layers')} layers, hidden {text.get('hidden_size')}, "
                       f"sliding window {text.get('sliding_window')}"),
        ("vision tower", f"{vision.get('num_hidden_layers')} layers, {vision.get('image_size')} px images, "
                         f"{model.tokens_per_image} tokens per image"),
        ("tokenizer, processor, chat template", "present"),
    ]


def describe_adapter(adapter: AdapterFolder) -> list[tuple[str, str]]:
    return [
        ("folder", str(adapter.path)),
        ("LoRA", f"rank {adapter.rank}, alpha {adapter.alpha:g}, on {', '.join(adapter.target_modules)}"),
        ("weights", f"{adapter.weights.stat().st_size / 1e6:.1f} MB, shapes fit the base model"),
    ]
