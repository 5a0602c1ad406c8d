"""A tiny, randomly initialised MedGemma-shaped checkpoint written in the real on-disk layout.

`medgemma-desktop doctor`, demo mode and the tests load it through exactly the code that loads the real
google/medgemma-1.5-4b-it folder: config.json, two safetensors shards with an index, a real `tokenizers` BPE
tokenizer with Gemma's special tokens and byte fallback, the Gemma 3 processor and chat template, and a rank-8
LoRA adapter on q/v/o. Sizes are chosen for bitsandbytes NF4 on the CPU: every quantized linear layer has an
input size that is a multiple of 64. The sliding window is shorter than a one-image prompt so that tests cover
both attention kinds past the window.
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# Gemma 3's chat template (google/gemma-3-4b-it tokenizer_config.json; MedGemma 1.5 uses the same).
CHAT_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    '    {%- set first_user_prefix = "" -%}\n'
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    '        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}\n'
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    '        {%- set role = "model" -%}\n'
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    '        {{ raise_exception("Invalid content type") }}\n'
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\\n'}}\n"
    "{%- endif -%}\n"
)

# Gemma's specials, in Gemma's order where it has one (pad 0, eos 1, bos 2, unk 3, mask 4); the thinking-trace
# markers that MedGemma 1.5 may emit; <image_soft_token> last, as in the real vocabulary (262,144 there).
SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>",
                  "<start_of_image>", "<end_of_image>", "<unused94>", "<unused95>"]
IMAGE_TOKEN = "<image_soft_token>"

HIDDEN = 64
IMAGE_SIZE = 64
PATCH_SIZE = 8  # 8 x 8 patches, average-pooled 2 x 2 to 4 x 4 = 16 tokens per image
TOKENS_PER_IMAGE = 16
SLIDING_WINDOW = 24  # longer than one image, shorter than any prompt with an image
MAX_POSITIONS = 4096
LORA_RANK = 8
LORA_ALPHA = 16
LORA_TARGETS = ["q_proj", "v_proj", "o_proj"]
BASE_MODEL_ID = "google/medgemma-1.5-4b-it"


@dataclass(frozen=True)
class TinyCheckpoint:
    """Where the factory wrote the base model and the adapter."""

    model_dir: Path
    adapter_dir: Path


def _vocabulary() -> list[str]:
    pieces = SPECIAL_TOKENS + [f"<0x{b:02X}>" for b in range(256)]
    pieces += ["\u2581"] + [c for c in string.printable if c not in " \t\n\r\x0b\x0c"]
    pieces += ["\n", "\n\n"]
    return [*pieces, IMAGE_TOKEN]


def _build_tokenizer(more_pieces: Sequence[str] = (), merges: Sequence[tuple[str, str]] = (),
                     reserved: int = 0):  # -> PreTrainedTokenizerFast
    """The tiny vocabulary; `more_pieces` (with the `merges` that make them) and `reserved` unused special tokens
    after it give a tokenizer of the real one's size (the benchmarks time loading it), the tiny ids unchanged."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers
    from transformers import GemmaTokenizerFast

    unused = [f"<unused{i}>" for i in range(100, 100 + reserved)]
    pieces = [*_vocabulary(), *more_pieces, *unused]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=list(merges), unk_token="<unk>", byte_fallback=True,
                                fuse_unk=True))
    core.normalizer = normalizers.Replace(" ", "\u2581")
    core.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    core.add_special_tokens([AddedToken(t, special=True, normalized=False)
                             for t in [*SPECIAL_TOKENS, IMAGE_TOKEN, *unused]])
    core.add_tokens([AddedToken(t, special=False, normalized=False) for t in ("\n", "\n\n")])
    return GemmaTokenizerFast(
        tokenizer_object=core,
        bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
        add_bos_token=False, add_eos_token=False,
        extra_special_tokens={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                              "image_token": IMAGE_TOKEN},
    )


