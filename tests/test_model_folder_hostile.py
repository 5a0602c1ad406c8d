"""Model and adapter folders copied from the tiny checkpoint with one defect each: every one is refused by the
app's own check in one line naming the file, before transformers, tokenizers, PEFT or bitsandbytes read it."""

from __future__ import annotations

import json
import shutil
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from medgemma_desktop.core.engine import Engine, LoadOptions
from medgemma_desktop.core.errors import AdapterFolderError, ModelFolderError
from medgemma_desktop.core.model_folder import check_adapter_folder, check_model_folder
from medgemma_desktop.core.quant_cache import QuantizedModelCache

SHARD = "model-00001-of-00002.safetensors"


@pytest.fixture
def model(tiny_checkpoint, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_checkpoint.model_dir, tmp_path / "model"))


@pytest.fixture
def adapter(tiny_checkpoint, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_checkpoint.adapter_dir, tmp_path / "adapter"))


def edit_json(path: Path, change: Callable[[dict], object]) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    result = change(data)
    path.write_text(json.dumps(data if result is None else result), encoding="utf-8")


def edit_header(path: Path, change: Callable[[dict], None]) -> None:
    """Rewrite a safetensors header in place of the old one; the tensor data is left as it was."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    change(header)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + raw[8 + length:])


def refused(folder: Path, *says: str, adapter: Path | None = None) -> str:
    error_type = AdapterFolderError if adapter else ModelFolderError
    with pytest.raises(error_type) as raised:
        checked = check_model_folder(folder)
        if adapter is not None:
            check_adapter_folder(adapter, checked)
    message = str(raised.value)
    assert "\n" not in message and str(adapter or folder) in message
    for part in says:
        assert part in message
    return message


def first_tensor(header: dict) -> dict:
    return next(entry for name, entry in sorted(header.items()) if name != "__metadata__")


# -- the base model folder --------------------------------------------------------------------------------------


def test_a_tokenizer_json_that_is_not_a_tokenizer(model: Path) -> None:
    (model / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "Nonsense"}}')
    refused(model, "tokenizer.json", "not a valid tokenizer")
    (model / "tokenizer.json").write_text("{ cut short")
    refused(model, "tokenizer.json", "not a valid tokenizer")


def test_a_tokenizer_whose_image_token_disagrees_with_the_config(model: Path) -> None:
    edit_json(model / "config.json", lambda config: config.update(boi_token_index=5))
    refused(model, "<start_of_image>", "config.json says boi_token_index is 5")


@pytest.mark.parametrize(("field", "value", "says"), [
    ("size", "big", "size is big"),
    ("image_mean", "grey", "image_mean is grey"),
    ("image_std", [0.5, 0, 0.5], "divided by zero"),
    ("do_resize", "yes", "do_resize is 'yes'"),
    ("resample", "bilinear", "resample is 'bilinear'"),
    ("image_seq_length", "16", "image_seq_length is '16'"),
])
def test_a_processor_config_with_wrong_types(model: Path, field: str, value: object, says: str) -> None:
    def change(config: dict) -> None:
        (config if field == "image_seq_length" else config["image_processor"])[field] = value

    edit_json(model / "processor_config.json", change)
    refused(model, "processor_config.json", says)


def test_a_shard_header_with_an_unknown_dtype(model: Path) -> None:
    edit_header(model / SHARD, lambda header: first_tensor(header).update(dtype="Q4_K"))
    refused(model, SHARD, "unknown dtype 'Q4_K'")


def test_a_shard_header_whose_offsets_do_not_fit_its_shape(model: Path) -> None:
    edit_header(model / SHARD, lambda header: first_tensor(header)["shape"].append(2))
    refused(model, SHARD, "damaged", "needs")


def test_a_weight_stored_as_integers(model: Path) -> None:
    def to_int(header: dict) -> None:
        entry = header["language_model.model.layers.0.self_attn.q_proj.weight"]
        entry["dtype"] = "I16" if entry["dtype"] in ("BF16", "F16") else "I32"

    shard = next(name for name, file in json.loads((model / "model.safetensors.index.json").read_text())[
        "weight_map"].items() if name == "language_model.model.layers.0.self_attn.q_proj.weight" for name in [file])
    edit_header(model / shard, to_int)
    refused(model, "q_proj.weight is stored as I", "not as floating-point")


@pytest.mark.parametrize("also_from_index", [False, True])
def test_a_tensor_missing(model: Path, also_from_index: bool) -> None:
    name = "language_model.model.layers.1.mlp.down_proj.weight"
    index = model / "model.safetensors.index.json"
    shard = model / json.loads(index.read_text())["weight_map"][name]
    tensors = load_file(shard)
    del tensors[name]
    save_file(tensors, shard, metadata={"format": "pt"})
    if also_from_index:
        edit_json(index, lambda data: data["weight_map"].pop(name) and None)
    refused(model, name, "is missing")


@pytest.mark.parametrize(("change", "says"), [
    (lambda c: c["text_config"].update(hidden_size="64"), "text_config.hidden_size is '64'"),
    (lambda c: c["text_config"].update(num_hidden_layers=4.5), "num_hidden_layers is 4.5"),
    (lambda c: c.update(text_config=[]), "text_config is not a JSON object"),
    (lambda c: c["vision_config"].update(patch_size=0), "vision_config.patch_size is 0"),
    (lambda c: c["text_config"].update(layer_types="sliding"), "layer_types is not a list of 4"),
    (lambda c: c.update(eos_token_id="<eos>"), "eos_token_id is '<eos>'"),
    (lambda c: c.update(mm_tokens_per_image=None), "mm_tokens_per_image is None"),
    (lambda c: c["text_config"].update(hidden_size=128), "has shape [384, 64], config.json needs [384, 128]"),
])
def test_a_config_json_with_wrong_field_types(model: Path, change: Callable[[dict], None], says: str) -> None:
    edit_json(model / "config.json", change)
    refused(model, says)


def test_an_index_whose_weight_map_is_a_list(model: Path) -> None:
    edit_json(model / "model.safetensors.index.json", lambda data: data.update(weight_map=[SHARD]))
    refused(model, "model.safetensors.index.json", "weight_map is not a JSON object")


def test_an_index_entry_outside_the_model_folder_is_never_read(model: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(model / SHARD, other / "model.safetensors")  # a valid file is there: only the path is wrong
    index = model / "model.safetensors.index.json"
    edit_json(index, lambda data: data["weight_map"].update(
        {name: "../other/model.safetensors" for name, file in data["weight_map"].items() if file == SHARD}))
    refused(model, "model.safetensors.index.json", "outside the model folder", "../other/model.safetensors")


def test_a_chat_template_that_raises(model: Path) -> None:
    (model / "chat_template.jinja").write_text("{{ raise_exception('no') }}")
    refused(model, "chat template fails on a normal conversation")


def test_a_chat_template_that_loops_for_ever_is_stopped(model: Path) -> None:
    (model / "chat_template.jinja").write_text(
        "{% for a in range(99999) %}{% for b in range(99999) %}{% for c in range(99999) %}{{ '' }}"
        "{% endfor %}{% endfor %}{% endfor %}")
    started = time.perf_counter()
    refused(model, "did not finish")
    assert time.perf_counter() - started < 30


def test_a_chat_template_that_is_not_gemmas_format(model: Path) -> None:
    (model / "chat_template.jinja").write_text("{% for m in messages %}{{ m['role'] }}: text\n{% endfor %}")
    refused(model, "does not write Gemma 3's prompt format")


def test_a_gemma_template_written_differently_still_passes(model: Path) -> None:
    template = model / "chat_template.jinja"
    template.write_text(template.read_text().replace("{%- if add_generation_prompt -%}",
                                                     "{%- if add_generation_prompt == true -%}"))
    assert check_model_folder(model).path == model


def test_the_engine_refuses_a_bad_folder_with_the_checks_one_line(model: Path) -> None:
    (model / "tokenizer.json").write_text("[]")
    with pytest.raises(ModelFolderError, match="not a valid tokenizer"):
        Engine.load(model)


def test_a_load_checks_the_tokenizer_transformers_built_without_parsing_the_file_again(
        model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Gemma's tokenizer.json takes 0.5-1 s to parse: the folder check leaves it to the processor's read, then
    checks what that built as it would have checked the file."""
    from tokenizers import Tokenizer

    parsed: list[str] = []
    from_file = Tokenizer.from_file
    monkeypatch.setattr(Tokenizer, "from_file", staticmethod(lambda path: parsed.append(path) or from_file(path)))
    edit_json(model / "config.json", lambda config: config.update(boi_token_index=5))
    with pytest.raises(ModelFolderError) as raised:
        Engine.load(model, options=LoadOptions(force_cpu=True))
    message = str(raised.value)
    assert "\n" not in message and str(model / "tokenizer.json") in message
    assert "config.json says boi_token_index is 5" in message
    assert parsed == []
    with pytest.raises(ModelFolderError, match="boi_token_index is 5"):  # the full check says the same
        check_model_folder(model)
    assert parsed == [str(model / "tokenizer.json")]


