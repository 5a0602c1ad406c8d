"""Task-mode prompts: the exact structure of Google's notebooks, as the real Gemma 3 processor renders it."""

from __future__ import annotations

import pytest
import transformers
from PIL import Image

from medgemma_desktop.core.errors import UserFacingError
from medgemma_desktop.core.prompts import (
    CT_QUESTION,
    DOCUMENT_QUESTION,
    DOCUMENT_TABLE_FORMAT,
    LONGITUDINAL_CXR_QUESTION,
    MAX_SERIES_SLICES,
    ChatTurn,
    TaskMode,
    build_chat,
    build_describe,
    build_document_extraction,
    build_localization,
    build_longitudinal_cxr,
    build_series,
    build_task_prompt,
    estimate_prompt_tokens,
    localization_query,
    series_instruction,
    text_token_counter,
    to_processor_messages,
    user_turn,
)
from medgemma_desktop.core.tiny_checkpoint import TOKENS_PER_IMAGE, TinyCheckpoint

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
NOTEBOOK_CT_INSTRUCTION = ("You are an instructor teaching medical students. You are analyzing a contiguous block "
                           "of CT slices from the center of the abdomen. Please review the slices provided below "
                           "carefully.")
IMAGE_IN_PROMPT = "\n\n<start_of_image>" + "<image_soft_token>" * TOKENS_PER_IMAGE + "<end_of_image>\n\n"


def picture(color: tuple[int, int, int] = RED, size: tuple[int, int] = (40, 30)) -> Image.Image:
    return Image.new("RGB", size, color)


@pytest.fixture(scope="module")
def processor(tiny_checkpoint: TinyCheckpoint):
    return transformers.AutoProcessor.from_pretrained(tiny_checkpoint.model_dir, local_files_only=True)


def render(processor, turns: list[ChatTurn]) -> dict:
    return processor.apply_chat_template(to_processor_messages(turns), add_generation_prompt=True, tokenize=True,
                                         return_dict=True)


def rendered_text(processor, turns: list[ChatTurn]) -> str:
    return processor.tokenizer.decode(render(processor, turns)["input_ids"][0])


def red_share_per_image(processor, turns: list[ChatTurn]) -> list[float]:
    """Mean of the red channel (normalised to -1..1) of each image the processor will feed the model, in order."""
    return [float(pixels[0].mean()) for pixels in render(processor, turns)["pixel_values"]]


# --- Modes ----------------------------------------------------------------------------------------------------------

def test_every_mode_has_a_title_a_description_and_a_stable_value():
    assert len({mode.value for mode in TaskMode}) == len(TaskMode) == 7
    for mode in TaskMode:
        assert mode.title and mode.description
        assert TaskMode(mode.value) is mode


@pytest.mark.parametrize(("mode", "good", "bad"), [
    (TaskMode.DESCRIBE, [1], [0, 2]),
    (TaskMode.CT_SERIES, [1, 40, MAX_SERIES_SLICES], [0, MAX_SERIES_SLICES + 1]),
    (TaskMode.MRI_SERIES, [1, MAX_SERIES_SLICES], [0, MAX_SERIES_SLICES + 1]),
    (TaskMode.LONGITUDINAL_CXR, [2], [1, 3]),
    (TaskMode.LOCALIZATION, [1], [0, 2]),
    (TaskMode.DOCUMENT_EXTRACTION, [1], [0, 2]),
    (TaskMode.FREE_CHAT, [0, 1, 7], []),
])
def test_modes_accept_their_image_counts(mode: TaskMode, good: list[int], bad: list[int]):
    for count in good:
        assert mode.accepts(count)
        mode.check_image_count(count)
    for count in bad:
        assert not mode.accepts(count)
        with pytest.raises(UserFacingError):
            mode.check_image_count(count)


def test_wrong_image_count_is_one_line_naming_the_mode_and_the_fix():
    with pytest.raises(UserFacingError) as caught:
        TaskMode.LONGITUDINAL_CXR.check_image_count(1)
    message = str(caught.value)
    assert message == ("Compare chest X-rays needs exactly 2 images, and 1 was given. "
                       "Two chest X-rays of one patient: the prior first, then the current.")
    assert "\n" not in message


