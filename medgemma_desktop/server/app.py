"""The OpenAI-compatible HTTP API over one backend: `GET /v1/models`, `POST /v1/chat/completions` (streamed as
server-sent events ending with `data: [DONE]`, or whole), vLLM's `POST /tokenize` and `GET /health`.

Starlette does the HTTP; this module maps requests to the model queue and answers to OpenAI's JSON shapes (those
of vLLM, LM Studio and Ollama too), including errors. Bodies are read up to a cap, images decoded one request at a
time off the event loop, and the queue is checked before a body is read, so a crowd of clients costs bounded memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from medgemma_desktop.core.engine import GenerationStats
from medgemma_desktop.core.errors import UserFacingError
from medgemma_desktop.server.api_errors import ApiError, from_user_error, too_large
from medgemma_desktop.server.chat_request import ChatRequest, parse_chat_request, parse_json_body
from medgemma_desktop.server.model_queue import Failed, Finished, Job, JobEvent, ModelQueue, Piece
from medgemma_desktop.server.request_images import DEFAULT_MAX_IMAGE_PIXELS
from medgemma_desktop.session.backend import Backend

DEFAULT_MAX_BODY_BYTES = 64 << 20  # an 85-slice CT series as PNG data URLs fits with room
_DISCONNECT_POLL_S = 1.0


@dataclass(frozen=True)
class ServerOptions:
    model_id: str
    api_key: str | None = None
    queue_capacity: int = 4
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS


def create_app(backend: Backend, options: ServerOptions) -> Starlette:
    api = _Api(backend, options)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        api.start()
        try:
            yield
        finally:
            api.stop()

    routes = [Route("/v1/models", api.models, methods=["GET"]),
              Route("/v1/models/{model_id:path}", api.model, methods=["GET"]),
              Route("/v1/chat/completions", api.chat_completions, methods=["POST"]),
              Route("/tokenize", api.tokenize, methods=["POST"]),
              Route("/health", api.health, methods=["GET"])]
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={ApiError: _error_response, 404: _not_found, 405: _not_allowed})


async def _error_response(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response()


async def _not_found(request: Request, exc: Exception) -> Response:
    return ApiError(404, f"no such endpoint: {request.url.path}", code="not_found").response()


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return ApiError(405, f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed").response()


class _Api:
    def __init__(self, backend: Backend, options: ServerOptions) -> None:
        self._backend = backend
        self._options = options
        self._created = int(time.time())
        self._queue: ModelQueue | None = None
        self._decoding = anyio.CapacityLimiter(1)  # one request's images in memory at a time

    def start(self) -> None:
        self._queue = ModelQueue(self._backend, self._options.queue_capacity)

    def stop(self) -> None:
        if self._queue is not None:
            self._queue.close()

    @property
    def queue(self) -> ModelQueue:
        assert self._queue is not None, "the app's lifespan starts the model queue"
        return self._queue

    # --- endpoints -----------------------------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "waiting": self.queue.waiting})

    async def models(self, request: Request) -> Response:
        self._authorize(request)
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def model(self, request: Request) -> Response:
        self._authorize(request)
        self._check_model(request.path_params["model_id"])
        return JSONResponse(self._model_card())

    async def tokenize(self, request: Request) -> Response:
        """vLLM's token count for chat messages, so a remote client can apply the same context budget."""
        self._authorize(request)
        chat = await self._read_request(request)
        try:
            count = await asyncio.wrap_future(self.queue.call(lambda: self._backend.count_tokens(chat.turns)))
        except UserFacingError as exc:
            raise from_user_error(exc) from None
        return JSONResponse({"count": count, "max_model_len": self._backend.context_limit})

    async def chat_completions(self, request: Request) -> Response:
        self._authorize(request)
        self.queue.check_room()
        chat = await self._read_request(request)
        events: asyncio.Queue[JobEvent] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        job = Job(chat.turns, chat.settings, lambda event: loop.call_soon_threadsafe(events.put_nowait, event),
                  stop=chat.stop, fill_context=chat.fill_context)
        self.queue.submit(job)
        try:
            first = await self._next_event(request, events, job.cancel)
        except BaseException:
            job.cancel.set()
            raise
        if first is None:
            return Response(status_code=499)  # nginx's "client closed request": nobody reads it
        if isinstance(first, Failed):  # refused before any text (e.g. too long): a real error status
            return first.error.response()
        completion = _Completion(f"chatcmpl-{uuid.uuid4().hex}", self._options.model_id, int(time.time()))
        if chat.stream:
            return StreamingResponse(self._stream(request, chat, completion, first, events, job.cancel),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        return await self._whole(request, completion, first, events, job.cancel)

    # --- helpers -------------------------------------------------------------------------------------------------

    def _authorize(self, request: Request) -> None:
        key = self._options.api_key
        if key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise ApiError(401, "a valid API key is required: send it as 'Authorization: Bearer KEY'",
                           code="invalid_api_key")

    def _check_model(self, name: str | None) -> None:
        if name is not None and name != self._options.model_id:
            raise ApiError(404, f"the model '{name}' does not exist here; this server serves "
                                f"'{self._options.model_id}' (GET /v1/models lists it)", param="model",
                           code="model_not_found")

    def _model_card(self) -> dict[str, Any]:
        identity = self._backend.identity
        adapter = identity.adapter
        return {
            "id": self._options.model_id, "object": "model", "created": self._created,
            "owned_by": "medgemma-desktop", "root": identity.model_name,
            "max_model_len": self._backend.context_limit,
            "medgemma_desktop": {
                "model": {"folder": identity.model.folder, "sha256": identity.model.sha256},
                "adapter": {"folder": adapter.folder, "sha256": adapter.sha256} if adapter else None,
                "tokens_per_image": self._backend.tokens_per_image,
                "device": identity.device, "dtype": identity.dtype, "quantization": identity.quantization,
                "vision_active": identity.vision_active,
            },
        }

    async def _read_request(self, request: Request) -> ChatRequest:
        limit = self._options.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _body_too_large(limit)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _body_too_large(limit)
            chunks.append(chunk)
        payload = parse_json_body(b"".join(chunks))
        del chunks
        self._check_model(payload.get("model"))
        try:
            return await anyio.to_thread.run_sync(parse_chat_request, payload, self._options.max_image_pixels,
                                                  limiter=self._decoding)
        except UserFacingError as exc:
            raise from_user_error(exc) from None

    async def _next_event(self, request: Request, events: asyncio.Queue[JobEvent],
                          cancel: threading.Event) -> JobEvent | None:
        """The job's next event, or None once the client has gone away (the job is then cancelled, not left to
        run for nobody)."""
        while True:
            try:
                return await asyncio.wait_for(events.get(), _DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    cancel.set()
                    return None

    async def _stream(self, request: Request, chat: ChatRequest, completion: _Completion, first: JobEvent,
                      events: asyncio.Queue[JobEvent], cancel: threading.Event) -> AsyncIterator[str]:
        event: JobEvent | None = first
        try:
            yield completion.sse({"role": "assistant", "content": ""})
            while True:
                if isinstance(event, Piece):
                    yield completion.sse({"reasoning_content" if event.thinking else "content": event.text})
                elif isinstance(event, Finished):
                    yield completion.sse({}, event.finish_reason)
                    if chat.include_usage:
                        yield _sse({**completion.head("chat.completion.chunk"), "choices": [],
                                    "usage": _usage(event.stats)})
                    break
                elif isinstance(event, Failed):
                    yield _sse(event.error.body())
                    break
                else:
                    return  # the client has gone
                event = await self._next_event(request, events, cancel)
            yield "data: [DONE]\n\n"
        finally:
            cancel.set()  # the answer is complete, or the client went away: the model stops either way

    async def _whole(self, request: Request, completion: _Completion, first: JobEvent,
                     events: asyncio.Queue[JobEvent], cancel: threading.Event) -> Response:
        answer: list[str] = []
        thinking: list[str] = []
        event: JobEvent | None = first
        try:
            while isinstance(event, Piece):
                (thinking if event.thinking else answer).append(event.text)
                event = await self._next_event(request, events, cancel)
        finally:
            cancel.set()
        if isinstance(event, Failed):
            return event.error.response()
        if event is None:
            return Response(status_code=499)
        assert isinstance(event, Finished)
        message = {"role": "assistant", "content": "".join(answer), "reasoning_content": "".join(thinking) or None}
        return JSONResponse({**completion.head("chat.completion"),
                             "choices": [{"index": 0, "message": message, "finish_reason": event.finish_reason}],
                             "usage": _usage(event.stats)})


@dataclass(frozen=True)
class _Completion:
    id: str
    model: str
    created: int

    def head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def sse(self, delta: dict[str, str], finish_reason: str | None = None) -> str:
        return _sse({**self.head("chat.completion.chunk"),
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]})


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _usage(stats: GenerationStats) -> dict[str, int]:
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.new_tokens,
            "total_tokens": stats.prompt_tokens + stats.new_tokens}


def _body_too_large(limit: int) -> ApiError:
    return too_large(f"the request body is larger than this server accepts ({limit >> 20} MiB); send fewer or "
                     "smaller images")
