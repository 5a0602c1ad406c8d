"""Will it fit? GPU memory for weights, KV cache and activations, estimated from config.json before loading.

Other local-LLM apps crash with an unclear out-of-memory error; this plan is shown before loading and, when it
does not fit, says what would (a shorter context, fewer CT slices, the CPU). The arithmetic follows the shapes in
MedGemma's config: NF4 packs two weights per byte plus one absmax per 64-weight block (one byte with double quant,
whose second level adds a float32 per 256 blocks; four bytes without); bitsandbytes leaves embeddings, norms,
the patch embedding and the projector in the compute dtype. Gemma 3 keeps full-length K/V only in its global
layers; sliding-window layers keep at most `sliding_window` positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GIB = 2**30
MIB = 2**20
KIB = 2**10
NF4_BLOCK = 64
# Measured on an H200 (torch 2.11, CUDA 13; benchmarks/README.md): 0.79 GiB of device memory outside torch's
# allocator (CUDA context, cuBLAS workspaces), and the allocator reserving up to ~1.3x the activations it hands
# out at long prompts. Smaller cards need somewhat less context memory, so the plan errs on the safe side.
CUDA_CONTEXT_BYTES = 800 * MIB
ALLOCATOR_HEADROOM = 1.3


@dataclass(frozen=True)
class VramPlan:
    weights: int
    kv_cache: int
    activations: int
    cuda_context: int
    context_tokens: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations + self.cuda_context

    def rows(self) -> list[tuple[str, int]]:
        return [("weights (NF4 + bf16 embeddings)", self.weights),
                (f"KV cache for {self.context_tokens:,} tokens", self.kv_cache),
                ("activations (vision tower, prefill)", self.activations),
                ("CUDA context", self.cuda_context)]


@dataclass(frozen=True)
class Verdict:
    fits: bool
    message: str


def _linear_shapes(config: dict[str, Any]) -> tuple[list[tuple[int, int]], int]:
    """(in, out) of every linear layer bitsandbytes quantizes, and the count of parameters it leaves alone."""
    text, vision = config["text_config"], config["vision_config"]
    hidden, inter = text["hidden_size"], text["intermediate_size"]
    q_out = text["num_attention_heads"] * text["head_dim"]
    kv_out = text["num_key_value_heads"] * text["head_dim"]
    per_text_layer = [(hidden, q_out), (hidden, kv_out), (hidden, kv_out), (q_out, hidden),
                      (hidden, inter), (hidden, inter), (inter, hidden)]
    v_hidden, v_inter = vision["hidden_size"], vision["intermediate_size"]
    per_vision_layer = [(v_hidden, v_hidden)] * 4 + [(v_hidden, v_inter), (v_inter, v_hidden)]
    shapes = per_text_layer * text["num_hidden_layers"] + per_vision_layer * vision["num_hidden_layers"]

    patches = (vision["image_size"] // vision["patch_size"]) ** 2
    kept = (text["vocab_size"] * hidden  # tied embedding / lm_head
            + text["num_hidden_layers"] * (4 * hidden + 2 * text["head_dim"])  # four norms, q/k norms
            + hidden
            + 3 * vision["patch_size"] ** 2 * v_hidden + v_hidden + patches * v_hidden  # patch + position embed
            + vision["num_hidden_layers"] * (4 * v_hidden + sum(o for _, o in per_vision_layer))  # norms, biases
            + 2 * v_hidden
            + v_hidden * hidden + v_hidden)  # projector weight and its norm
    return shapes, kept


def weight_bytes(config: dict[str, Any], dtype_bytes: int, double_quant: bool = True) -> int:
    """Bytes of the base model once loaded in NF4."""
    shapes, kept = _linear_shapes(config)
    quantized = sum(i * o for i, o in shapes)
    blocks = sum(-(-i * o // NF4_BLOCK) for i, o in shapes)
    absmax = sum(-(-i * o // NF4_BLOCK // 256) * 4 + -(-i * o // NF4_BLOCK) for i, o in shapes) if double_quant \
        else blocks * 4
    return quantized // 2 + absmax + kept * dtype_bytes


def kv_cache_bytes(config: dict[str, Any], context_tokens: int, dtype_bytes: int = 2) -> int:
    """K and V for every layer: global layers hold the whole context, sliding ones at most the window."""
    text = config["text_config"]
    per_token_layer = 2 * text["num_key_value_heads"] * text["head_dim"] * dtype_bytes
    layer_types = text.get("layer_types") or [
        "full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(text["num_hidden_layers"])]
    window = text.get("sliding_window") or context_tokens
    return sum(per_token_layer * (context_tokens if kind == "full_attention" else min(context_tokens, window))
               for kind in layer_types)


def activation_bytes(config: dict[str, Any], prompt_tokens: int, images: int, dtype_bytes: int = 2) -> int:
    """Peak transient memory of one prefill: the vision tower on one image at a time, then the text layers.

    The vision term is the largest SigLIP layer's working set (hidden states, MLP intermediate, attention scores
    for one head group); the text term covers one layer's MLP intermediate and the causal mask over the prompt.
    """
    text, vision = config["text_config"], config["vision_config"]
    patches = (vision["image_size"] // vision["patch_size"]) ** 2
    vision_peak = (patches * (4 * vision["hidden_size"] + 2 * vision["intermediate_size"]) * dtype_bytes
                   + vision["num_attention_heads"] * patches * patches * dtype_bytes) if images else 0
    image_features = images * config.get("mm_tokens_per_image", 256) * text["hidden_size"] * dtype_bytes
    text_peak = prompt_tokens * (4 * text["hidden_size"] + 3 * text["intermediate_size"]) * dtype_bytes
    mask = prompt_tokens * prompt_tokens * dtype_bytes
    return int(ALLOCATOR_HEADROOM * (vision_peak + image_features + text_peak + mask))


def plan_vram(config: dict[str, Any], context_tokens: int, images: int = 1, dtype_bytes: int = 2,
              double_quant: bool = True, adapter_bytes: int = 0) -> VramPlan:
    """A plan for answering with `images` images inside a context of `context_tokens` tokens.

    `adapter_bytes` is the size of adapter_model.safetensors: PEFT keeps LoRA weights in float32, as saved.
    """
    return VramPlan(
        weights=weight_bytes(config, dtype_bytes, double_quant) + adapter_bytes,
        kv_cache=kv_cache_bytes(config, context_tokens, dtype_bytes),
        activations=activation_bytes(config, context_tokens, images, dtype_bytes),
        cuda_context=CUDA_CONTEXT_BYTES,
        context_tokens=context_tokens,
    )


def judge(plan: VramPlan, free_bytes: int, config: dict[str, Any], images: int = 1, dtype_bytes: int = 2) -> Verdict:
    """Does the plan fit the free device memory? If not, say what would."""
    if plan.total <= free_bytes:
        return Verdict(True, f"Fits: needs about {plan.total / GIB:.1f} GiB of {free_bytes / GIB:.1f} GiB free.")
    fixed = plan.weights + plan.cuda_context
    if fixed > free_bytes:
        return Verdict(False, f"The model alone needs about {fixed / GIB:.1f} GiB but only "
                              f"{free_bytes / GIB:.1f} GiB is free. Close other GPU programs, or use CPU mode (slow).")
    largest = _largest_context(config, free_bytes, images, dtype_bytes, plan)
    per_image = config.get("mm_tokens_per_image", 256)
    if largest >= per_image * images + 64:
        return Verdict(False, f"Needs about {plan.total / GIB:.1f} GiB but {free_bytes / GIB:.1f} GiB is free. "
                              f"A context of {largest:,} tokens fits (about {largest // per_image} images or CT "
                              "slices); or use CPU mode (slow).")
    return Verdict(False, f"Needs about {plan.total / GIB:.1f} GiB but {free_bytes / GIB:.1f} GiB is free. "
                          "Use fewer images, or CPU mode (slow).")


def _largest_context(config: dict[str, Any], free_bytes: int, images: int, dtype_bytes: int, plan: VramPlan) -> int:
    low, high = 0, plan.context_tokens
    while low < high:  # the plan grows with the context: binary search for the largest that fits
        mid = (low + high + 1) // 2
        candidate = VramPlan(plan.weights, kv_cache_bytes(config, mid, dtype_bytes),
                             activation_bytes(config, mid, images, dtype_bytes), plan.cuda_context, mid)
        if candidate.total <= free_bytes:
            low = mid
        else:
            high = mid - 1
    return low