# --- Message structure per mode ----------------------------------------------------------------------------------

def test_describe_is_image_then_question_without_system_prompt():
    image = picture()
    assert build_describe(image, "What is shown?") == [ChatTurn("user", (image, "What is shown?"))]


def test_series_labels_each_slice_after_its_image_and_asks_last():
    slices = [picture((i, 0, 0)) for i in range(3)]
    [turn] = build_series(slices, "Is there a liver lesion?")
    assert turn.role == "user"
    assert turn.parts == (series_instruction("CT"), slices[0], "SLICE 1", slices[1], "SLICE 2", slices[2], "SLICE 3",
                          "Is there a liver lesion?")
    assert [id(image) for image in turn.images] == [id(image) for image in slices]


def test_series_instruction_is_the_notebooks_wording():
    assert series_instruction("CT", "the center of the abdomen") == NOTEBOOK_CT_INSTRUCTION
    assert series_instruction("CT") == NOTEBOOK_CT_INSTRUCTION.replace(" from the center of the abdomen", "")
    assert series_instruction("MRI").startswith("You are an instructor teaching medical students. You are analyzing "
                                                "a contiguous block of MRI slices.")


def test_mri_series_differs_from_ct_only_in_the_instruction():
    slices = [picture(), picture(BLUE)]
    [ct] = build_series(slices, "Q?", modality="CT")
    [mri] = build_series(slices, "Q?", modality="MRI")
    assert mri.parts[1:] == ct.parts[1:]
    assert "MRI slices" in mri.parts[0] and "CT slices" in ct.parts[0]


def test_series_accepts_a_custom_instruction():
    [turn] = build_series([picture()], "Q?", instruction=NOTEBOOK_CT_INSTRUCTION)
    assert turn.parts[0] == NOTEBOOK_CT_INSTRUCTION


def test_longitudinal_is_prior_then_current_then_the_notebooks_request():
    prior, current = picture(RED), picture(BLUE)
    assert build_longitudinal_cxr(prior, current) == [ChatTurn("user", (prior, current, LONGITUDINAL_CXR_QUESTION))]
    assert LONGITUDINAL_CXR_QUESTION == ("Provide a comparison of these two images and include details from the "
                                         "image which students should take note of when reading longitudinal CXR")


def test_localization_is_image_then_the_official_prompt():
    image = picture()
    [turn] = build_localization(image, "right clavicle")
    assert turn.parts[0] is image and len(turn.parts) == 2
    text = turn.parts[1]
    assert text.startswith("Instructions:\nThe following user query will require outputting bounding boxes. The "
                           "format of bounding boxes coordinates is [y0, x0, y1, x1] where (y0, x0) must be top-left "
                           "corner and (y1, x1) the bottom-right corner.")
    assert "Always normalize the x and y coordinates the range [0, 1000]" in text
    assert ('```json[{"box_2d": [800, 3, 840, 471], "label": "car"}, {"box_2d": [400, 22, 600, 73], '
            '"label": "dog"}]``` is a valid output.') in text
    assert ('Remember "left" refers to the patient\'s left side where the heart is and sometimes underneath an L '
            "in the upper right corner of the image.") in text
    assert text.endswith("Query:\nWhere is the right clavicle? Don't give a final answer without reasoning. Output "
                         'the final answer in the format "Final Answer: X" where X is a JSON list of objects. The '
                         'object needs a "box_2d" and "label" key. Answer:')


@pytest.mark.parametrize(("typed", "query"), [
    ("right clavicle", "Where is the right clavicle?"),
    ("  The heart ", "Where is the heart?"),
    ("Where are the lungs?", "Where are the lungs?"),
])
def test_localization_query_wraps_a_structure_name(typed: str, query: str):
    assert localization_query(typed) == query


