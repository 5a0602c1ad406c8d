"""What a MedGemma (Gemma 3 multimodal) checkpoint looks like: the config fields and their types, the size of each
weight the config implies, and the modules a LoRA adapter can target.

The sizes are the ones transformers builds from the config; a field the config leaves out takes transformers'
default, as it would at load time.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# transformers' defaults (Gemma3TextConfig, SiglipVisionConfig as Gemma3Config builds it).
_TEXT_DEFAULTS = {"vocab_size": 262_208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
                  "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256}
_VISION_DEFAULTS = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "image_size": 224,
                    "patch_size": 16, "num_channels": 3, "num_attention_heads": 12}
_TOP_COUNTS = ("mm_tokens_per_image", "boi_token_index", "eoi_token_index", "image_token_index")

LANGUAGE_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VISION_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
OTHER_TARGETS = ("embed_tokens", "lm_head", "patch_embedding")


@dataclass(frozen=True)
class Dims:
    """The sizes that fix every weight's shape."""

    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    image_size: int
    patch_size: int
    channels: int


def config_problem(config: Mapping[str, Any]) -> str | None:
    """What is wrong with the types or values of config.json's fields, or None."""
    for key in ("text_config", "vision_config"):
        if not isinstance(config.get(key), dict):
            return f"{key} is not a JSON object"
    if not isinstance(config.get("architectures", []), list):
        return "architectures is not a list"
    for key in _TOP_COUNTS:
        if key in config and not _count(config[key], allow_zero=key != "mm_tokens_per_image"):
            return f"{key} is {config[key]!r}, not a whole number"
    text, vision = config["text_config"], config["vision_config"]
    for where, section, defaults in (("text_config", text, _TEXT_DEFAULTS), ("vision_config", vision,
                                                                              _VISION_DEFAULTS)):
        for key in defaults:
            if key in section and not _count(section[key]):
                return f"{where}.{key} is {section[key]!r}, not a positive whole number"
    for key in ("rms_norm_eps", "rope_theta", "query_pre_attn_scalar"):
        if key in text and not _number(text[key]):
            return f"text_config.{key} is {text[key]!r}, not a number"
    for key in ("sliding_window", "max_position_embeddings"):
        if key in text and not _count(text[key]):
            return f"text_config.{key} is {text[key]!r}, not a positive whole number"
    for key in ("rope_scaling", "rope_parameters"):
        if text.get(key) is not None and not isinstance(text[key], dict):
            return f"text_config.{key} is not a JSON object"
    for key in ("eos_token_id", "bos_token_id", "pad_token_id"):
        value = config.get(key, text.get(key))
        if value is not None and not (_count(value, allow_zero=True) or (
                isinstance(value, list) and value and all(_count(item, allow_zero=True) for item in value))):
            return f"{key} is {value!r}, not a token id or a list of them"
    problem = _names_problem(config)
    if problem:
        return problem
    dims = dims_of(config)
    layer_types = text.get("layer_types")
    if layer_types is not None and not (isinstance(layer_types, list) and len(layer_types) == dims.layers
                                        and all(item in _LAYER_TYPES for item in layer_types)):
        return (f"text_config.layer_types is not a list of {dims.layers} attention kinds (one per layer: "
                f"{' or '.join(_LAYER_TYPES)})")
    vision_heads = vision.get("num_attention_heads", _VISION_DEFAULTS["num_attention_heads"])
    if dims.vision_hidden % vision_heads:
        return f"vision_config.hidden_size {dims.vision_hidden} is not a multiple of its {vision_heads} heads"
    tokens = config.get("mm_tokens_per_image", 256)
    side = math.isqrt(tokens)
    if side * side != tokens or (dims.image_size // dims.patch_size) % side:
        return (f"mm_tokens_per_image {tokens} is not the square of a number that divides the "
                f"{dims.image_size // dims.patch_size} patches along an image side")
    if dims.heads % dims.kv_heads:
        return f"text_config has {dims.heads} attention heads, not a multiple of its {dims.kv_heads} key/value heads"
    if dims.image_size % dims.patch_size:
        return f"vision_config.image_size {dims.image_size} is not a multiple of its patch_size {dims.patch_size}"
    for key in ("boi_token_index", "eoi_token_index", "image_token_index"):
        if config.get(key, 0) >= dims.vocab:
            return f"{key} {config[key]} is outside the vocabulary of {dims.vocab} tokens"
    return None


def _names_problem(config: Mapping[str, Any]) -> str | None:
    """Fields transformers looks up by name in its own tables (a KeyError deep inside it otherwise)."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    text, vision = config["text_config"], config["vision_config"]
    for key in ("dtype", "torch_dtype"):
        for where, section in (("", config), ("text_config.", text), ("vision_config.", vision)):
            if section.get(key) not in (None, "auto", *_DTYPES):
                return f"{where}{key} is {str(section[key])[:30]!r}, not one of {', '.join(_DTYPES)}"
    for where, section, key in (("text_config", text, "hidden_activation"), ("text_config", text, "hidden_act"),
                                ("vision_config", vision, "hidden_act")):
        if section.get(key) is not None and not _known_activation(section[key]):
            return f"{where}.{key} is {str(section[key])[:30]!r}, an activation transformers does not know"
    known_rope = {"default", *ROPE_INIT_FUNCTIONS}
    for key in ("rope_parameters", "rope_scaling"):
        value = text.get(key)
        if not isinstance(value, dict):
            continue
        entries = [value] if "rope_type" in value or "type" in value else list(value.values())
        for entry in entries:
            kind = entry.get("rope_type", entry.get("type")) if isinstance(entry, dict) else None
            if kind not in known_rope:
                return f"text_config.{key} names the rope type {str(kind)[:30]!r}, which transformers does not know"
    return None


def _known_activation(name: object) -> bool:
    """Whether transformers has the activation. Gemma's own is known without importing `transformers.activations`,
    which takes 1.5 s (it pulls in torch.distributed) and would hold up the window's start, which checks folders."""
    if not isinstance(name, str):
        return False
    if name in GEMMA_ACTIVATIONS:
        return True
    from transformers.activations import ACT2FN

    return name in ACT2FN


GEMMA_ACTIVATIONS = frozenset({"gelu_pytorch_tanh"})  # MedGemma's text and vision towers
_DTYPES = ("bfloat16", "float16", "float32")
_LAYER_TYPES = ("sliding_attention", "full_attention")


def dims_of(config: Mapping[str, Any]) -> Dims:
    """The sizes of a config that passed `config_problem`."""
    text = {**_TEXT_DEFAULTS, **{k: v for k, v in config["text_config"].items() if k in _TEXT_DEFAULTS}}
    vision = {**_VISION_DEFAULTS, **{k: v for k, v in config["vision_config"].items() if k in _VISION_DEFAULTS}}
    return Dims(text["vocab_size"], text["hidden_size"], text["intermediate_size"], text["num_hidden_layers"],
                text["num_attention_heads"], text["num_key_value_heads"], text["head_dim"], vision["hidden_size"],
                vision["intermediate_size"], vision["num_hidden_layers"], vision["image_size"],
                vision["patch_size"], vision["num_channels"])


# Where each part's names begin differs between checkpoint layouts (MedGemma's "language_model.model.",
# transformers 5's "model.language_model."): found from one anchor weight each.
_ANCHORS = {"language": "embed_tokens.weight", "vision": "embeddings.patch_embedding.weight",
            "projector": "mm_input_projection_weight"}


def expected_weights(dims: Dims, names: set[str]) -> dict[str, tuple[int, ...]]:
    """Every weight matrix the config implies (names as this checkpoint spells them) with its shape; raises
    KeyError naming the first part whose anchor weight is missing."""
    prefixes = {}
    for part, anchor in _ANCHORS.items():
        found = sorted(name[: -len(anchor)] for name in names if name.endswith(anchor)
                       and (part != "language" or "vision" not in name))
        if not found:
            raise KeyError(anchor)
        prefixes[part] = found[0]
    d, language, vision = dims, prefixes["language"], prefixes["vision"]
    q_out, kv_out = d.heads * d.head_dim, d.kv_heads * d.head_dim
    shapes: dict[str, tuple[int, ...]] = {
        f"{language}embed_tokens.weight": (d.vocab, d.hidden), f"{language}norm.weight": (d.hidden,),
        f"{prefixes['projector']}mm_input_projection_weight": (d.vision_hidden, d.hidden),
        f"{vision}embeddings.patch_embedding.weight": (d.vision_hidden, d.channels, d.patch_size, d.patch_size),
        f"{vision}embeddings.position_embedding.weight": ((d.image_size // d.patch_size) ** 2, d.vision_hidden),
    }
    for layer in range(d.layers):
        at = f"{language}layers.{layer}."
        for module, shape in (("self_attn.q_proj", (q_out, d.hidden)), ("self_attn.k_proj", (kv_out, d.hidden)),
                              ("self_attn.v_proj", (kv_out, d.hidden)), ("self_attn.o_proj", (d.hidden, q_out)),
                              ("mlp.gate_proj", (d.intermediate, d.hidden)),
                              ("mlp.up_proj", (d.intermediate, d.hidden)),
                              ("mlp.down_proj", (d.hidden, d.intermediate))):
            shapes[f"{at}{module}.weight"] = shape
        for norm in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                     "post_feedforward_layernorm"):
            shapes[f"{at}{norm}.weight"] = (d.hidden,)
    for layer in range(d.vision_layers):
        at = f"{vision}encoder.layers.{layer}."
        for module in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{at}self_attn.{module}.weight"] = (d.vision_hidden, d.vision_hidden)
        shapes[f"{at}mlp.fc1.weight"] = (d.vision_intermediate, d.vision_hidden)
        shapes[f"{at}mlp.fc2.weight"] = (d.vision_hidden, d.vision_intermediate)
    return shapes


def lora_dims(dims: Dims, module: str, in_vision: bool) -> tuple[int, int] | None:
    """(input size, output size) of a module a LoRA adapter can wrap; None for a module MedGemma does not have."""
    q_out, kv_out = dims.heads * dims.head_dim, dims.kv_heads * dims.head_dim
    if in_vision:
        table = {"q_proj": (dims.vision_hidden, dims.vision_hidden), "k_proj": (dims.vision_hidden, dims.vision_hidden),
                 "v_proj": (dims.vision_hidden, dims.vision_hidden),
                 "out_proj": (dims.vision_hidden, dims.vision_hidden),
                 "fc1": (dims.vision_hidden, dims.vision_intermediate),
                 "fc2": (dims.vision_intermediate, dims.vision_hidden)}
    else:
        table = {"q_proj": (dims.hidden, q_out), "k_proj": (dims.hidden, kv_out), "v_proj": (dims.hidden, kv_out),
                 "o_proj": (q_out, dims.hidden), "gate_proj": (dims.hidden, dims.intermediate),
                 "up_proj": (dims.hidden, dims.intermediate), "down_proj": (dims.intermediate, dims.hidden)}
    return table.get(module)


def module_names(dims: Dims) -> list[str]:
    """The full names of the modules an adapter's `target_modules` is matched against (as PEFT sees the model)."""
    names = ["model.language_model.embed_tokens", "lm_head",
             "model.vision_tower.vision_model.embeddings.patch_embedding"]
    for layer in range(dims.layers):
        names += [f"model.language_model.layers.{layer}.self_attn.{m}" for m in LANGUAGE_TARGETS[:4]]
        names += [f"model.language_model.layers.{layer}.mlp.{m}" for m in LANGUAGE_TARGETS[4:]]
    for layer in range(dims.vision_layers):
        names += [f"model.vision_tower.vision_model.encoder.layers.{layer}.self_attn.{m}" for m in VISION_TARGETS[:4]]
        names += [f"model.vision_tower.vision_model.encoder.layers.{layer}.mlp.{m}" for m in VISION_TARGETS[4:]]
    return names


def target_problem(targets: object, dims: Dims) -> str | None:
    """Why an adapter's `target_modules` names nothing MedGemma has, or None. A list names module suffixes; a
    string is a regular expression matched against whole module names (PEFT's rules)."""
    names = module_names(dims)
    if isinstance(targets, str):
        try:
            pattern = re.compile(targets)
        except re.error as exc:
            return f"target_modules {targets[:60]!r} is not a valid regular expression ({exc})"
        return None if any(pattern.fullmatch(name) for name in names) else \
            f"target_modules {targets[:60]!r} matches no module of MedGemma"
    if not isinstance(targets, list) or not targets or not all(isinstance(item, str) for item in targets):
        return "target_modules is not a list of module names"
    missing = [item for item in targets if not any(name == item or name.endswith("." + item) for name in names)]
    if missing:
        return f"target_modules names {', '.join(missing[:3])}, which MedGemma does not have"
    return None


def _count(value: object, *, allow_zero: bool = False) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