def _model_config(tokenizer):  # -> Gemma3Config
    from transformers import Gemma3Config

    vocab_size = -(-len(tokenizer) // 64) * 64
    ids = tokenizer.convert_tokens_to_ids
    return Gemma3Config(
        text_config=dict(
            hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, vocab_size=vocab_size,
            sliding_window=SLIDING_WINDOW, max_position_embeddings=MAX_POSITIONS,
            layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
            rope_scaling={"rope_type": "linear", "factor": 8.0},
            bos_token_id=ids("<bos>"), eos_token_id=[ids("<eos>"), ids("<end_of_turn>")], pad_token_id=ids("<pad>"),
        ),
        vision_config=dict(
            hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=2, num_attention_heads=4,
            image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, vision_use_head=False,
        ),
        mm_tokens_per_image=TOKENS_PER_IMAGE,
        boi_token_index=ids("<start_of_image>"), eoi_token_index=ids("<end_of_image>"),
        image_token_index=ids(IMAGE_TOKEN),
        bos_token_id=ids("<bos>"), eos_token_id=[ids("<eos>"), ids("<end_of_turn>")], pad_token_id=ids("<pad>"),
    )


def _build_processor(tokenizer):  # -> Gemma3Processor
    from transformers import Gemma3ImageProcessor, Gemma3Processor

    image_processor = Gemma3ImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, resample=2, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], do_pan_and_scan=False,
    )
    return Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE,
                           image_seq_length=TOKENS_PER_IMAGE)


def write_tiny_checkpoint(root: Path, seed: int = 0) -> TinyCheckpoint:
    """Write a tiny base model folder and a rank-8 LoRA adapter folder under `root` (created if needed).

    Deterministic for a given seed. Specials and byte-fallback pieces get near-zero output embeddings, so that
    greedy decoding on random weights prints readable characters and runs to max_new_tokens instead of stopping
    at a random early <eos>.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Gemma3ForConditionalGeneration, GenerationConfig

    root = Path(root)
    model_dir, adapter_dir = root / "medgemma-tiny", root / "lora-r8-tiny"
    tokenizer = _build_tokenizer()
    config = _model_config(tokenizer)
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config).to(torch.bfloat16).eval()
    with torch.no_grad():
        # transformers initialises the image projector to zeros, which would make every image look the same.
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(std=0.5)
        embed = model.get_input_embeddings().weight
        quiet = SPECIAL_TOKENS + [f"<0x{b:02X}>" for b in range(256)]
        embed[tokenizer.convert_tokens_to_ids(quiet)] *= 0.01
    model.generation_config = GenerationConfig(
        bos_token_id=config.text_config.bos_token_id, eos_token_id=config.text_config.eos_token_id,
        pad_token_id=config.text_config.pad_token_id, do_sample=False,
    )
    # Two shards and an index, like the real 2-shard checkpoint.
    model.save_pretrained(model_dir, max_shard_size="400KB", safe_serialization=True)
    _build_processor(tokenizer).save_pretrained(model_dir)

    lora = LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, target_modules=LORA_TARGETS, lora_dropout=0.0,
                      bias="none", task_type="CAUSAL_LM")
    peft_model = get_peft_model(model.float(), lora)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:  # PEFT initialises B to zero; a real trained adapter is not a no-op
                param.normal_(std=0.05)
    peft_model.save_pretrained(adapter_dir, safe_serialization=True)
    _rename_base_in_adapter_config(adapter_dir)
    return TinyCheckpoint(model_dir=model_dir, adapter_dir=adapter_dir)


def _rename_base_in_adapter_config(adapter_dir: Path) -> None:
    """Name the real base model in adapter_config.json, as the seed adapter does."""
    path = adapter_dir / "adapter_config.json"
    data = json.loads(path.read_text())
    data["base_model_name_or_path"] = BASE_MODEL_ID
    path.write_text(json.dumps(data, indent=2, sort_keys=True))