def test_document_extraction_asks_for_a_markdown_table():
    image = picture()
    [turn] = build_document_extraction(image)
    assert turn.parts == (image, f"{DOCUMENT_QUESTION}\n\n{DOCUMENT_TABLE_FORMAT}")
    assert "Markdown table with the columns Test, Value, Unit and Reference range" in DOCUMENT_TABLE_FORMAT


def test_free_chat_keeps_history_and_puts_images_before_the_question():
    first, second = picture(RED), picture(BLUE)
    history = [user_turn(first, "What is this?"), ChatTurn("assistant", ("A chest X-ray.",))]
    turns = build_chat("And this one?", [second], system="Answer briefly.", history=history)
    assert turns == [ChatTurn("system", ("Answer briefly.",)), *history,
                     ChatTurn("user", (second, "And this one?"))]


@pytest.mark.parametrize("mode", list(TaskMode))
def test_no_builder_adds_a_system_prompt_unless_asked(mode: TaskMode):
    images = [picture()] * max(mode.min_images, 1)
    assert all(turn.role != "system" for turn in build_task_prompt(mode, images, "Q?"))
    with_system = build_task_prompt(mode, images, "Q?", system="You are a radiologist.")
    assert with_system[0] == ChatTurn("system", ("You are a radiologist.",))


def test_task_prompt_dispatches_to_each_modes_builder():
    a, b = picture(RED), picture(BLUE)
    history = [user_turn("Hi"), ChatTurn("assistant", ("Hello.",))]
    assert build_task_prompt(TaskMode.DESCRIBE, [a], "Q?") == build_describe(a, "Q?")
    assert build_task_prompt(TaskMode.CT_SERIES, [a, b], "Q?") == build_series([a, b], "Q?")
    assert build_task_prompt(TaskMode.MRI_SERIES, [a, b], "Q?") == build_series([a, b], "Q?", modality="MRI")
    assert build_task_prompt(TaskMode.LONGITUDINAL_CXR, [a, b], "Q?") == build_longitudinal_cxr(a, b, "Q?")
    assert build_task_prompt(TaskMode.LOCALIZATION, [a], "heart") == build_localization(a, "heart")
    assert build_task_prompt(TaskMode.DOCUMENT_EXTRACTION, [a], "Q?") == build_document_extraction(a, "Q?")
    assert build_task_prompt(TaskMode.FREE_CHAT, [a, b], "Q?", history=history) == build_chat("Q?", [a, b],
                                                                                               history=history)


def test_an_empty_question_asks_the_modes_default():
    a, b = picture(RED), picture(BLUE)
    assert build_task_prompt(TaskMode.LONGITUDINAL_CXR, [a, b], "  ") == build_longitudinal_cxr(a, b)
    assert build_task_prompt(TaskMode.CT_SERIES, [a], "")[-1].parts[-1] == CT_QUESTION
    assert build_task_prompt(TaskMode.LOCALIZATION, [a])[-1].parts[-1].endswith(
        'Where is the right clavicle? Don\'t give a final answer without reasoning. Output the final answer in the '
        'format "Final Answer: X" where X is a JSON list of objects. The object needs a "box_2d" and "label" key. '
        "Answer:")


def test_task_prompt_refuses_a_wrong_image_count_or_a_missing_question():
    with pytest.raises(UserFacingError, match="needs exactly 1 image"):
        build_task_prompt(TaskMode.DESCRIBE, [picture(), picture()], "Q?")
    with pytest.raises(UserFacingError, match="no question"):
        build_task_prompt(TaskMode.FREE_CHAT, [picture()], " ")


# --- Rendered through the real processor ------------------------------------------------------------------------

