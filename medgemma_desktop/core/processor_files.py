"""The files the processor is built from, checked before transformers reads them: tokenizer.json (parsed by the
tokenizers library itself, with Gemma's special tokens where the config says they are), the processor config's
field types, and the chat template (the known Gemma 3 template, or one that renders a normal conversation
correctly within a time limit: a template is code, and can raise or loop for ever).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from medgemma_desktop.core.tiny_checkpoint import CHAT_TEMPLATE

TEMPLATE_TIME_LIMIT_S = 2.0
KNOWN_TEMPLATES = frozenset({hashlib.sha256(CHAT_TEMPLATE.strip().encode()).hexdigest()})
# Tokens the prompt format uses, and which config field (if any) names each one's id.
_REQUIRED_TOKENS = {"<bos>": "bos_token_id", "<start_of_turn>": None, "<end_of_turn>": None,
                    "<start_of_image>": "boi_token_index", "<end_of_image>": "eoi_token_index",
                    "<image_soft_token>": "image_token_index"}


def tokenizer_problem(path: Path, config: Mapping[str, Any], vocab_size: int) -> str | None:
    """Why tokenizer.json cannot serve this model, or None. Parsing Gemma's tokenizer.json takes 0.5-1 s, so a
    load checks the tokenizer transformers built instead (`vocabulary_problem`), and this only where it fails."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust parser reports every defect as a plain Exception
        return f"is not a valid tokenizer ({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__})"
    return vocabulary_problem(tokenizer, config, vocab_size)


def vocabulary_problem(tokenizer: Any, config: Mapping[str, Any], vocab_size: int) -> str | None:
    """Why a parsed tokenizer (a `tokenizers.Tokenizer`) cannot serve this model, or None: the prompt format's
    special tokens missing, at other ids than the config's, or more tokens than the model has embeddings."""
    for token, field in _REQUIRED_TOKENS.items():
        token_id = tokenizer.token_to_id(token)
        if token_id is None:
            return f"has no {token} token, which the prompt format needs"
        wanted = config.get(field) if field else None
        if isinstance(wanted, int) and wanted != token_id:
            return f"gives {token} the id {token_id}, but config.json says {field} is {wanted}"
        if token_id >= vocab_size:
            return f"gives {token} the id {token_id}, outside the model's {vocab_size} embeddings"
    if tokenizer.get_vocab_size(with_added_tokens=True) > vocab_size:
        return (f"has {tokenizer.get_vocab_size(with_added_tokens=True):,} tokens, more than the model's "
                f"{vocab_size:,} embeddings")
    return None


_FLAG_FIELDS = ("add_bos_token", "add_eos_token", "add_prefix_space", "clean_up_tokenization_spaces",
                "split_special_tokens")
_TOKEN_FIELDS = ("bos_token", "eos_token", "unk_token", "pad_token", "mask_token", "boi_token", "eoi_token",
                 "image_token")


def tokenizer_config_problem(config: Mapping[str, Any]) -> str | None:
    """Why tokenizer_config.json has fields of the wrong type, or None."""
    for key in _TOKEN_FIELDS:
        if key in config and not _token(config[key]):
            return f"{key} is {str(config[key])[:40]}, not a token (text)"
    extra = config.get("extra_special_tokens")
    if extra is not None and not ((isinstance(extra, list) and all(_token(item) for item in extra)) or (
            isinstance(extra, dict) and all(_token(item) for item in extra.values()))):
        return "extra_special_tokens is not a list of tokens"
    if "model_max_length" in config and not _number(config["model_max_length"]):
        return f"model_max_length is {str(config['model_max_length'])[:40]!r}, not a number"
    for key in _FLAG_FIELDS:
        if config.get(key) is not None and not isinstance(config[key], bool):
            return f"{key} is {config[key]!r}, not true or false"
    return None


def _token(value: object) -> bool:
    return value is None or isinstance(value, str) or (isinstance(value, dict) and isinstance(value.get("content"),
                                                                                               str))


