"""Property-based fuzzing of the server's request parser: random bytes as a body, JSON of any shape with the
fields a chat request has, and real requests with one image whose data URL is changed. Each case gives a parsed
request or the server's one-line `ApiError` (400 or 413) in time (`fuzz_support`). 1,200 fixed cases in all."""

from __future__ import annotations

import base64
import io
import json
from functools import cache
from pathlib import Path
from typing import Any

from fuzz_support import FUZZ_SETTINGS, answers_or_refuses
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.data import get_testdata_file

from medgemma_desktop.server.api_errors import ApiError
from medgemma_desktop.server.chat_request import ChatRequest, parse_chat_request, parse_json_body

FIELDS = ("model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "seed",
          "stop", "stream", "stream_options", "n")
SMALL_LIMIT = 4_000_000  # pixels: lets a mutated header claim too much without decoding anything large

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
    | st.sampled_from(["user", "assistant", "system", "developer", "tool", "text", "image_url",
                       "<start_of_image>", "<end_of_turn>\n<start_of_turn>model\n"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["role", "content", "type", "text", "image_url", "url", "include_usage"]) | st.text(max_size=8),
        children, max_size=4),
    max_leaves=24)


def _parse(body: bytes) -> ChatRequest | Exception:
    result = answers_or_refuses(lambda: parse_chat_request(parse_json_body(body), SMALL_LIMIT), refusal=ApiError)
    if isinstance(result, ApiError):
        assert result.status in (400, 413), f"{result.status}: {result.message}"
        assert result.body()["error"]["message"] == result.message
    else:
        assert result.turns and result.turns[-1].role == "user"
        assert result.settings.max_new_tokens >= 1
    return result


@cache
def _image_bytes(kind: str) -> tuple[str, bytes]:
    if kind == "dicom":
        return "application/dicom", Path(get_testdata_file("CT_small.dcm")).read_bytes()  # type: ignore[arg-type]
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (10, 120, 200)).save(buffer, format=kind)
    return f"image/{kind.lower()}", buffer.getvalue()


def _request(url: str, text: str = "Describe this image.") -> bytes:
    content = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]
    return json.dumps({"model": "medgemma", "messages": [{"role": "user", "content": content}],
                       "max_tokens": 8}).encode()


@settings(FUZZ_SETTINGS, max_examples=400)
@given(body=st.binary(max_size=2048))
def test_random_bytes_as_a_body(body: bytes) -> None:
    _parse(body)


@settings(FUZZ_SETTINGS, max_examples=500)
@given(payload=st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=len(FIELDS)),
       messages=st.lists(st.fixed_dictionaries({"role": json_values, "content": json_values}), max_size=4))
def test_json_of_any_shape_in_the_fields_of_a_chat_request(payload: dict[str, Any], messages: list) -> None:
    payload.setdefault("messages", messages)
    _parse(json.dumps(payload).encode())


@st.composite
def _changed_data_url(draw: st.DrawFn) -> str:
    """A real PNG, JPEG or DICOM data URL with bytes of the file changed, its base64 or its header edited."""
    mime, data = _image_bytes(draw(st.sampled_from(["PNG", "JPEG", "dicom"])))
    changed = bytearray(data)
    for _ in range(draw(st.integers(0, 4))):
        position = draw(st.integers(0, len(changed) - 1))
        changed[position] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        del changed[draw(st.integers(0, len(changed))):]
    encoded = base64.b64encode(bytes(changed)).decode()
    edit = draw(st.sampled_from(["none", "mime", "junk", "cut", "space"]))
    if edit == "mime":
        mime = draw(st.sampled_from(["image/gif", "text/plain", "image/png;x=1", "application/dicom", "", "a/b/c"]))
    elif edit == "junk":
        at = draw(st.integers(0, len(encoded)))
        encoded = encoded[:at] + draw(st.text(max_size=4)) + encoded[at:]
    elif edit == "cut":
        encoded = encoded[:draw(st.integers(0, len(encoded)))]
    elif edit == "space":
        encoded = "\n ".join(encoded[i:i + 76] for i in range(0, len(encoded), 76))
    return f"data:{mime};base64,{encoded}"


@settings(FUZZ_SETTINGS, max_examples=300)
@given(url=_changed_data_url())
def test_real_images_with_their_data_url_changed(url: str) -> None:
    _parse(_request(url))


def test_an_unchanged_image_request_parses() -> None:
    """The cases above start from requests that parse: check the starting point itself."""
    for kind in ("PNG", "JPEG", "dicom"):
        mime, data = _image_bytes(kind)
        parsed = _parse(_request(f"data:{mime};base64,{base64.b64encode(data).decode()}"))
        assert isinstance(parsed, ChatRequest)
        assert isinstance(parsed.turns[0].parts[1], Image.Image)
