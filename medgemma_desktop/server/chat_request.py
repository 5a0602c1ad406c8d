"""An OpenAI chat-completions request body into the turns and generation settings the model runs.

Message text stays text: it becomes the text parts of `core.prompts.ChatTurn`s, which reach the model only
through the same chat-template path as the window's and `ask`'s questions, so nothing typed becomes a control
token. Gemma's chat template accepts one leading system text and strictly alternating user / assistant turns
ending with the user: anything else is refused here with a message instead of failing inside the template.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from medgemma_desktop.core.decoding import SamplingSettings
from medgemma_desktop.core.engine import GenerationSettings
from medgemma_desktop.core.errors import UserFacingError
from medgemma_desktop.core.prompts import ChatTurn, Part
from medgemma_desktop.server.api_errors import bad_request
from medgemma_desktop.server.request_images import DEFAULT_MAX_IMAGE_PIXELS, decode_data_url

MAX_STOP_STRINGS = 16


@dataclass(frozen=True)
class ChatRequest:
    model: str | None
    turns: tuple[ChatTurn, ...]
    settings: GenerationSettings
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    fill_context: bool = False  # no max_tokens given: answer as long as the context allows


def parse_json_body(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f" (line {exc.lineno}, column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise bad_request(f"the request body is not valid JSON{where}", code="invalid_json") from None
    if not isinstance(payload, dict):
        raise bad_request("the request body must be a JSON object", code="invalid_json")
    return payload


def parse_chat_request(payload: dict[str, Any], max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> ChatRequest:
    """Check and convert the body; every image is decoded here, so a bad one fails before the model queue."""
    model = payload.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_request("model must be a string", param="model")
    if payload.get("n", 1) != 1:
        raise bad_request("only n=1 is supported: one answer per request", param="n")
    stream = _typed(payload, "stream", bool, False)
    options = _typed(payload, "stream_options", dict, {}) or {}
    return ChatRequest(
        model=model,
        turns=tuple(_turns(payload.get("messages"), max_image_pixels)),
        settings=_settings(payload),
        fill_context=payload.get("max_completion_tokens", payload.get("max_tokens")) is None,
        stop=_stop_strings(payload.get("stop")),
        stream=stream,
        include_usage=bool(stream and options.get("include_usage", False)),
    )


def _typed(payload: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    value = payload.get(name, default)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise bad_request(f"{name} must be a {kind.__name__}", param=name)
    return value


def _number(payload: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise bad_request(f"{name} must be a number from {low:g} to {high:g}", param=name)
    return float(value)


def _settings(payload: dict[str, Any]) -> GenerationSettings:
    """Greedy unless a temperature above 0 is given: the app decodes MedGemma as Google's notebooks do."""
    limit = payload.get("max_completion_tokens", payload.get("max_tokens"))
    if limit is None:
        limit = 1  # replaced by what the context leaves, once the prompt is counted
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise bad_request("max_tokens must be a whole number of at least 1", param="max_tokens")
    temperature = _number(payload, "temperature", 0.0, 2.0)
    top_p = _number(payload, "top_p", 0.0, 1.0)
    top_k = payload.get("top_k")  # vLLM's extension
    seed = payload.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise bad_request("seed must be a whole number", param="seed")
    defaults = SamplingSettings()
    try:
        sampling = SamplingSettings(greedy=not temperature, temperature=temperature or defaults.temperature,
                                    top_k=defaults.top_k if top_k is None else top_k,
                                    top_p=defaults.top_p if top_p is None or top_p == 0 else top_p, seed=seed)
    except UserFacingError as exc:  # the app's own checks of sampling values
        raise bad_request(str(exc)) from None
    return GenerationSettings(max_new_tokens=limit, sampling=sampling)


def _stop_strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(stop, str) for stop in stops):
        raise bad_request("stop must be a string or a list of strings", param="stop")
    if len(stops) > MAX_STOP_STRINGS:
        raise bad_request(f"stop takes at most {MAX_STOP_STRINGS} strings", param="stop")
    return tuple(stop for stop in stops if stop)


def _turns(messages: Any, max_image_pixels: int) -> list[ChatTurn]:
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list", param="messages")
    turns: list[ChatTurn] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise bad_request(f"{where} must be an object with a role and content", param=where)
        role = message.get("role")
        role = "system" if role == "developer" else role
        if not isinstance(role, str) or role not in ("system", "user", "assistant"):
            raise bad_request(f"{where}.role must be system, user or assistant (tools are not supported)",
                              param=f"{where}.role")
        if role == "system" and index != 0:
            raise bad_request(f"{where}: only the first message may be a system message (Gemma has no system "
                              "role; its text is put before the first question)", param=where)
        expected = "user" if not turns or turns[-1].role != "user" else "assistant"
        if role != "system" and role != expected:
            raise bad_request(f"{where}: messages must alternate user and assistant, starting with user "
                              f"(expected {expected})", param=where)
        parts = _parts(message.get("content"), f"{where}.content", images_allowed=role == "user",
                       max_image_pixels=max_image_pixels)
        turns.append(ChatTurn(role, parts))
    if turns[-1].role != "user":
        raise bad_request("the last message must be the user's", param=f"messages[{len(messages) - 1}]")
    return turns


def _parts(content: Any, where: str, images_allowed: bool, max_image_pixels: int) -> tuple[Part, ...]:
    if isinstance(content, str):
        return (content,)
    if not isinstance(content, list) or not content:
        raise bad_request(f"{where} must be a string or a non-empty list of content parts", param=where)
    parts: list[Part] = []
    for index, part in enumerate(content):
        at = f"{where}[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append(part["text"])
        elif kind == "image_url" and images_allowed:
            image_url = part.get("image_url")
            url = image_url.get("url") if isinstance(image_url, dict) else image_url
            if not isinstance(url, str):
                raise bad_request(f"{at}.image_url.url must be a data URL string", param=at)
            parts.append(decode_data_url(url, at, max_image_pixels).image)
        elif kind == "image_url":
            raise bad_request(f"{at}: images are accepted in user messages only", param=at)
        else:
            raise bad_request(f"{at} must be {{\"type\": \"text\", \"text\": ...}} or {{\"type\": \"image_url\", "
                              "\"image_url\": {\"url\": \"data:...\"}}", param=at)
    return tuple(parts)