def test_a_processor_transformers_cannot_build_is_one_line_naming_the_folder(model: Path) -> None:
    edit_json(model / "tokenizer_config.json", lambda config: config.update(added_tokens_decoder={"x": {"content": 7}}))
    assert check_model_folder(model).path == model  # a defect only transformers finds
    with pytest.raises(ModelFolderError) as raised:
        Engine.load(model, options=LoadOptions(force_cpu=True))
    message = str(raised.value)
    assert "\n" not in message and str(model) in message and "processor cannot be built" in message


# -- the adapter folder -----------------------------------------------------------------------------------------


def test_an_adapter_whose_rank_disagrees_with_its_weights(tiny_checkpoint, adapter: Path) -> None:
    edit_json(adapter / "adapter_config.json", lambda config: config.update(r=4))
    refused(tiny_checkpoint.model_dir, "rank disagrees", "rank 4", adapter=adapter)


def test_a_rank_pattern_is_honoured(tiny_checkpoint, adapter: Path) -> None:
    edit_json(adapter / "adapter_config.json", lambda config: config.update(r=4, rank_pattern={"q_proj": 8}))
    message = refused(tiny_checkpoint.model_dir, "rank disagrees", "rank 4", adapter=adapter)
    assert "q_proj" not in message  # q_proj's weights have rank 8, as the pattern says; v_proj's or o_proj's fail


