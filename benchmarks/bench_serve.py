"""Batch and server speed on the GPU: items per second for a batch of 50 single images, and `serve`'s latency with
1 and 4 clients at once (time to first token and to the whole answer, as the `openai` client sees it).

Runs on the random full-size checkpoint of `bench_decode.py` (MedGemma 1.5 4B's shapes; speed depends on shapes,
not weight values), loaded once as the app loads it (NF4, the fast decode path); every answer is 64 new tokens (a
random model never ends early), one 512x512 picture per question, greedy.

Usage: python benchmarks/bench_serve.py OUT [--smoke]  (`--smoke`: the tiny checkpoint on the CPU, few items, to
check the script without a GPU). Builds the checkpoint if `bench_decode.py` has not. Writes OUT/bench_serve.json.
"""

from __future__ import annotations

import base64
import io
import json
import math
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import uvicorn
from openai import OpenAI
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_decode import ADAPTER, CKPT, build, wait_for_compiled
from medgemma_desktop.core.engine import Engine, GenerationSettings, LoadOptions
from medgemma_desktop.server.app import ServerOptions, create_app
from medgemma_desktop.session.batch import BatchTask, batch_units, run_batch
from medgemma_desktop.session.batch_results import ResultsFile

NEW_TOKENS = 64
RESULTS: list[dict] = []


def emit(record: dict, out: Path) -> None:
    RESULTS.append(record)
    print(json.dumps(record), flush=True)
    (out / "bench_serve.json").write_text(json.dumps(RESULTS, indent=1))


def pictures(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"{index:03d}.png"
        Image.effect_noise((512, 512), 40 + index).convert("RGB").save(path)
        paths.append(path)
    return paths


def bench_batch(engine: Engine, out: Path, count: int) -> None:
    folder = Path(tempfile.mkdtemp())
    units = batch_units(pictures(folder / "images", count))
    task = BatchTask("describe", "", GenerationSettings(max_new_tokens=NEW_TOKENS))
    run_batch(units[:1], engine, task, ResultsFile.open(folder / "warmup.jsonl"))  # compile and capture first
    with ResultsFile.open(folder / "results.jsonl") as results:
        start = time.perf_counter()
        summary = run_batch(units, engine, task, results)
        elapsed = time.perf_counter() - start
    emit({"event": "batch", "items": count, "answered": summary.answered, "failed": summary.failed,
          "new_tokens_each": NEW_TOKENS, "seconds": round(elapsed, 2), "items_per_s": round(count / elapsed, 3)}, out)


def start_server(engine: Engine) -> tuple[str, uvicorn.Server, threading.Thread]:
    server = uvicorn.Server(uvicorn.Config(create_app(engine, ServerOptions(model_id="bench", queue_capacity=8)),
                                           host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    return f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/v1", server, thread


def one_request(client: OpenAI, image_url: str) -> tuple[float, float]:
    """Seconds to the first streamed text and to the end, as a client sees them."""
    start = time.perf_counter()
    first = None
    stream = client.chat.completions.create(
        model="bench", max_tokens=NEW_TOKENS, temperature=0, stream=True,
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                               {"type": "text", "text": "Describe this image."}]}])
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - start
    return first or 0.0, time.perf_counter() - start


def bench_server(engine: Engine, out: Path, requests_each: int) -> None:
    url, server, thread = start_server(engine)
    buffer = io.BytesIO()
    Image.effect_noise((512, 512), 50).convert("RGB").save(buffer, format="PNG")
    image_url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    one_request(OpenAI(base_url=url, api_key="none"), image_url)  # warm-up
    for clients in (1, 4):
        timings: list[tuple[float, float]] = []

        def client_loop(timings: list[tuple[float, float]]) -> None:
            client = OpenAI(base_url=url, api_key="none", max_retries=10)
            for _ in range(requests_each):
                timings.append(one_request(client, image_url))

        threads = [threading.Thread(target=client_loop, args=(timings,)) for _ in range(clients)]
        start = time.perf_counter()
        for worker in threads:
            worker.start()
        for worker in threads:
            worker.join()
        elapsed = time.perf_counter() - start
        firsts, totals = sorted(t[0] for t in timings), sorted(t[1] for t in timings)
        emit({"event": "server", "clients": clients, "requests": len(timings), "new_tokens_each": NEW_TOKENS,
              "first_token_s_median": round(statistics.median(firsts), 3),
              "total_s_median": round(statistics.median(totals), 3),
              "total_s_p90": round(totals[math.ceil(0.9 * len(totals)) - 1], 3),
              "answers_per_s": round(len(timings) / elapsed, 3)}, out)
    server.should_exit = True
    thread.join()


def main() -> None:
    smoke = "--smoke" in sys.argv
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    out = Path(args[0] if args else Path(__file__).parent / "results")
    out.mkdir(parents=True, exist_ok=True)
    emit({"event": "versions", "torch": torch.__version__,
          "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}, out)
    if smoke:
        from medgemma_desktop.core.tiny_checkpoint import write_tiny_checkpoint

        tiny = write_tiny_checkpoint(Path(tempfile.mkdtemp()))
        engine = Engine.load(tiny.model_dir, tiny.adapter_dir, LoadOptions(force_cpu=True))
        bench_batch(engine, out, 3)
        bench_server(engine, out, 2)
        return
    build(out)
    engine = Engine.load(CKPT, ADAPTER, LoadOptions(context_limit=2048))
    # Measure the app's steady state: the compiled step, which the app builds in the background after loading.
    emit({"event": "loaded", **wait_for_compiled(engine)}, out)
    bench_batch(engine, out, 50)
    bench_server(engine, out, 8)


if __name__ == "__main__":
    main()
