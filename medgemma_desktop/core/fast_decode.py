"""Fast decoding: the static step (`core.static_step`) replayed as a CUDA graph, answering from the moment the
model is loaded.

Plain decoding spends ~90 ms per token on Python and thousands of tiny kernel launches, not on bytes. The static
step depends on no per-token Python value, so one CUDA graph replays every token. Captured as it is, the graph
is ready within seconds of loading; compiled by torch.compile first it runs about twice as fast, but compiling
takes a minute or more on a new machine. So the runner answers with the uncompiled graph at once and builds the
compiled step in a background thread, on a scratch copy of the cache; the compiled step is captured in its
place at the start of the next answer (its artifacts are cached on disk, so later starts compile in seconds).

Adapters switch without capturing again: the step reads LoRA from fixed slots that `StepRunner.load_adapter`
copies the active adapter into. Only an adapter that does not fit the slots (a higher rank, another projection,
another dtype) needs a new runner, whose slots then fit every adapter loaded.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import bitsandbytes as bnb
import torch

from medgemma_desktop.core import triton_helpers
from medgemma_desktop.core.app_dirs import cache_dir
from medgemma_desktop.core.decoding import Decoder, EagerDecoder
from medgemma_desktop.core.device import DevicePlan
from medgemma_desktop.core.errors import ContextTooLongError
from medgemma_desktop.core.fast_linear import (
    STEP_PROJECTIONS,
    LoraSlots,
    base_layer,
    fusion_problem,
    lora_problem,
    projections,
)
from medgemma_desktop.core.static_step import StaticDecodeState, model_parts

log = logging.getLogger(__name__)

DecoderFactory = Callable[[torch.nn.Module], Decoder]
SUPPORTED_LAYER_TYPES = {"sliding_attention", "full_attention"}
COMPILE_BACKEND = "inductor"
WARM_UP_STEPS = 3  # before capture: lazy initialisation (cuBLAS handles, autotuning) must not be captured
# While compiling in the background, the thread holding the GIL gives it up after this long when the answering
# thread asks (Python's default is 5 ms). Every torch call releases the GIL and takes it back, so with the default
# each of the prompt pass's ~2,600 calls waited ~5 ms for the compiling thread: 13 s to the first token (H200).
COMPILE_SWITCH_INTERVAL_S = 0.00005
_fast_stream: torch.cuda.Stream | None = None
_compile_stream: torch.cuda.Stream | None = None
_captured: weakref.WeakSet[StepRunner] = weakref.WeakSet()  # runners whose graph is alive
_compilers: weakref.WeakSet[threading.Thread] = weakref.WeakSet()


@atexit.register
def _finish_compiles() -> None:
    """A thread still inside torch's C++ code when the interpreter finalises aborts the process ("terminate
    called without an active exception"), so exiting waits for a background compile to end (a minute at most on a
    new machine, seconds with a warm cache). Callers that exit after one answer pass `compile_step=False`."""
    for thread in list(_compilers):
        if thread.is_alive():
            log.info("waiting for the background compile to finish before exiting")
            thread.join()


def _fast_path_stream() -> torch.cuda.Stream:
    """The one stream for the fast path's warm-up, capture and prompt pass. Each stream that runs a cuBLAS call
    holds its own workspace (32 MiB on Hopper) for the process's life, so one stream, not one per capture, and the
    prompt on it too rather than on the default stream. The graph replays on the caller's stream but with this
    stream's workspace, fixed at capture: work queued here must be ordered against the caller's stream both ways
    (`StepRunner.prefill`), never run beside a replay."""
    global _fast_stream
    if _fast_stream is None:
        _fast_stream = torch.cuda.Stream()
    return _fast_stream


def _background_stream() -> torch.cuda.Stream:
    """The stream the background compile runs its scratch steps on: never the fast stream, whose cuBLAS workspace
    a live graph uses. Its workspace is given back when the compiled step is captured (`_capture`)."""
    global _compile_stream
    if _compile_stream is None:
        _compile_stream = torch.cuda.Stream()
    return _compile_stream


def compile_cache_dir() -> Path:
    """Where inductor and Triton keep compiled kernels and graphs: the platform cache dir, so compiling happens
    once per machine (and a packaged app could ship it filled)."""
    return cache_dir() / "torch-compile"


def _use_compile_cache() -> None:
    folder = compile_cache_dir()
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder))
    os.environ.setdefault("TRITON_CACHE_DIR", str(folder / "triton"))
    helpers = triton_helpers.bundled_folder()  # the installed app: no C compiler, Triton's helper prebuilt
    if helpers is not None and not triton_helpers.serve_prebuilt(helpers):
        log.warning("the installer's prebuilt Triton helper could not be used; compiling needs a C compiler")


class StepRunner:
    """Runs the prompt and the step: eagerly (CPU, CI), or on CUDA the step as one CUDA graph captured at
    construction, and the prompt on the same stream. With `compile_step`, a compiled step is built in a background
    thread and swapped in between answers (`adopt_compiled`).

    One runner serves one generation at a time; it keeps its cache and graph between generations, so capture
    (and compile) cost is paid at load, not at each question's first token.
    """

    def __init__(self, model: torch.nn.Module, capacity: int, cuda_graph: bool = False,
                 compile_step: bool = False, slots: LoraSlots | None = None) -> None:
        self.model = model
        self.state = StaticDecodeState(model, capacity, slots)
        self.cuda_graph = cuda_graph
        self.compiled = False
        self.owner: object | None = None
        self.setup_s = 0.0  # capturing the uncompiled graph
        self.compile_s: float | None = None  # building the compiled step in the background, once done
        self.compile_error: str | None = None
        self.step: Callable[[], torch.Tensor] = self.state.step  # the step the graph was captured from
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_logits: torch.Tensor | None = None
        self._built: Callable[[StaticDecodeState], torch.Tensor] | None = None
        self._closed = False
        self._compiler: threading.Thread | None = None
        if cuda_graph:
            start = time.perf_counter()
            self._capture(self.state.step)
            self.setup_s = time.perf_counter() - start
        if compile_step:
            self._compiler = threading.Thread(target=self._compile, name="fast-step-compile", daemon=True)
            _compilers.add(self._compiler)
            self._compiler.start()

    @property
    def compiling(self) -> bool:
        return self._compiler is not None and self._compiler.is_alive()

    def _compile(self) -> None:
        """Background thread: compile the step and run it on a scratch cache (compiling happens at the first
        call), leaving the live cache and graph to the answers meanwhile."""
        start, interval = time.perf_counter(), sys.getswitchinterval()
        sys.setswitchinterval(COMPILE_SWITCH_INTERVAL_S)
        try:
            _use_compile_cache()
            step = torch.compile(StaticDecodeState.step, fullgraph=False, dynamic=False, backend=COMPILE_BACKEND)
            scratch = self.state.scratch()
            with torch.inference_mode():
                if self.cuda_graph:
                    stream = _background_stream()
                    with torch.cuda.stream(stream):
                        for _ in range(WARM_UP_STEPS):
                            step(scratch)
                    stream.synchronize()
                else:
                    for _ in range(WARM_UP_STEPS):
                        step(scratch)
            del scratch
            if not self._closed:
                self._built = step
        except Exception as exc:  # no compiler, out of memory, an inductor bug: the uncompiled step keeps serving
            log.exception("compiling the fast step failed; decoding stays on the uncompiled step")
            self.compile_error = f"{type(exc).__name__}: {exc}"
        finally:
            sys.setswitchinterval(interval)
        self.compile_s = time.perf_counter() - start

    def adopt_compiled(self, wait: bool = False) -> bool:
        """Put the compiled step in place once the background build has finished (after waiting for it with
        `wait`): captured as the graph on CUDA, called directly elsewhere. Call between generations only. A
        compiled step that would compile again for the live cache (it must not: it is guarded on shapes) is
        refused, keeping the uncompiled step. True when the compiled step is in place."""
        if wait and self._compiler is not None:
            self._compiler.join()
        built, self._built = self._built, None
        if built is None or self._closed:
            return self.compiled
        step = functools.partial(built, self.state)
        try:
            with torch._dynamo.config.patch(error_on_recompile=True):
                if self.cuda_graph:
                    self._release_graph()
                    self._capture(step)
                else:
                    with torch.inference_mode():
                        step()  # checks the guards now rather than in an answer
        except Exception as exc:
            log.exception("the compiled step could not be put in place; decoding stays on the uncompiled step")
            self.compile_error = f"{type(exc).__name__}: {exc}"
            if self.cuda_graph:
                self._release_graph()
                self._capture(self.state.step)
            return False
        self.step, self.compiled = step, True
        return True

    def _release_graph(self) -> None:
        if self._graph is not None:
            torch.cuda.synchronize()  # a step queued ahead of an answer's end (`generated_tokens`) may still run
        self._graph = self._graph_logits = None
        _captured.discard(self)

    def _capture(self, step: Callable[[], torch.Tensor]) -> None:
        with torch.inference_mode():
            torch.cuda.synchronize()
            # Loading (and a background compile) ran cuBLAS on other streams; from here on the fast path's stream
            # is the only one that does, so their workspaces are given back rather than held beside it. Not while
            # another captured step is alive: its graph keeps using the fast stream's workspace, which this frees.
            if not _captured:
                torch._C._cuda_clearCublasWorkspaces()
            stream = _fast_path_stream()
            with torch.cuda.stream(stream):  # warm-up off the default stream, as capture needs
                for _ in range(WARM_UP_STEPS):
                    step()
            torch.cuda.current_stream().wait_stream(stream)
            self.state.position.zero_()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream):
                self._graph_logits = step()
            self._graph = graph
        _captured.add(self)
        torch.cuda.synchronize()

    def load_adapter(self) -> bool:
        """Follow the adapter active now (or the base alone) by copying it into the step's LoRA slots; the graph
        is kept. False, copying nothing, when it does not fit the slots: then the step must be built again."""
        problem = self.state.adapter_problem()
        if problem is not None:
            log.info("%s: the fast step is built again for it", problem)
            return False
        self.state.load_adapter()
        return True

    def close(self) -> None:
        """Drop the graph and the cache's tensors now; a background compile still running discards its result."""
        self._closed = True
        self._release_graph()
        self.step = self.state.step
        self.state.keys, self.state.values = [], []

    def prefill(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if not self.cuda_graph:
            return self.state.prefill(inputs)
        stream, current = _fast_path_stream(), torch.cuda.current_stream()
        stream.wait_stream(current)
        try:
            with torch.cuda.stream(stream):
                logits = self.state.prefill(inputs)
        finally:
            current.wait_stream(stream)
        logits.record_stream(current)  # read on the caller's stream after this returns
        return logits

    def run(self, token: torch.Tensor) -> torch.Tensor:
        self.state.token.copy_(token.view(1, 1))
        if self._graph is None:
            return self.step()
        self._graph.replay()
        return self._graph_logits.clone()  # the next replay overwrites the graph's output


class FastDecoder:
    """The `Decoder` over a `StepRunner`: the prompt through the runner's own layers, then its step per token."""

    def __init__(self, runner: StepRunner) -> None:
        self._runner = runner
        self._position = 0

    @property
    def name(self) -> str:
        runner = self._runner
        return ("fast-graph" if runner.cuda_graph else "fast") + ("-compiled" if runner.compiled else "")

    @property
    def queues_ahead(self) -> bool:
        """A replayed graph runs on while the host reads the token (`decoding.generated_tokens`)."""
        return self._runner.cuda_graph

    def prefill(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        runner = self._runner
        runner.owner = self
        runner.adopt_compiled()  # between answers: the moment a finished background compile is swapped in
        logits = runner.prefill(inputs)
        self._position = int(inputs["input_ids"].shape[1])
        return logits

    def step(self, token: torch.Tensor) -> torch.Tensor:
        runner = self._runner
        if runner.owner is not self:
            raise RuntimeError("another generation is using this decode cache")
        if self._position >= runner.state.capacity:
            raise ContextTooLongError(f"the answer reached the decode cache size of {runner.state.capacity:,} tokens",
                                      fix="Raise the context limit or ask for a shorter answer.")
        logits = runner.run(token)
        self._position += 1
        return logits

    def release(self) -> None:
        if self._runner.owner is self:
            self._runner.owner = None


class FastDecoderFactory:
    """`Engine.decoder_factory` for the fast path: hands out decoders over one shared runner."""

    def __init__(self, runner: StepRunner) -> None:
        self.runner = runner

    def __call__(self, model: torch.nn.Module) -> Decoder:
        if model is not self.runner.model:
            raise ValueError("this fast decoder was built for another model")
        return FastDecoder(self.runner)

    @property
    def reason(self) -> str:
        """The decode path and its state, for `Engine.decoder_reason` (recorded with every answer)."""
        runner = self.runner
        text = (f"fast decoding: static {runner.state.capacity:,}-token cache, one-token step captured as a CUDA "
                f"graph in {runner.setup_s:.1f} s")
        if runner.compiled:
            return f"{text}, compiled in the background in {runner.compile_s:.0f} s"
        if runner.compile_error:
            return f"{text}, uncompiled (compiling failed: see the log)"
        return f"{text}, compiling in the background" if runner.compiling else text

    def load_adapter(self) -> bool:
        """See `StepRunner.load_adapter`."""
        return self.runner.load_adapter()

    def close(self) -> None:
        self.runner.close()


def unsupported_reason(model: torch.nn.Module) -> str | None:
    """Why the static step cannot reproduce this model's attention, or None when it can."""
    try:
        multimodal, text, _ = model_parts(model)
        vision = multimodal.vision_tower
    except AttributeError:
        return "the model is not a Gemma 3 image-text model"
    if not all(hasattr(vision, name) for name in ("embeddings", "encoder", "post_layernorm")) or \
            getattr(vision, "use_head", False):
        return "the vision tower is not Gemma 3's SigLIP encoder"
    for layer in vision.encoder.layers:
        attn, mlp = layer.self_attn, layer.mlp
        for module in (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj, mlp.fc1, mlp.fc2):
            if not isinstance(base_layer(module), bnb.nn.Linear4bit) or base_layer(module).weight.quant_state is None:
                return "the vision tower's layers are not bitsandbytes 4-bit layers"
            problem = lora_problem(module)
            if problem is not None:
                return problem
    config = text.config
    if config.attn_logit_softcapping is not None:
        return "attention logit soft-capping is not implemented in the fast step"
    if not set(config.layer_types) <= SUPPORTED_LAYER_TYPES:
        return f"unknown attention layer types {sorted(set(config.layer_types) - SUPPORTED_LAYER_TYPES)}"
    for layer in text.layers[: config.num_hidden_layers]:
        for group in STEP_PROJECTIONS:
            problem = fusion_problem(projections(layer, group))
            if problem is not None:
                return problem
    return None


def choose_decoder(model: torch.nn.Module, plan: DevicePlan, context_limit: int = 8192,
                   compile_step: bool = True) -> tuple[DecoderFactory, str]:
    """The fast factory on CUDA (graph captured now, compiled in the background when allowed), else eager with
    the reason. `TORCH_COMPILE_DISABLE=1` keeps the uncompiled graph."""
    if not plan.is_cuda:
        return EagerDecoder, "plain decoding: the fast path replays CUDA graphs and needs an NVIDIA GPU"
    reason = unsupported_reason(model)
    if reason is not None:
        return EagerDecoder, f"plain decoding: {reason}"
    compile_step = compile_step and os.environ.get("TORCH_COMPILE_DISABLE", "") not in ("1", "true", "True")
    try:
        runner = StepRunner(model, context_limit, cuda_graph=True, compile_step=compile_step)
    except Exception:  # any failure of capture falls back; the log keeps the traceback
        log.exception("fast decode setup failed")
        torch.cuda.empty_cache()
        return EagerDecoder, "plain decoding: the fast path failed to start (see the log)"
    factory = FastDecoderFactory(runner)
    return factory, factory.reason