@pytest.mark.parametrize(("targets", "says"), [
    (["q_proj", "qkv_proj"], "names qkv_proj, which MedGemma does not have"),
    (r".*\.attention\.query", "matches no module of MedGemma"),
    ("([", "not a valid regular expression"),
    ([], "not a list of module names"),
])
def test_adapter_target_modules_that_do_not_exist(tiny_checkpoint, adapter: Path, targets: object,
                                                   says: str) -> None:
    edit_json(adapter / "adapter_config.json", lambda config: config.update(target_modules=targets))
    refused(tiny_checkpoint.model_dir, says, adapter=adapter)


def test_an_adapter_config_with_wrong_types(tiny_checkpoint, adapter: Path) -> None:
    edit_json(adapter / "adapter_config.json", lambda config: config.update(r="8"))
    refused(tiny_checkpoint.model_dir, "r is '8'", adapter=adapter)


# -- the saved 4-bit model --------------------------------------------------------------------------------------


def test_an_edited_config_json_is_not_served_the_old_4bit_model(model: Path, tmp_path: Path) -> None:
    cache = QuantizedModelCache(tmp_path / "nf4")
    Engine.load(model, cache=cache)
    assert Engine.load(model, cache=cache).loaded_from_cache
    edit_json(model / "config.json", lambda config: config["text_config"].update(rms_norm_eps=1e-3))
    edited = Engine.load(model, cache=cache)
    assert not edited.loaded_from_cache and len(cache.entries()) == 2
    assert edited.model.config.text_config.rms_norm_eps == 1e-3


@pytest.mark.parametrize(("file", "change", "says"), [
    ("tokenizer_config.json", lambda c: c.update(bos_token=5), "bos_token is 5, not a token"),
    ("tokenizer_config.json", lambda c: c.update(extra_special_tokens=[1, 2]), "extra_special_tokens is not a list"),
    ("tokenizer_config.json", lambda c: c.update(model_max_length="big"), "model_max_length is 'big'"),
    ("processor_config.json", lambda c: c["image_processor"].update(image_processor_type="Nope"),
     "not Gemma 3's image processor"),
    ("config.json", lambda c: c.update(dtype="float99"), "dtype is 'float99'"),
    ("config.json", lambda c: c["text_config"].update(hidden_activation="nope"), "activation transformers does not"),
    ("config.json", lambda c: c["vision_config"].update(hidden_act=["gelu"]), "activation transformers does not"),
    ("config.json", lambda c: c["text_config"].update(rope_parameters={"full_attention": {"rope_type": "zzz"}}),
     "rope type 'zzz'"),
])
def test_fields_transformers_looks_up_by_name(model: Path, file: str, change, says: str) -> None:
    edit_json(model / file, change)
    refused(model, says)


