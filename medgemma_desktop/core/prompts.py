"""The message list the engine sends to the model, in Gemma 3's chat format, for each task mode.

Gemma 3 has no system role: the chat template prepends a system text to the first user turn. Roles must
alternate user / assistant. Images stay in the order given, each costing `tokens_per_image` tokens (256 for
MedGemma). The per-mode builders reproduce the content order of Google's MedGemma 1.5 notebooks exactly (see
MEDGEMMA.md): the model is more sensitive to the prompt than Gemma 3, and was trained without a system prompt.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

from PIL import Image

from medgemma_desktop.core.errors import UserFacingError

Role = Literal["system", "user", "assistant"]
Part = str | Image.Image

MEDGEMMA_TOKENS_PER_IMAGE = 256
MAX_SERIES_SLICES = 85  # the CT notebook's MAX_SLICE: slices sampled evenly through a volume

# high_dimensional_ct_hugging_face.ipynb. Its example adds " from the center of the abdomen" after "slices",
# and asks its question after the last "SLICE n" label; without a question there, the model writes a chest
# X-ray style report instead (medgemma#76).
_SERIES_INSTRUCTION = ("You are an instructor teaching medical students. You are analyzing a contiguous block of "
                       "{modality} slices{region}. Please review the slices provided below carefully.")
CT_QUESTION = ("Based on the visual evidence in the slices provided above, what are the key findings? Please "
               "provide your reasoning and conclude with a 'Final Answer:' that summarises the most important "
               "finding.")
MRI_QUESTION = CT_QUESTION

# The longitudinal chest X-ray notebook's request, after [prior image, current image].
LONGITUDINAL_CXR_QUESTION = ("Provide a comparison of these two images and include details from the image which "
                             "students should take note of when reading longitudinal CXR")

# cxr_anatomy_localization_with_hugging_face.ipynb, word for word (its typos included: the model was prompted
# with them). `{query}` is "Where is the <structure>?".
LOCALIZATION_TEMPLATE = (
    "Instructions:\n"
    "The following user query will require outputting bounding boxes. The format of bounding boxes coordinates "
    "is [y0, x0, y1, x1] where (y0, x0) must be top-left corner and (y1, x1) the bottom-right corner. This "
    "implies that x0 < x1 and y0 < y1. Always normalize the x and y coordinates the range [0, 1000], meaning "
    "that a bounding box starting at 15% of the image width would be associated with an x coordinate of 150. "
    "You MUST output a single parseable json list of objects enclosed into ```json...``` brackets, for "
    'instance ```json[{{"box_2d": [800, 3, 840, 471], "label": "car"}}, {{"box_2d": [400, 22, 600, 73], '
    '"label": "dog"}}]``` is a valid output. Now answer to the user query.\n'
    "\n"
    'Remember "left" refers to the patient\'s left side where the heart is and sometimes underneath an L in the '
    "upper right corner of the image.\n"
    "\n"
    "Query:\n"
    "{query} Don't give a final answer without reasoning. Output the final answer in the format "
    '"Final Answer: X" where X is a JSON list of objects. The object needs a "box_2d" and "label" key. Answer:'
)
LOCALIZATION_TARGET = "right clavicle"

DOCUMENT_QUESTION = "Extract every laboratory test result from this document."
DOCUMENT_TABLE_FORMAT = ("Answer with a Markdown table with the columns Test, Value, Unit and Reference range: "
                         "one row per test, in the order they appear, values copied exactly as printed, and an "
                         "empty cell where the document does not show one.")

DESCRIBE_QUESTION = "Describe this medical image and its key findings."


@dataclass(frozen=True)
class _ModeInfo:
    title: str
    description: str
    default_question: str
    min_images: int
    max_images: int | None  # None: any number


class TaskMode(Enum):
    """What the user asks for; the value is stable, for settings and the conversation store."""

    DESCRIBE = "describe"
    CT_SERIES = "ct_series"
    MRI_SERIES = "mri_series"
    LONGITUDINAL_CXR = "longitudinal_cxr"
    LOCALIZATION = "localization"
    DOCUMENT_EXTRACTION = "document_extraction"
    FREE_CHAT = "free_chat"

    @property
    def title(self) -> str:
        return _MODES[self].title

    @property
    def description(self) -> str:
        return _MODES[self].description

    @property
    def default_question(self) -> str:
        """What is asked when the user types nothing ("" where a question is required); for LOCALIZATION, the
        structure to find."""
        return _MODES[self].default_question

    @property
    def min_images(self) -> int:
        return _MODES[self].min_images

    @property
    def max_images(self) -> int | None:
        return _MODES[self].max_images

    def accepts(self, image_count: int) -> bool:
        upper = self.max_images
        return image_count >= self.min_images and (upper is None or image_count <= upper)

    def check_image_count(self, image_count: int) -> None:
        """Raise a one-line `UserFacingError` when this mode cannot take that many images."""
        if self.accepts(image_count):
            return
        lower, upper = self.min_images, self.max_images
        if lower == upper:
            needs = f"exactly {lower} image{'s' if lower != 1 else ''}"
        elif upper is None:
            needs = f"at least {lower} image{'s' if lower != 1 else ''}"
        else:
            needs = f"{lower} to {upper} images"
        given = f"{image_count} {'was' if image_count == 1 else 'were'} given"
        raise UserFacingError(f"{self.title} needs {needs}, and {given}",
                              fix=self.description)


_MODES: dict[TaskMode, _ModeInfo] = {
    TaskMode.DESCRIBE: _ModeInfo(
        "Describe an image", "One picture, answered as a report.", DESCRIBE_QUESTION, 1, 1),
    TaskMode.CT_SERIES: _ModeInfo(
        "CT series", f"Up to {MAX_SERIES_SLICES} windowed axial CT slices, read as one volume.",
        CT_QUESTION, 1, MAX_SERIES_SLICES),
    TaskMode.MRI_SERIES: _ModeInfo(
        "MRI series", f"Up to {MAX_SERIES_SLICES} MRI slices, read as one volume.", MRI_QUESTION, 1,
        MAX_SERIES_SLICES),
    TaskMode.LONGITUDINAL_CXR: _ModeInfo(
        "Compare chest X-rays", "Two chest X-rays of one patient: the prior first, then the current.",
        LONGITUDINAL_CXR_QUESTION, 2, 2),
    TaskMode.LOCALIZATION: _ModeInfo(
        "Find anatomy", "One chest X-ray; name a structure and the answer draws its box.",
        LOCALIZATION_TARGET, 1, 1),
    TaskMode.DOCUMENT_EXTRACTION: _ModeInfo(
        "Extract lab results", "One photo or scan of a lab report, answered as a table.", DOCUMENT_QUESTION, 1, 1),
    TaskMode.FREE_CHAT: _ModeInfo(
        "Free chat", "Any number of images and a question; earlier turns are kept.", "", 0, None),
}


@dataclass(frozen=True)
class ChatTurn:
    """One turn: text and images in the order the model should read them."""

    role: Role
    parts: tuple[Part, ...]

    @property
    def images(self) -> list[Image.Image]:
        return [part for part in self.parts if isinstance(part, Image.Image)]


def user_turn(*parts: Part) -> ChatTurn:
    return ChatTurn("user", tuple(parts))


def _conversation(parts: Sequence[Part], system: str | None, history: Sequence[ChatTurn]) -> list[ChatTurn]:
    turns: list[ChatTurn] = []
    if system:
        turns.append(ChatTurn("system", (system,)))
    turns.extend(history)
    turns.append(user_turn(*parts))
    return turns


def build_chat(question: str, images: Sequence[Image.Image] = (), system: str | None = None,
               history: Sequence[ChatTurn] = ()) -> list[ChatTurn]:
    """A plain question (free chat): earlier turns, then the images followed by the question (images first, as
    Google's notebooks put them)."""
    return _conversation([*images, question], system, history)


def build_describe(image: Image.Image, question: str = DESCRIBE_QUESTION, *, system: str | None = None,
                   history: Sequence[ChatTurn] = ()) -> list[ChatTurn]:
    """One image, then the question: [image, text]."""
    return _conversation([image, question], system, history)


def series_instruction(modality: Literal["CT", "MRI"] = "CT", region: str | None = None) -> str:
    """The CT notebook's opening text; `region` (e.g. "the center of the abdomen") where the series says it."""
    return _SERIES_INSTRUCTION.format(modality=modality, region=f" from {region}" if region else "")


def build_series(slices: Sequence[Image.Image], question: str, *, modality: Literal["CT", "MRI"] = "CT",
                 instruction: str | None = None, system: str | None = None,
                 history: Sequence[ChatTurn] = ()) -> list[ChatTurn]:
    """A volume as the CT notebook sends it: instruction, then each slice followed by its label "SLICE n"
    (1-based), then the question last."""
    parts: list[Part] = [instruction or series_instruction(modality)]
    for number, image in enumerate(slices, 1):
        parts += [image, f"SLICE {number}"]
    parts.append(question)
    return _conversation(parts, system, history)


def build_longitudinal_cxr(prior: Image.Image, current: Image.Image, question: str = LONGITUDINAL_CXR_QUESTION, *,
                           system: str | None = None, history: Sequence[ChatTurn] = ()) -> list[ChatTurn]:
    """[prior image, current image, text]: the order tells the model which study is older."""
    return _conversation([prior, current, question], system, history)


def localization_query(target: str) -> str:
    """The notebook's query for a structure name ("right clavicle" -> "Where is the right clavicle?"); a text
    that is already a question is kept as it is."""
    target = target.strip()
    if target.endswith("?"):
        return target
    if target.lower().startswith("the "):
        target = target[4:].lstrip()
    return f"Where is the {target}?"


def build_localization(image: Image.Image, target: str = LOCALIZATION_TARGET, *, system: str | None = None,
                       history: Sequence[ChatTurn] = ()) -> list[ChatTurn]:
    """[image, official localization prompt]: boxes come back as `box_2d` [y0, x0, y1, x1] in 0..1000 over the
    whole image as sent (padded to square by the caller), parsed by `core.boxes`."""
    return _conversation([image, LOCALIZATION_TEMPLATE.format(query=localization_query(target))], system, history)


def build_document_extraction(image: Image.Image, question: str = DOCUMENT_QUESTION, *, system: str | None = None,
                              history: Sequence[ChatTurn] = ()) -> list[ChatTurn]:
    """[image, question + table format]: a fixed table shape is easy to read, check and export."""
    return _conversation([image, f"{question.strip()}\n\n{DOCUMENT_TABLE_FORMAT}"], system, history)


def build_task_prompt(mode: TaskMode, images: Sequence[Image.Image], question: str = "", *,
                      system: str | None = None, history: Sequence[ChatTurn] = ()) -> list[ChatTurn]:
    """The turns for one question in `mode`; an empty question asks the mode's default.

    Raises `UserFacingError` when the mode cannot take that many images, or needs a question and got none.
    Images must already be what the model should see (windowed, padded to square where the mode needs it).
    """
    mode.check_image_count(len(images))
    question = question.strip() or mode.default_question
    if not question:
        raise UserFacingError("there is no question to ask", fix="Type a question first.")
    if mode is TaskMode.DESCRIBE:
        return build_describe(images[0], question, system=system, history=history)
    if mode is TaskMode.CT_SERIES:
        return build_series(images, question, modality="CT", system=system, history=history)
    if mode is TaskMode.MRI_SERIES:
        return build_series(images, question, modality="MRI", system=system, history=history)
    if mode is TaskMode.LONGITUDINAL_CXR:
        return build_longitudinal_cxr(images[0], images[1], question, system=system, history=history)
    if mode is TaskMode.LOCALIZATION:
        return build_localization(images[0], question, system=system, history=history)
    if mode is TaskMode.DOCUMENT_EXTRACTION:
        return build_document_extraction(images[0], question, system=system, history=history)
    return build_chat(question, images, system=system, history=history)


# --- User text is text -------------------------------------------------------------------------------------------

# Gemma 3's control tokens: the ones its tokenizer marks special (matched in any text before it is split into
# words), and so the ones a user could type or paste to forge a turn, an image or an end of answer.
_CONTROL_NAMES = (r"(?:bos|eos|pad|unk|mask|start_of_turn|end_of_turn|start_of_image|end_of_image|image_soft_token"
                  r"|unused\d+)")
_CONTROL_OPENER = re.compile(rf"<(?={_CONTROL_NAMES}>)|\[(?=multimodal\])")
# A text part ending in "<start_of_tu" followed by a text part starting "rn>": the template joins them.
_TRAILING_OPENER = re.compile(r"[<\[](?=[a-z0-9_]*\s*\Z)")
# Put after the opening "<" of a control token's name typed as text: the tokenizer no longer sees the token, the
# model reads the same characters (plus one invisible one), and text without such names is untouched.
TEXT_GUARD = "\u200b"  # ZERO WIDTH SPACE


def escape_control_tokens(text: str, *, joined_to_next: bool = False) -> str:
    """User text as plain text for Gemma's tokenizer: every typed control token (`<start_of_turn>`,
    `<start_of_image>`, `<bos>`, ...) broken by `TEXT_GUARD`; `joined_to_next` also breaks an opener at the end
    that the next text part could complete."""
    escaped = _CONTROL_OPENER.sub(lambda found: found.group(0) + TEXT_GUARD, text)
    if joined_to_next:
        escaped = _TRAILING_OPENER.sub(lambda found: found.group(0) + TEXT_GUARD, escaped)
    return escaped


def check_user_text(text: str, what: str = "the question") -> None:
    """Refuse text that is not valid Unicode (bytes that were not UTF-8 reach Python as lone surrogates, e.g. from
    a command line in another encoding): the tokenizer cannot encode it."""
    bad = next((index for index, char in enumerate(text) if "\ud800" <= char <= "\udfff"), None)
    if bad is not None:
        raise UserFacingError(f"{what} is not valid text: character {bad + 1} comes from bytes that are not UTF-8",
                              fix="Type it again, or set the terminal to UTF-8.")


def _model_texts(parts: Sequence[Part]) -> list[Part]:
    """The parts as the model gets them: text checked and escaped, images unchanged."""
    texts: list[Part] = []
    for index, part in enumerate(parts):
        if isinstance(part, str):
            check_user_text(part, "the text")
            joined = index + 1 < len(parts) and isinstance(parts[index + 1], str)
            part = escape_control_tokens(part, joined_to_next=joined)
        texts.append(part)
    return texts


def to_processor_messages(turns: Sequence[ChatTurn]) -> list[dict]:
    """Turns in the structure `processor.apply_chat_template` expects, every text escaped: what anyone typed
    never becomes a control token."""
    messages = []
    for turn in turns:
        content = [{"type": "image", "image": part} if isinstance(part, Image.Image) else {"type": "text", "text": part}
                   for part in _model_texts(turn.parts)]
        messages.append({"role": turn.role, "content": content})
    return messages


# --- Token count ----------------------------------------------------------------------------------------------------

TextTokenCounter = Callable[[str], int]


@dataclass(frozen=True)
class PromptCount:
    """How many tokens a prompt takes, counted before any image is preprocessed.

    `image_tokens` counts only the soft tokens (256 per image for MedGemma: 85 slices cost 21,760);
    `text_tokens` counts everything else, chat-template markers and each image's wrapper included. Whether a
    prompt fits is the session's one rule (`session.question.check_fits`), not decided here.
    """

    image_tokens: int
    text_tokens: int

    @property
    def total(self) -> int:
        return self.image_tokens + self.text_tokens


def text_token_counter(tokenizer: Any) -> TextTokenCounter:
    """Count plain text with a Hugging Face tokenizer, without the <bos> it would add: the template has one."""
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _rendered_pieces(turns: Sequence[ChatTurn], tokens_per_image: int) -> list[str | int]:
    """The prompt as Gemma 3's chat template and processor render it: plain text, or a count of fixed tokens
    (special markers and image soft tokens). Mirrors the template: text parts trimmed and joined with nothing
    between them, the system text plus a blank line put before the first user turn, "assistant" written
    "model"; and the processor: each image becomes "\\n\\n<start_of_image>", its soft tokens,
    "<end_of_image>\\n\\n"."""
    pieces: list[str | int] = [1]  # <bos>
    prefix = ""
    if turns and turns[0].role == "system":
        first = _model_texts(turns[0].parts)[0]
        prefix = f"{first}\n\n" if isinstance(first, str) else ""
        turns = turns[1:]
    for index, turn in enumerate(turns):
        role = "model" if turn.role == "assistant" else turn.role
        pieces += [1, f"{role}\n{prefix if index == 0 else ''}"]  # <start_of_turn>
        for part in _model_texts(turn.parts):
            if isinstance(part, Image.Image):
                pieces += ["\n\n", 1 + tokens_per_image + 1, "\n\n"]
            else:
                pieces.append(part.strip())
        pieces += [1, "\n"]  # <end_of_turn>
    pieces += [1, "model\n"]  # the generation prompt
    return pieces


def estimate_prompt_tokens(turns: Sequence[ChatTurn], tokens_per_image: int,
                           count_text_tokens: TextTokenCounter) -> PromptCount:
    """Count a prompt without the processor, so that an 85-slice series is checked before anything is resized.

    Exact (equal to the processor's `input_ids` length) when `count_text_tokens` is `text_token_counter` of the
    model's tokenizer, because the tokenizer splits text at special tokens before anything else, and each run of
    plain text here is counted whole.
    """
    images = sum(len(turn.images) for turn in turns)
    text = fixed = 0
    run: list[str] = []
    for piece in [*_rendered_pieces(turns, tokens_per_image), 0]:
        if isinstance(piece, str):
            run.append(piece)
            continue
        joined = "".join(run)
        text += count_text_tokens(joined) if joined else 0
        run.clear()
        fixed += piece
    image_tokens = images * tokens_per_image
    return PromptCount(image_tokens=image_tokens, text_tokens=text + fixed - image_tokens)
