"""Answers from an OpenAI-compatible server instead of the local model: `medgemma-desktop serve` on another
workstation, or vLLM for many users on data-centre GPUs.

`RemoteBackend` has what the session needs from a backend (identity, context limit, token counts, a streamed
`Generation`), so the window, `ask` and batch use it as they use the local engine. The turns arrive prepared
(CT windows, slice labels, padding), and each picture is sent lossless as a PNG data URL: the server sees the
pixels the local model would. The official `openai` client does the HTTP: timeouts, and retries on 503 that
honour the server's Retry-After.
"""

from __future__ import annotations

import base64
import io
import logging
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

from PIL import Image

from medgemma_desktop.core.engine import Generation, GenerationSettings, ModelIdentity
from medgemma_desktop.core.errors import ContextTooLongError, UserFacingError
from medgemma_desktop.core.fingerprint import WeightsIdentity
from medgemma_desktop.core.prompts import (
    MEDGEMMA_TOKENS_PER_IMAGE,
    ChatTurn,
    estimate_prompt_tokens,
    to_processor_messages,
)
from medgemma_desktop.core.text_stream import TextChunk

log = logging.getLogger(__name__)

DEFAULT_CONTEXT_LIMIT = 8192
_STOP_REASONS = {"stop": "end", "length": "length"}
_START_SERVER = ("Start it (medgemma-desktop serve ... on that computer, or vllm serve ...), or check the address, "
                 "the port and the network.")


class RemoteServerError(UserFacingError):
    """The server cannot be reached, refuses the key, or answers with an error."""

    kind = "server"