def test_series_renders_instruction_then_labelled_slices_then_the_question(processor):
    slices = [picture(RED), picture(GREEN), picture(BLUE)]
    turns = build_series(slices, "Is there a liver lesion?", instruction=NOTEBOOK_CT_INSTRUCTION)
    # The template joins text parts with nothing between them: exactly what the notebook's model saw.
    assert rendered_text(processor, turns) == (
        "<bos><start_of_turn>user\n" + NOTEBOOK_CT_INSTRUCTION
        + IMAGE_IN_PROMPT + "SLICE 1" + IMAGE_IN_PROMPT + "SLICE 2" + IMAGE_IN_PROMPT + "SLICE 3"
        + "Is there a liver lesion?<end_of_turn>\n<start_of_turn>model\n")
    assert red_share_per_image(processor, turns) == [1.0, -1.0, -1.0]  # the red slice is the first image
    assert sum(render(processor, turns)["token_type_ids"][0]) == 3 * TOKENS_PER_IMAGE


def test_system_text_is_prepended_to_the_first_user_turn(processor):
    image = picture()
    text = rendered_text(processor, build_describe(image, "Describe.", system="You are a radiologist."))
    assert text == ("<bos><start_of_turn>user\nYou are a radiologist.\n\n" + IMAGE_IN_PROMPT
                    + "Describe.<end_of_turn>\n<start_of_turn>model\n")


def test_longitudinal_renders_prior_before_current_before_the_request(processor):
    turns = build_longitudinal_cxr(picture(RED), picture(BLUE))
    assert rendered_text(processor, turns) == ("<bos><start_of_turn>user\n" + IMAGE_IN_PROMPT + IMAGE_IN_PROMPT
                                               + LONGITUDINAL_CXR_QUESTION
                                               + "<end_of_turn>\n<start_of_turn>model\n")
    assert red_share_per_image(processor, turns) == [1.0, -1.0]


def test_history_renders_assistant_turns_as_model(processor):
    history = [user_turn(picture(), "What is this?"), ChatTurn("assistant", ("A chest X-ray.",))]
    text = rendered_text(processor, build_chat("Any effusion?", history=history))
    assert text == ("<bos><start_of_turn>user\n" + IMAGE_IN_PROMPT + "What is this?<end_of_turn>\n"
                    "<start_of_turn>model\nA chest X-ray.<end_of_turn>\n"
                    "<start_of_turn>user\nAny effusion?<end_of_turn>\n<start_of_turn>model\n")


def test_localization_renders_image_first(processor):
    text = rendered_text(processor, build_localization(picture(), "heart"))
    assert text.startswith("<bos><start_of_turn>user\n" + IMAGE_IN_PROMPT + "Instructions:\n")
    assert text.endswith("Answer:<end_of_turn>\n<start_of_turn>model\n")


# --- Token budget -------------------------------------------------------------------------------------------------

def budget_cases() -> dict[str, list[ChatTurn]]:
    image = picture()
    history = [user_turn(image, "  First question?  "), ChatTurn("assistant", ("An answer with ünïcode ✓ ",))]
    return {
        "describe": build_describe(image),
        "series": build_series([image] * 12, CT_QUESTION, system="Be brief."),
        "longitudinal with history": build_longitudinal_cxr(image, image, history=history),
        "localization": build_localization(image, "left hemidiaphragm"),
        "document": build_document_extraction(image, system="Copy exactly."),
        "text only": build_chat("héllo?"),
        "image first in a history-less chat": build_chat("", [image, image]),
    }


@pytest.mark.parametrize("case", list(budget_cases()))
def test_estimate_equals_the_processors_token_count(processor, case: str):
    turns = budget_cases()[case]
    budget = estimate_prompt_tokens(turns, TOKENS_PER_IMAGE, text_token_counter(processor.tokenizer))
    assert budget.total == len(render(processor, turns)["input_ids"][0])
    assert budget.image_tokens == sum(len(turn.images) for turn in turns) * TOKENS_PER_IMAGE


def test_85_slices_cost_21760_image_tokens_at_256_per_image():
    turns = build_series([picture()] * 85, CT_QUESTION)
    budget = estimate_prompt_tokens(turns, 256, len)
    assert budget.image_tokens == 21_760
    # Each slice also costs its wrapper (<start_of_image>, <end_of_image>) and its label.
    assert budget.text_tokens > 85 * 2
    assert budget.total == budget.image_tokens + budget.text_tokens
