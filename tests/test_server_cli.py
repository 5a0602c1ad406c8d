"""`medgemma-desktop serve` as a user starts it: the official openai client streams an answer about an image that
equals `ask`'s for the same input (greedy), and a network address without a key is refused before anything loads."""

from __future__ import annotations

import base64
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
from PIL import Image

from medgemma_desktop.cli import main


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_streams_the_answer_ask_gives(tiny_checkpoint, tmp_path: Path) -> None:
    image = tmp_path / "xray.png"
    Image.new("RGB", (96, 72), (180, 180, 170)).save(image)
    model = ["--model", str(tiny_checkpoint.model_dir), "--adapter", str(tiny_checkpoint.adapter_dir)]
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "medgemma_desktop", "serve", *model, "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        ask = subprocess.run([sys.executable, "-m", "medgemma_desktop", "ask", *model, "--image", str(image),
                              "--max-new-tokens", "12", "Describe the findings."],
                             capture_output=True, text=True, timeout=300)
        assert ask.returncode == 0, ask.stderr
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, server.communicate()[0]
            assert time.monotonic() < deadline, "serve did not start"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        (card,) = client.models.list().data
        assert card.id == tiny_checkpoint.adapter_dir.name
        url = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
        stream = client.chat.completions.create(
            model=card.id, max_tokens=12, temperature=0, stream=True,
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                   {"type": "text", "text": "Describe the findings."}]}])
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        assert streamed == ask.stdout.rstrip("\n")
    finally:
        server.send_signal(signal.SIGINT)  # Ctrl+C: uvicorn shuts down, the model thread ends
        output = server.communicate(timeout=60)[0]
    assert server.returncode == 0, output
    assert "Traceback" not in output


def test_a_network_address_needs_a_key(capsys, tiny_checkpoint) -> None:
    assert main(["serve", "--model", str(tiny_checkpoint.model_dir), "--host", "0.0.0.0"]) == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert "API key is required" in message and "--api-key" in message
