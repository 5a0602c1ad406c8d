"""Checks of a base model folder and a LoRA adapter folder before anything is loaded.

Each failure names the file that is wrong and what to do, so that a user with a USB disk of weights can fix it
without reading a traceback. Only safetensors are accepted: pickle weights can run code when loaded.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medgemma_desktop.core.errors import AdapterFolderError, ModelFolderError, one_line
from medgemma_desktop.core.gemma3_layout import (
    Dims,
    config_problem,
    dims_of,
    expected_weights,
    lora_dims,
    target_problem,
)
from medgemma_desktop.core.processor_files import (
    chat_template_text,
    processor_problem,
    template_problem,
    tokenizer_config_problem,
    tokenizer_problem,
    vocabulary_problem,
)
from medgemma_desktop.core.safetensors_file import FLOAT_DTYPES, TensorEntry, read_header

ARCHITECTURE = "Gemma3ForConditionalGeneration"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
# The files besides the weights that decide what model is built: part of the saved 4-bit model's key.
SHAPING_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json")
GET_MODEL = "Copy the whole google/medgemma-1.5-4b-it folder again."
MAX_JSON_BYTES = 64 << 20  # the largest JSON a model folder holds (an index) is well under 1 MB


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
    def shaping_files(self) -> tuple[Path, ...]:
        """config.json and the other files besides the shards that decide the model built from them."""
        return tuple(self.path / name for name in SHAPING_FILES if (self.path / name).is_file())

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
        if path.stat().st_size > MAX_JSON_BYTES:
            raise error(f"is {path.stat().st_size:,} bytes, far larger than this settings file can be", path=path,
                        fix=fix)
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise error(f"cannot be read as JSON ({type(exc).__name__})", path=path, fix=fix) from exc
    if not isinstance(data, dict):
        raise error("is not a JSON object", path=path, fix=fix)
    return data


def _check_shard(path: Path) -> dict[str, TensorEntry]:
    try:
        return read_header(path)
    except (OSError, ValueError) as exc:
        raise ModelFolderError(f"weights file is damaged: {one_line(str(exc))}", path=path, fix=GET_MODEL) from exc


def _refuse_pickles(folder: Path, error: type[ModelFolderError] | type[AdapterFolderError], what: str) -> None:
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise error(f"holds only pickle weights ({', '.join(pickles)}), which can run code when loaded",
                    path=folder, fix=f"Use the safetensors version of the {what}.")


def _indexed_shards(folder: Path, index_path: Path) -> tuple[tuple[Path, ...], dict[str, str]]:
    """The shard files model.safetensors.index.json names (each inside the folder) and its tensor -> file map."""
    index = _read_json(index_path, ModelFolderError, GET_MODEL)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in weight_map.items()):
        raise ModelFolderError("weight_map is not a JSON object of tensor names to file names", path=index_path,
                               fix=GET_MODEL)
    if not weight_map:
        raise ModelFolderError("lists no weight files", path=index_path, fix=GET_MODEL)
    inside = folder.resolve()
    shards = []
    for name in sorted(set(weight_map.values())):
        shard = folder / name
        if Path(name).is_absolute() or not shard.resolve().is_relative_to(inside):
            raise ModelFolderError(f"names a weights file outside the model folder ({name[:80]})", path=index_path,
                                   fix="Use the model's own index file; weights are read only from its folder.")
        if not shard.is_file():
            raise ModelFolderError("weights file listed in model.safetensors.index.json is missing",
                                   path=shard, fix=GET_MODEL)
        shards.append(shard)
    return tuple(shards), weight_map


def _check_weights(folder: Path, config: dict[str, Any]) -> tuple[Path, ...]:
    """Every shard's header sound, the index consistent with them, and every weight the config implies present
    with its shape and a floating-point dtype."""
    index_path = folder / "model.safetensors.index.json"
    weight_map: dict[str, str] = {}
    if index_path.is_file():
        shards, weight_map = _indexed_shards(folder, index_path)
    elif (folder / "model.safetensors").is_file():
        shards = (folder / "model.safetensors",)
    else:
        _refuse_pickles(folder, ModelFolderError, "model")
        raise ModelFolderError("no model.safetensors or model.safetensors.index.json", path=folder, fix=GET_MODEL)
    tensors: dict[str, TensorEntry] = {}
    where: dict[str, Path] = {}
    for shard in shards:
        for name, entry in _check_shard(shard).items():
            tensors[name], where[name] = entry, shard
    for name, file in weight_map.items():
        if name not in tensors or where[name] != folder / file:
            raise ModelFolderError(f"tensor {name[:80]} is missing (model.safetensors.index.json puts it here)",
                                   path=folder / file, fix=GET_MODEL)
    try:
        expected = expected_weights(dims_of(config), set(tensors))
    except KeyError as exc:
        raise ModelFolderError(f"the weights have no tensor ending in {exc.args[0]}", path=folder,
                               fix=GET_MODEL) from exc
    for name, shape in expected.items():
        entry = tensors.get(name)
        if entry is None:
            raise ModelFolderError(f"tensor {name} is missing from the weights", path=folder, fix=GET_MODEL)
        if entry.shape != shape:
            raise ModelFolderError(f"tensor {name} has shape {list(entry.shape)}, config.json needs {list(shape)}",
                                   path=where[name], fix=GET_MODEL)
        if entry.dtype not in FLOAT_DTYPES:
            raise ModelFolderError(f"tensor {name} is stored as {entry.dtype}, not as floating-point weights",
                                   path=where[name], fix=GET_MODEL)
    return shards


def _check_processor_files(folder: Path, config: dict[str, Any], dims: Dims, read_tokenizer: bool) -> None:
    tokenizer = folder / "tokenizer.json"
    if not tokenizer.is_file():
        if (folder / "tokenizer.model").is_file():
            raise ModelFolderError("has only the slow tokenizer (tokenizer.model), not tokenizer.json", path=folder,
                                   fix=GET_MODEL)
        raise ModelFolderError("tokenizer missing (tokenizer.json)", path=folder, fix=GET_MODEL)
    problem = tokenizer_problem(tokenizer, config, dims.vocab) if read_tokenizer else None
    if problem:
        raise ModelFolderError(problem, path=tokenizer, fix=GET_MODEL)
    processors = [folder / name for name in PROCESSOR_FILES if (folder / name).is_file()]
    if not processors:
        raise ModelFolderError("image processor missing (processor_config.json or preprocessor_config.json)",
                               path=folder, fix=GET_MODEL)
    tokens_per_image = config.get("mm_tokens_per_image", 256)
    for processor in processors:
        problem = processor_problem(_read_json(processor, ModelFolderError, GET_MODEL), tokens_per_image)
        if problem:
            raise ModelFolderError(problem, path=processor, fix=GET_MODEL)
    tokenizer_config_path = folder / "tokenizer_config.json"
    tokenizer_config = _read_json(tokenizer_config_path, ModelFolderError, GET_MODEL) \
        if tokenizer_config_path.is_file() else None
    problem = tokenizer_config_problem(tokenizer_config or {})
    if problem:
        raise ModelFolderError(problem, path=tokenizer_config_path, fix=GET_MODEL)
    try:
        template = chat_template_text(folder, tokenizer_config)
    except (OSError, ValueError) as exc:
        raise ModelFolderError(f"the chat template cannot be read ({one_line(str(exc))[:80]})", path=folder,
                               fix=GET_MODEL) from exc
    if template is None:
        raise ModelFolderError("chat template missing (chat_template.jinja)", path=folder, fix=GET_MODEL)
    problem = template_problem(template)
    if problem:
        raise ModelFolderError(problem, path=folder, fix=GET_MODEL)


def check_model_folder(path: Path | str, read_tokenizer: bool = True) -> ModelFolder:
    """Validate a MedGemma base model folder (Hugging Face layout) without loading any weights: every file the
    loaders read is checked here, so a bad folder is one line from this check, never a traceback later. A loader
    that builds the processor anyway passes `read_tokenizer=False` and checks the tokenizer transformers built
    (`check_built_tokenizer`), saving a second parse of tokenizer.json (0.5-1 s for Gemma's)."""
    folder = Path(path).expanduser()
    pick = "Choose the folder that holds MedGemma's config.json and model-*.safetensors files."
    if not folder.is_dir():
        raise ModelFolderError("folder not found", path=folder, fix=pick)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelFolderError("no config.json in this folder", path=folder, fix=pick)
    config = _read_json(config_path, ModelFolderError, GET_MODEL)
    architectures = config.get("architectures") or []
    if not isinstance(architectures, list):
        raise ModelFolderError("architectures is not a list", path=config_path, fix=GET_MODEL)
    if ARCHITECTURE not in architectures and config.get("model_type") != "gemma3":
        found = ", ".join(map(str, architectures)) or str(config.get("model_type", "unknown"))
        raise ModelFolderError(f"is a {found} model, not MedGemma ({ARCHITECTURE})", path=config_path,
                               fix="Choose the google/medgemma-1.5-4b-it folder.")
    if "vision_config" not in config:
        raise ModelFolderError("has no vision_config: this is a text-only model", path=config_path,
                               fix="Choose the multimodal google/medgemma-1.5-4b-it folder.")
    problem = config_problem(config)
    if problem:
        raise ModelFolderError(problem, path=config_path, fix=GET_MODEL)
    shards = _check_weights(folder, config)
    _check_processor_files(folder, config, dims_of(config), read_tokenizer)
    return ModelFolder(path=folder, config=config, shards=shards)


def check_built_tokenizer(folder: ModelFolder, tokenizer: Any) -> None:
    """`check_model_folder`'s tokenizer check on the tokenizer transformers built from the folder (its
    `backend_tokenizer`)."""
    problem = vocabulary_problem(tokenizer, folder.config, dims_of(folder.config).vocab)
    if problem:
        raise ModelFolderError(problem, path=folder.path / "tokenizer.json", fix=GET_MODEL)


def processor_failure(folder: ModelFolder, exc: Exception) -> ModelFolderError:
    """One line for a processor transformers could not build from a folder checked without reading the
    tokenizer: the full check's line when a file is at fault (tokenizer.json, usually), else transformers'."""
    try:
        check_model_folder(folder.path)
    except ModelFolderError as found:
        return found
    return ModelFolderError(f"the processor cannot be built ({one_line(str(exc))[:120]})", path=folder.path,
                            fix=GET_MODEL)


_LORA_KEY = re.compile(r"\.(?P<module>[a-z0-9_]+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight$")


def _adapter_config_problem(config: dict[str, Any]) -> str | None:
    rank = config.get("r", 8)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        return f"r is {rank!r}, not a positive whole number"
    alpha = config.get("lora_alpha", 8)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        return f"lora_alpha is {alpha!r}, not a number"
    for key in ("rank_pattern", "alpha_pattern"):
        value = config.get(key) or {}
        if not isinstance(value, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                  and v > 0 for v in value.values()):
            return f"{key} is not a JSON object of module patterns to positive numbers"
    for key in ("modules_to_save", "layers_to_transform"):
        value = config.get(key)
        if value is not None and not isinstance(value, (list, int)):
            return f"{key} is {str(value)[:40]}, not a list"
    if config.get("task_type") not in (None, *_TASK_TYPES):
        return f"task_type is {str(config['task_type'])[:30]!r}, not one of PEFT's ({', '.join(_TASK_TYPES)})"
    dropout = config.get("lora_dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        return f"lora_dropout is {dropout!r}, not a number from 0 to below 1"
    if config.get("bias", "none") not in ("none", "all", "lora_only"):
        return f"bias is {str(config['bias'])[:30]!r}, not none, all or lora_only"
    for key in ("fan_in_fan_out", "use_rslora", "use_dora", "inference_mode"):
        if config.get(key) is not None and not isinstance(config[key], bool):
            return f"{key} is {config[key]!r}, not true or false"
    init = config.get("init_lora_weights", True)
    if not isinstance(init, bool) and not (isinstance(init, str) and init.split("_niter_")[0] in _INITS):
        return f"init_lora_weights is {str(init)[:30]!r}, not one PEFT knows"
    excluded = config.get("exclude_modules")
    if excluded is not None and not isinstance(excluded, str) and not (
            isinstance(excluded, list) and all(isinstance(item, str) for item in excluded)):
        return "exclude_modules is not a module name or a list of them"
    if config.get("layers_pattern") is not None and config.get("layers_to_transform") is None:
        return "layers_pattern is set without layers_to_transform"
    return None


_INITS = ("gaussian", "eva", "olora", "pissa", "corda", "loftq", "orthogonal")


_TASK_TYPES = ("CAUSAL_LM", "SEQ_CLS", "SEQ_2_SEQ_LM", "TOKEN_CLS", "QUESTION_ANS", "FEATURE_EXTRACTION")


def _layers_problem(layers: object, dims: Dims) -> str | None:
    """`layers_to_transform` must name layers the model has (PEFT finds no module to wrap otherwise)."""
    if layers is None:
        return None
    chosen = [layers] if isinstance(layers, int) else layers
    if not isinstance(chosen, list) or not chosen or not all(
            isinstance(item, int) and not isinstance(item, bool) and 0 <= item < dims.layers for item in chosen):
        return f"layers_to_transform is {str(layers)[:40]}, not layers of this model (0 to {dims.layers - 1})"
    return None


def _rank_for(key: str, config: dict[str, Any]) -> int:
    """The rank PEFT gives the module a weight belongs to: its rank_pattern entry, else r."""
    module = key.rsplit(".lora_", 1)[0]
    for pattern, rank in (config.get("rank_pattern") or {}).items():
        try:
            if re.match(rf"(.*\.)?({pattern})$", module):
                return int(rank)
        except re.error:
            continue
    return int(config.get("r", 8))


def check_adapter_folder(path: Path | str, model: ModelFolder) -> AdapterFolder:
    """Validate a PEFT LoRA adapter folder: its config's types, its targets, and that every LoRA weight's shape
    fits `model` and the adapter's rank."""
    folder = Path(path).expanduser()
    pick = "Choose the folder that holds adapter_config.json and adapter_model.safetensors."
    retrain = "Use an adapter trained on MedGemma 1.5 4B."
    if not folder.is_dir():
        raise AdapterFolderError("adapter folder not found", path=folder, fix=pick)
    config_path = folder / "adapter_config.json"
    if not config_path.is_file():
        raise AdapterFolderError("no adapter_config.json in this folder", path=folder, fix=pick)
    config = _read_json(config_path, AdapterFolderError, "Copy the adapter folder again.")
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise AdapterFolderError(f"is a {config.get('peft_type')} adapter, not LoRA", path=config_path, fix=pick)
    dims = dims_of(model.config)
    problem = _adapter_config_problem(config) or target_problem(config.get("target_modules"), dims) or \
        _layers_problem(config.get("layers_to_transform"), dims)
    if problem:
        raise AdapterFolderError(problem, path=config_path, fix="Copy the adapter folder again, or " +
                                 retrain[0].lower() + retrain[1:])
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        _refuse_pickles(folder, AdapterFolderError, "adapter")
        raise AdapterFolderError("adapter_model.safetensors is missing", path=folder,
                                 fix="Copy the adapter folder again, including adapter_model.safetensors.")
    try:
        header = read_header(weights)
    except (OSError, ValueError) as exc:
        raise AdapterFolderError(f"adapter weights are damaged: {one_line(str(exc))}", path=weights,
                                 fix="Copy the adapter folder again.") from exc

    matched = 0
    for key, entry in header.items():
        found = _LORA_KEY.search(key)
        if not found:
            continue
        module, which = found.group("module"), found.group("which")
        in_vision = "vision" in key
        sizes = lora_dims(dims, module, in_vision)
        if sizes is None:
            continue
        layer = re.search(r"layers\.(\d+)\.", key)
        if layer and int(layer.group(1)) >= (dims.vision_layers if in_vision else dims.layers):
            raise AdapterFolderError(f"was made for a deeper model: {key} names layer {layer.group(1)}, this model "
                                     f"has {dims.vision_layers if in_vision else dims.layers}", path=weights,
                                     fix=retrain)
        in_dim, out_dim = sizes
        shape = list(entry.shape)
        fits = len(shape) == 2 and (shape[1] == in_dim if which == "A" else shape[0] == out_dim)
        if not fits:
            needed = f"[r, {in_dim}]" if which == "A" else f"[{out_dim}, r]"
            raise AdapterFolderError(f"was made for another base model: {key} has shape {shape}, MedGemma needs "
                                     f"{needed}", path=weights, fix=retrain)
        rank = _rank_for(key, config)
        if shape[0 if which == "A" else 1] != rank:
            raise AdapterFolderError(f"its rank disagrees with its weights: {key} has shape {shape}, "
                                     f"adapter_config.json says rank {rank}", path=weights,
                                     fix="Copy the adapter folder again (config and weights together).")
        if entry.dtype not in FLOAT_DTYPES:
            raise AdapterFolderError(f"{key} is stored as {entry.dtype}, not as floating-point weights",
                                     path=weights, fix="Copy the adapter folder again.")
        matched += 1
    if matched == 0:
        raise AdapterFolderError("holds no LoRA weights for this model's layers", path=weights,
                                 fix="Use a LoRA adapter trained on MedGemma 1.5 4B.")
    targets = config.get("target_modules") or []
    targets = (targets,) if isinstance(targets, str) else tuple(sorted(targets))
    return AdapterFolder(path=folder, rank=int(config.get("r", 8)), alpha=float(config.get("lora_alpha", 8)),
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