def test_activations_known_without_transformers_are_in_its_table(model: Path) -> None:
    """Gemma's activations pass without importing `transformers.activations` (slow); this keeps that shortcut
    true to transformers' own table, and any other name transformers knows still passes."""
    from transformers.activations import ACT2FN

    from medgemma_desktop.core.gemma3_layout import GEMMA_ACTIVATIONS

    assert GEMMA_ACTIVATIONS.issubset(ACT2FN)
    edit_json(model / "config.json", lambda c: c["text_config"].update(hidden_activation="gelu"))
    assert check_model_folder(model).text_config["hidden_activation"] == "gelu"


@pytest.mark.parametrize(("change", "says"), [
    (lambda c: c.update(task_type="NOPE"), "task_type is 'NOPE'"),
    (lambda c: c.update(lora_dropout="x"), "lora_dropout is 'x'"),
    (lambda c: c.update(bias="weird"), "bias is 'weird'"),
])
def test_adapter_fields_peft_refuses_with_a_traceback(tiny_checkpoint, adapter: Path, change, says: str) -> None:
    edit_json(adapter / "adapter_config.json", change)
    refused(tiny_checkpoint.model_dir, says, adapter=adapter)


def test_nulls_that_real_configs_hold_are_accepted(model: Path) -> None:
    edit_json(model / "processor_config.json", lambda c: c["image_processor"].update(
        do_pan_and_scan=None, pan_and_scan_max_num_crops=None))
    edit_json(model / "tokenizer_config.json", lambda c: c.update(
        added_tokens_decoder={"0": {"content": "<pad>", "special": True}}, add_bos_token=True))
    assert check_model_folder(model).path == model


@pytest.mark.parametrize(("file", "change", "says"), [
    ("processor_config.json", lambda c: c["image_processor"].update(size={"height": 64}), "size is {'height': 64}"),
    ("config.json", lambda c: c.update(mm_tokens_per_image=15), "mm_tokens_per_image 15 is not the square"),
    ("config.json", lambda c: c["vision_config"].update(num_attention_heads=3), "not a multiple of its 3 heads"),
    ("config.json", lambda c: c["text_config"].update(sliding_window=None), "sliding_window is None"),
    ("config.json", lambda c: c["text_config"].update(layer_types=["x"] * 4), "layer_types is not a list"),
])
def test_values_the_model_cannot_be_built_with(model: Path, file: str, change, says: str) -> None:
    edit_json(model / file, change)
    refused(model, says)


@pytest.mark.parametrize(("change", "says"), [
    (lambda c: c.update(layers_to_transform=[99]), "layers_to_transform is [99]"),
    (lambda c: c.update(init_lora_weights="weird"), "init_lora_weights is 'weird'"),
    (lambda c: c.update(exclude_modules=5), "exclude_modules is not"),
    (lambda c: c.update(layers_pattern="layers"), "layers_pattern is set without"),
])
def test_adapter_settings_peft_cannot_apply(tiny_checkpoint, adapter: Path, change, says: str) -> None:
    edit_json(adapter / "adapter_config.json", change)
    refused(tiny_checkpoint.model_dir, says, adapter=adapter)


def test_a_huge_sparse_index_is_refused_by_size(model: Path) -> None:
    index = model / "model.safetensors.index.json"
    with index.open("r+b") as handle:
        handle.truncate(200 << 20)  # 200 MB, nearly all of it a hole
    started = time.perf_counter()
    refused(model, "model.safetensors.index.json", "far larger")
    assert time.perf_counter() - started < 20


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="named pipes are a POSIX feature")
def test_a_pipe_in_place_of_a_file_is_never_read(model: Path) -> None:
    import os

    (model / "tokenizer.json").unlink()
    os.mkfifo(model / "tokenizer.json")
    refused(model, "tokenizer missing")