def processor_problem(config: Mapping[str, Any], tokens_per_image: int) -> str | None:
    """Why a processor_config.json / preprocessor_config.json has fields of the wrong type, or None."""
    image = config.get("image_processor", config)
    if not isinstance(image, dict):
        return "image_processor is not a JSON object"
    kind = image.get("image_processor_type")
    if kind is not None and not (isinstance(kind, str) and kind.startswith("Gemma3ImageProcessor")):
        return f"image_processor_type is {str(kind)[:40]!r}, not Gemma 3's image processor"
    seq = config.get("image_seq_length")
    if seq is not None and (not _whole(seq) or seq != tokens_per_image):
        return f"image_seq_length is {seq!r}, but the model takes {tokens_per_image} tokens per image"
    size = image.get("size")
    if size is not None and not (isinstance(size, dict) and set(size) == {"height", "width"}
                                 and all(_whole(value) for value in size.values())):
        return f"size is {str(size)[:60]}, not {{'height': pixels, 'width': pixels}}"
    for key in ("image_mean", "image_std"):
        value = image.get(key)
        if value is not None and not (_number(value) or (isinstance(value, list) and len(value) == 3
                                                          and all(_number(item) for item in value))):
            return f"{key} is {str(value)[:60]}, not three numbers"
    if "image_std" in image and isinstance(image["image_std"], list) and 0 in image["image_std"]:
        return "image_std holds a 0 (images would be divided by zero)"
    if image.get("rescale_factor") is not None and not _number(image["rescale_factor"]):
        return f"rescale_factor is {image['rescale_factor']!r}, not a number"
    if image.get("resample") is not None and not (_whole(image["resample"]) and image["resample"] <= 5):
        return f"resample is {image['resample']!r}, not a Pillow resampling filter (0 to 5)"
    for key, value in image.items():
        if key.startswith("do_") and value is not None and not isinstance(value, bool):
            return f"{key} is {value!r}, not true or false"
    return None


def chat_template_text(folder: Path, tokenizer_config: Mapping[str, Any] | None) -> str | None:
    """The template transformers would use: chat_template.jinja, else chat_template.json, else
    tokenizer_config.json's; raises ValueError when the file that holds it has the wrong shape."""
    jinja, as_json = folder / "chat_template.jinja", folder / "chat_template.json"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    holder: Mapping[str, Any] | None = None
    if as_json.is_file():
        holder = json.loads(as_json.read_text(encoding="utf-8"))
    elif tokenizer_config is not None:
        holder = tokenizer_config
    if holder is None or "chat_template" not in holder:
        return None
    template = holder["chat_template"]
    if isinstance(template, list):  # named templates: the "default" one is used
        named = {item.get("name"): item.get("template") for item in template if isinstance(item, dict)}
        template = named.get("default")
    if not isinstance(template, str):
        raise ValueError("its chat_template is not text")
    return template


def template_problem(template: str) -> str | None:
    """None for the known Gemma 3 template or one that renders a system text, an image and alternating turns
    within `TEMPLATE_TIME_LIMIT_S` in Gemma's format; else what went wrong."""
    if hashlib.sha256(template.strip().encode()).hexdigest() in KNOWN_TEMPLATES:
        return None
    from jinja2 import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    # As transformers renders chat templates: the same options, globals and filter.
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = lambda format: datetime.now().strftime(format)
    environment.filters["tojson"] = lambda value, indent=None, **_: json.dumps(value, indent=indent,
                                                                               ensure_ascii=False)
    messages = [{"role": "system", "content": [{"type": "text", "text": "SYSTEM-TEXT"}]},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "QUESTION-TEXT"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "ANSWER-TEXT"}]},
                {"role": "user", "content": [{"type": "text", "text": "NEXT-QUESTION"}]}]
    try:
        rendered = _with_time_limit(lambda: environment.from_string(template).render(
            messages=messages, add_generation_prompt=True, bos_token="<bos>", eos_token="<eos>"))
    except TimeoutError:
        return f"the chat template did not finish within {TEMPLATE_TIME_LIMIT_S:g} s (it loops)"
    except Exception as exc:  # syntax errors, raise_exception, sandbox refusals: all a broken template
        return f"the chat template fails on a normal conversation ({type(exc).__name__}: {str(exc)[:80]})"
    wanted = ["<start_of_turn>user\nSYSTEM-TEXT", "<start_of_image>", "QUESTION-TEXT<end_of_turn>",
              "<start_of_turn>model\nANSWER-TEXT", "NEXT-QUESTION", "<start_of_turn>model\n"]
    if not all(piece in rendered for piece in wanted) or not rendered.endswith("<start_of_turn>model\n"):
        return "the chat template does not write Gemma 3's prompt format"
    return None


def _with_time_limit(render):
    """Run `render` in this thread, stopped (TimeoutError) once it has run `TEMPLATE_TIME_LIMIT_S`: jinja compiles
    templates to Python, so a trace function sees every line and can end a loop that never ends."""
    deadline = time.monotonic() + TEMPLATE_TIME_LIMIT_S
    previous = sys.gettrace()

    def tracer(frame, event, arg):
        if time.monotonic() > deadline:
            raise TimeoutError
        return tracer

    sys.settrace(tracer)
    try:
        return render()
    finally:
        sys.settrace(previous)


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