class RemoteBackend:
    """One model on an OpenAI-compatible server. Construction asks the server which models it serves, so a wrong
    address, a server that is down or a wrong key fails at once with one line, as a bad model folder does."""

    def __init__(self, url: str, api_key: str | None = None, model: str | None = None, *,
                 timeout_s: float = 600.0, connect_timeout_s: float = 5.0, max_retries: int = 3) -> None:
        from openai import OpenAI, Timeout

        self.url = url.rstrip("/")
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise RemoteServerError(f"{url!r} is not a server address",
                                    fix="Give it as http://HOST:PORT (for example http://127.0.0.1:8080).")
        self._root = f"{parts.scheme}://{parts.netloc}"
        api_base = self.url if parts.path.rstrip("/").endswith("/v1") else f"{self.url}/v1"
        self._client = OpenAI(base_url=api_base, api_key=api_key or "none", max_retries=max_retries,
                              timeout=Timeout(timeout_s, connect=connect_timeout_s))
        card = self._choose_model(model)
        self.model: str = card["id"]
        self._card = card
        self._extras: dict[str, Any] = card.get("medgemma_desktop") or {}
        self._png_cache: dict[int, tuple[weakref.ref[Image.Image], str]] = {}
        self._can_tokenize = True

    # --- what the session reads ----------------------------------------------------------------------------------

    @property
    def identity(self) -> ModelIdentity:
        """Where answers come from, for the status bar and the history: the server, its model and, from a
        `medgemma-desktop serve`, the weights' hashes and how they run."""
        extras = self._extras
        model, adapter = extras.get("model"), extras.get("adapter")
        base = self._card.get("parent") or self._card.get("root") or self.model
        remote_device = f" ({extras['device']})" if extras.get("device") else ""
        return ModelIdentity(
            model=WeightsIdentity(model["folder"], model["sha256"]) if model else WeightsIdentity(base, ""),
            adapter=(WeightsIdentity(adapter["folder"], adapter["sha256"]) if adapter
                     else WeightsIdentity(self.model, "") if self._card.get("parent") else None),
            device=f"server {self._root}{remote_device}",
            dtype=extras.get("dtype", "as served"),
            quantization=extras.get("quantization", "as served"),
            decoder=f"remote: {self.model} at {self._root}",
            vision_active=bool(extras.get("vision_active", True)),
        )

    @property
    def context_limit(self) -> int:
        return int(self._card.get("max_model_len") or DEFAULT_CONTEXT_LIMIT)

    @property
    def tokens_per_image(self) -> int:
        return int(self._extras.get("tokens_per_image", MEDGEMMA_TOKENS_PER_IMAGE))

    @property
    def counts_exactly(self) -> bool:
        return self._can_tokenize

    def count_tokens(self, turns: Sequence[ChatTurn]) -> int:
        """The server's own count (vLLM's `POST /tokenize`, which `serve` offers too); a server without it gets a
        cautious estimate (three characters a token) so that the budget check errs on the safe side."""
        if self._can_tokenize:
            reply = self._call(lambda: self._tokenize(turns))
            if reply is not None:
                return int(reply["count"])
            log.info("%s has no /tokenize; prompt sizes are estimated", self._root)
            self._can_tokenize = False
        return estimate_prompt_tokens(turns, self.tokens_per_image, lambda text: len(text) // 3 + 1).total

    def generate(self, turns: Sequence[ChatTurn], settings: GenerationSettings | None = None,
                 cancel: threading.Event | None = None) -> Generation:
        """Start an answer; nothing is sent until the result is iterated (as with the local engine)."""
        settings = settings or GenerationSettings()
        return Generation(lambda generation: self._run(generation, turns, settings, cancel))

    def close(self) -> None:
        self._client.close()

    # --- the HTTP side -------------------------------------------------------------------------------------------

    def _choose_model(self, wanted: str | None) -> dict[str, Any]:
        cards = [card.model_dump() for card in self._call(lambda: list(self._client.models.list()))]
        ids = [card["id"] for card in cards]
        if wanted is not None:
            for card in cards:
                if card["id"] == wanted:
                    return card
            raise RemoteServerError(f"the server at {self._root} does not serve {wanted!r}",
                                    fix=f"It serves: {', '.join(ids) or 'nothing'}.")
        adapters = [card for card in cards if card.get("parent")]  # vLLM lists each LoRA module with its base
        chosen = cards if len(cards) == 1 else adapters if len(adapters) == 1 else []
        if not chosen:
            raise RemoteServerError(f"the server at {self._root} serves {len(ids)} models ({', '.join(ids)})",
                                    fix="Choose one with --server-model NAME.")
        return chosen[0]

    def _tokenize(self, turns: Sequence[ChatTurn]) -> dict[str, Any] | None:
        import openai

        try:
            return self._client.post(f"{self._root}/tokenize", cast_to=dict, body={
                "model": self.model, "messages": self._messages(turns), "add_generation_prompt": True})
        except openai.NotFoundError:
            return None

    def _call(self, request: Any) -> Any:
        """Run one request; the client's failures become one line that says what to do."""
        import openai

        try:
            return request()
        except openai.APIConnectionError as exc:
            timed_out = isinstance(exc, openai.APITimeoutError)
            raise RemoteServerError(f"no answer from the server at {self._root} "
                                    f"({'timed out' if timed_out else 'cannot connect'})", fix=_START_SERVER) from None
        except openai.AuthenticationError:
            raise RemoteServerError(f"the server at {self._root} refused the API key",
                                    fix="Give the key it was started with (--api-key).") from None
        except openai.APIStatusError as exc:
            raise _status_error(exc, self._root) from None

    def _run(self, generation: Generation, turns: Sequence[ChatTurn], settings: GenerationSettings,
             cancel: threading.Event | None) -> Iterator[TextChunk]:
        import openai

        stats = generation.stats
        stats.decoder = "remote"
        start = time.perf_counter()
        sampling = settings.sampling
        options: dict[str, Any] = {"temperature": 0.0}
        if not sampling.greedy and sampling.temperature > 0:
            options = {"temperature": sampling.temperature, "top_p": sampling.top_p,
                       "extra_body": {"top_k": sampling.top_k}}
        if sampling.seed is not None:
            options["seed"] = sampling.seed
        stream = self._call(lambda: self._client.chat.completions.create(
            model=self.model, messages=self._messages(turns), max_tokens=settings.max_new_tokens, stream=True,
            stream_options={"include_usage": True}, **options))
        stats.stop_reason = "length"
        first_token_at = None
        try:
            for chunk in stream:
                if chunk.usage is not None:
                    stats.prompt_tokens = chunk.usage.prompt_tokens
                    stats.new_tokens = chunk.usage.completion_tokens
                for choice in chunk.choices:
                    delta = choice.delta
                    thinking = getattr(delta, "reasoning_content", None) or getattr(delta, "reasoning", None)
                    for text, is_thinking in ((thinking, True), (delta.content, False)):
                        if text:
                            if first_token_at is None:
                                first_token_at = time.perf_counter()
                                stats.time_to_first_token_s = first_token_at - start
                            yield TextChunk(text, is_thinking)
                    if choice.finish_reason:
                        stats.stop_reason = _STOP_REASONS.get(choice.finish_reason, "end")
                if cancel is not None and cancel.is_set():
                    stats.stop_reason = "stopped"
                    break
        except (openai.APIConnectionError, OSError) as exc:
            raise RemoteServerError(f"the connection to {self._root} broke during the answer "
                                    f"({type(exc).__name__})", fix=_START_SERVER) from None
        except openai.APIError as exc:  # an error event inside the stream
            raise RemoteServerError(f"the server at {self._root} stopped the answer: {exc.message}") from None
        finally:
            stream.close()  # tells the server to stop generating when we stop early
            end = time.perf_counter()
            stats.total_s = end - start
            if first_token_at is not None and stats.new_tokens > 1:
                stats.decode_tokens_per_s = (stats.new_tokens - 1) / max(end - first_token_at, 1e-9)

    def _messages(self, turns: Sequence[ChatTurn]) -> list[dict[str, Any]]:
        """The turns as OpenAI messages, through the same conversion as the local model's (its text escaping
        included: a server such as vLLM applies the chat template to the text as it arrives)."""
        messages: list[dict[str, Any]] = []
        for message in to_processor_messages(turns):
            content = message["content"]
            if message["role"] != "user":  # system and assistant turns are text only
                messages.append({"role": message["role"],
                                 "content": "".join(part["text"] for part in content if part["type"] == "text")})
                continue
            messages.append({"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": self._png_data_url(part["image"])}}
                if part["type"] == "image" else {"type": "text", "text": part["text"]} for part in content]})
        return messages

    def _png_data_url(self, image: Image.Image) -> str:
        """Lossless, and encoded once per picture (a budget count and the answer send the same images)."""
        cached = self._png_cache.get(id(image))
        if cached is not None and cached[0]() is image:
            return cached[1]
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=1)
        url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
        self._png_cache = {key: entry for key, entry in self._png_cache.items() if entry[0]() is not None}
        self._png_cache[id(image)] = (weakref.ref(image), url)
        return url


def _status_error(exc: Any, root: str) -> UserFacingError:
    """An error status as one line, with the server's own message (OpenAI's shape: {"error": {"message"}})."""
    body = exc.body if isinstance(exc.body, dict) else {}
    detail = body.get("message") if "message" in body else (body.get("error") or {}).get("message", exc.message)
    status = exc.status_code
    if status == 400 and "context" in str(detail).lower():
        return ContextTooLongError(f"the server at {root} says the question is too long: {detail}",
                                   fix="Use fewer images or CT slices, or a shorter text.")
    fix = "Wait a moment and ask again." if status in (429, 503) else ""
    return RemoteServerError(f"the server at {root} answered {status}: {detail}", fix=fix)
