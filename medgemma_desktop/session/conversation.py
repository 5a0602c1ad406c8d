"""A conversation's life, the same for every front end: its exchanges, the one place they become model turns,
asking, regenerating and editing, recording into the store, and reopening a stored conversation exactly.

A question in a task mode is built by `core.prompts.build_task_prompt` (Google's formats); a follow-up (no images
of its own, after an answer in the same mode) is a plain question after the history. A reopened conversation
gets back each exchange's mode, images as the model saw them, localization padding and target picture, prior and
boxes, so continuing or regenerating it sends the very turns the original conversation would have sent.

Threads: a `Session` belongs to one thread (the window's UI thread; the CLI's only thread). Generation runs as an
`AnswerJob` on whatever thread generates; `finish` applies its result back here.
"""

from __future__ import annotations

import io
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from PIL import Image

from medgemma_desktop.core.boxes import Box, boxes_from_record
from medgemma_desktop.core.engine import GenerationSettings, GenerationStats
from medgemma_desktop.core.fingerprint import WeightsIdentity
from medgemma_desktop.core.imaging import ImageInput, PaddingInfo
from medgemma_desktop.core.prompts import MAX_SERIES_SLICES, ChatTurn, TaskMode, build_chat, build_task_prompt
from medgemma_desktop.core.store import AnswerStatus, AnswerVariant, ConversationStore, Message, MessageImage
from medgemma_desktop.core.thinking import split_thinking
from medgemma_desktop.session.backend import Backend, PromptCounting
from medgemma_desktop.session.inputs import InputItem
from medgemma_desktop.session.question import (
    BudgetCheck,
    PreparedQuestion,
    padding_from,
    prepare_question,
    slices_that_fit,
    unpadded,
)
from medgemma_desktop.session.recording import (
    Answer,
    AnswerJob,
    ChunkCallback,
    RecordedCallback,
    Recording,
    answer_boxes,
)

STATUS_NOTES = {
    AnswerStatus.FAILED: "This answer failed before it finished.",
    AnswerStatus.INTERRUPTED: "The app closed before this answer finished.",
    AnswerStatus.STREAMING: "This answer is still being written.",
}
REGENERATE_TEMPERATURE = 0.7  # when the settings decode greedily (which would repeat the same answer)
_STATS_FIELDS = {item.name for item in fields(GenerationStats)}
# Stands in for each image while counting: the count depends on how many images there are, not on their pixels.
_COUNTED = ImageInput(image=Image.new("RGB", (1, 1)), source=Path("counted"), sha256="", label="counted")


@dataclass
class Exchange:
    question: str  # as typed; "" asks the mode's default question
    images: tuple[ImageInput, ...]  # as the model sees them (a series' encoded slices, a padded picture)
    mode: TaskMode = TaskMode.FREE_CHAT
    padding: PaddingInfo | None = None  # localization: how the picture was padded to square
    target: ImageInput | None = None  # localization: the original picture the answer's boxes belong on
    prior: ImageInput | None = None  # comparison: the older study (sent first)
    answer: str = ""
    thinking: str = ""
    show_thinking: bool = False  # the trace is folded until the user unfolds it
    stats: GenerationStats | None = None
    error: str = ""
    boxes: tuple[Box, ...] = ()  # localization: the boxes of the answer shown
    model: WeightsIdentity | None = None  # the weights that wrote the answer shown
    adapter: WeightsIdentity | None = None
    settings: GenerationSettings | None = None  # how the answer shown was decoded (None: not known)
    # Where it is kept in the conversation store (None until recorded):
    message_id: int | None = None
    answer_id: int | None = None  # the answer variant shown
    answer_ids: list[int] = field(default_factory=list)  # every variant, oldest first

    @property
    def complete(self) -> bool:
        """Answered, so it can be history for the next question (stopped answers count: the user saw them)."""
        return bool(self.answer.strip()) and not self.error

    @property
    def shown_question(self) -> str:
        return self.question or self.mode.default_question

    def clear_answer(self) -> None:
        self.answer, self.thinking, self.stats, self.error, self.boxes = "", "", None, "", ()

    def show(self, variant: AnswerVariant | None) -> None:
        """Make a stored answer variant the one shown (text, thinking, stats, boxes, a note if it did not end)."""
        self.answer_id = variant.id if variant else None
        self.clear_answer()
        if variant is None:
            return
        self.answer, self.thinking = split_thinking(variant.text)
        known = {key: value for key, value in variant.stats.items() if key in _STATS_FIELDS}
        self.stats = GenerationStats(**known) if variant.finished_at is not None and known else None
        self.error = STATUS_NOTES.get(variant.status, "")
        self.boxes = tuple(boxes_from_record(variant.boxes))
        self.model, self.adapter = variant.model, variant.adapter


def _stored_image(store: ConversationStore, image: MessageImage) -> ImageInput:
    with Image.open(io.BytesIO(store.image_png(image.sha256))) as png:
        pixels = png.convert("RGB")
    return ImageInput(image=pixels, source=Path(image.source), sha256=image.sha256, label=image.label,
                      metadata=dict(image.metadata), patient=dict(image.patient))


def _stored_exchange(store: ConversationStore, message: Message) -> Exchange:
    """A stored question as it was asked: mode, images as sent, localization padding and target, prior."""
    images = tuple(_stored_image(store, image) for image in message.images)
    mode = next((mode for mode in TaskMode if mode.value == message.task_mode), TaskMode.FREE_CHAT)
    padding = padding_from(images[0].metadata) if mode is TaskMode.LOCALIZATION and len(images) == 1 else None
    exchange = Exchange(message.question, images, mode, padding=padding,
                        target=unpadded(images[0], padding) if padding is not None else None,
                        prior=images[0] if mode is TaskMode.LONGITUDINAL_CXR and images else None,
                        message_id=message.id, answer_ids=[variant.id for variant in message.variants])
    exchange.show(message.answer)
    return exchange


def regenerate_settings(settings: GenerationSettings) -> GenerationSettings:
    """Regenerate must give another answer: sample (at the settings' temperature, or 0.7 when they decode
    greedily) with a fresh seed, recorded with the answer so it can be reproduced."""
    sampling = settings.sampling
    temperature = sampling.temperature if not sampling.greedy and sampling.temperature > 0 else REGENERATE_TEMPERATURE
    return replace(settings, sampling=replace(sampling, greedy=False, temperature=temperature,
                                              seed=secrets.randbelow(2**31)))


class Session:
    """One conversation. `backend` counts (and, for `ask`/`regenerate`/`edit`, generates); `store` keeps it
    (None: nothing is recorded)."""

    def __init__(self, backend: PromptCounting | None = None, store: ConversationStore | None = None, *,
                 settings: GenerationSettings | None = None, system: str | None = None) -> None:
        """`system`: a text put before the first turn (Gemma has no system role; MedGemma was prompted without)."""
        self.backend = backend
        self.system = system
        self.store = store
        self.settings = settings or GenerationSettings()
        self.exchanges: list[Exchange] = []
        self.id: int | None = None  # the stored conversation, once it has one

    @classmethod
    def reopen(cls, store: ConversationStore, conversation_id: int, backend: PromptCounting | None = None, *,
               settings: GenerationSettings | None = None) -> Session:
        """A stored conversation, ready to continue: images come back as the pixels the model saw."""
        session = cls(backend, store, settings=settings)
        store.conversation(conversation_id)  # KeyError when there is none
        session.id = conversation_id
        session.exchanges = [_stored_exchange(store, message) for message in store.messages(conversation_id)]
        return session

    @property
    def last(self) -> Exchange | None:
        return self.exchanges[-1] if self.exchanges else None

    def clear(self) -> None:
        self.exchanges.clear()
        self.id = None

    # Turns ---------------------------------------------------------------------------------------------------

    def turns_for(self, index: int) -> list[ChatTurn]:
        """The turns that answer exchange `index`: the complete exchanges before it as history, then it."""
        history: list[ChatTurn] = []
        previous: Exchange | None = None
        for earlier in self.exchanges[:index]:
            if earlier.complete:
                history.append(self._question_turns(earlier, previous, [])[-1])
                history.append(ChatTurn("assistant", (earlier.answer.strip(),)))
                previous = earlier
        return self._question_turns(self.exchanges[index], previous, history, self.system)

    @staticmethod
    def _question_turns(exchange: Exchange, previous: Exchange | None, history: list[ChatTurn],
                        system: str | None = None) -> list[ChatTurn]:
        images = [item.image for item in exchange.images]
        if not images and previous is not None and previous.mode is exchange.mode:
            return build_chat(exchange.shown_question, history=history, system=system)
        return build_task_prompt(exchange.mode, images, exchange.question, history=history, system=system)

    def preview(self, mode: TaskMode, image_count: int, text: str) -> list[ChatTurn]:
        """The turns a new question would send (placeholder pixels), without keeping it; raises the mode's
        `UserFacingError` when it cannot take that many images."""
        self.exchanges.append(Exchange(text, (_COUNTED,) * image_count, mode))
        try:
            return self.turns_for(len(self.exchanges) - 1)
        finally:
            self.exchanges.pop()

    # The budget ----------------------------------------------------------------------------------------------

    def budget(self, mode: TaskMode, image_count: int, text: str, series: str | None = None) -> BudgetCheck | None:
        """What a new question costs against the context (None until there is a backend to count with)."""
        turns = self.preview(mode, image_count, text)
        return None if self.backend is None else self._check(turns, series, text or mode.default_question)

    def _check(self, turns: list[ChatTurn], series: str | None, question: str) -> BudgetCheck:
        assert self.backend is not None
        counter, max_new = self.backend, self.settings.max_new_tokens
        prompt = counter.count_tokens(turns)
        check = BudgetCheck(prompt, max_new, counter.context_limit, len(turns[-1].images),
                            "CT" if series == "CT" else "MRI" if series == "MRI" else None,
                            estimated=not counter.counts_exactly)
        if check.series is not None and not check.fits:
            fit = slices_that_fit(counter, question, check.series, max_new_tokens=max_new, history=turns[:-1])
            check = replace(check, slices_that_fit=fit)
        return check

    # Asking --------------------------------------------------------------------------------------------------

    def begin(self, prepared: PreparedQuestion) -> AnswerJob:
        """Keep a new question and give the job that answers it; a question the mode refuses, or one that does
        not fit (`check_fits`), raises its `UserFacingError` and is not kept."""
        exchange = Exchange(prepared.text, prepared.images, prepared.mode, padding=prepared.padding,
                            target=prepared.target, prior=prepared.prior)
        self.exchanges.append(exchange)
        try:
            turns = self.turns_for(len(self.exchanges) - 1)
            if self.backend is not None:
                self._check(turns, prepared.series, prepared.text or prepared.mode.default_question).refuse()
        except Exception:
            self.exchanges.pop()
            raise
        return self._job(len(self.exchanges) - 1, turns, self.settings)

    def begin_retry(self, index: int, *, resample: bool = True) -> AnswerJob:
        """Answer exchange `index` again (regenerate, or resend after an edit); the shown answer stays stored as
        a variant. `resample`: sample with a new recorded seed (`regenerate_settings`), so the answer differs."""
        exchange = self.exchanges[index]
        exchange.clear_answer()
        settings = regenerate_settings(self.settings) if resample else self.settings
        return self._job(index, self.turns_for(index), settings)

    def begin_edit(self, index: int, text: str) -> AnswerJob:
        """Reword a past question (stored as edited) and answer it again from the history before it."""
        exchange = self.exchanges[index]
        if self.store is not None and exchange.message_id is not None:
            self.store.edit_question(exchange.message_id, text)
        exchange.question = text
        return self.begin_retry(index, resample=False)

    def _job(self, index: int, turns: list[ChatTurn], settings: GenerationSettings) -> AnswerJob:
        exchange = self.exchanges[index]
        record = None
        if self.store is not None:
            if self.id is None:
                self.id = self.store.create_conversation().id
            target = exchange.target
            record = Recording(self.store, self.id, exchange.message_id, exchange.shown_question, exchange.images,
                               exchange.mode, target.image.size if target is not None else None, exchange.padding)
        return AnswerJob(tuple(turns), settings, record, index)

    def recorded(self, job: AnswerJob, message_id: int, answer_id: int) -> None:
        """The job stored its question and opened its answer variant."""
        exchange = self.exchanges[job.index] if job.index < len(self.exchanges) else None
        if exchange is not None and answer_id not in exchange.answer_ids:
            exchange.message_id, exchange.answer_id = message_id, answer_id
            exchange.answer_ids.append(answer_id)

    def finish(self, job: AnswerJob, answer: Answer) -> Exchange | None:
        """Apply a finished answer to the exchange it answers (None if the conversation changed meanwhile)."""
        if not 0 <= job.index < len(self.exchanges):
            return None
        exchange = self.exchanges[job.index]
        if answer.message_id is not None and answer.answer_id is not None:
            self.recorded(job, answer.message_id, answer.answer_id)
        exchange.answer, exchange.thinking, exchange.stats = answer.text, answer.thinking, answer.stats
        exchange.boxes = tuple(answer_boxes(exchange.mode, answer.text))
        exchange.settings = answer.settings
        if answer.identity is not None:
            exchange.model, exchange.adapter = answer.identity.model, answer.identity.adapter
        return exchange

    def fail(self, job: AnswerJob, message: str) -> None:
        if 0 <= job.index < len(self.exchanges) and self.exchanges[job.index].stats is None:
            self.exchanges[job.index].error = message

    def show_variant(self, index: int, step: int) -> bool:
        """Show an older (-1) or newer (+1) stored answer to question `index`; it becomes the one sent as
        history. False when there is none that way."""
        if self.store is None or not 0 <= index < len(self.exchanges):
            return False
        exchange = self.exchanges[index]
        ids = exchange.answer_ids
        if exchange.message_id is None or exchange.answer_id not in ids:
            return False
        position = ids.index(exchange.answer_id) + step
        if not 0 <= position < len(ids):
            return False
        self.store.select_variant(exchange.message_id, ids[position])
        exchange.show(next(v for v in self.store.variants(exchange.message_id) if v.id == ids[position]))
        return True

    # One call each, for front ends that generate on their own thread (`ask`, batch, the API) -----------------

    def ask(self, mode: TaskMode, items: Sequence[InputItem], text: str = "", *, prior: InputItem | None = None,
            selected: InputItem | None = None, max_slices: int = MAX_SERIES_SLICES,
            on_chunk: ChunkCallback | None = None) -> Answer:
        """Prepare, check, record and answer one question with this session's backend."""
        prepared = prepare_question(mode, items, text, prior, selected=selected, max_slices=max_slices)
        return self.run(self.begin(prepared), on_chunk)

    def regenerate(self, index: int = -1, on_chunk: ChunkCallback | None = None) -> Answer:
        return self.run(self.begin_retry(index % len(self.exchanges)), on_chunk)

    def edit(self, index: int, text: str, on_chunk: ChunkCallback | None = None) -> Answer:
        return self.run(self.begin_edit(index % len(self.exchanges), text), on_chunk)

    def run(self, job: AnswerJob, on_chunk: ChunkCallback | None = None,
            on_recorded: RecordedCallback | None = None) -> Answer:
        """Run a job on this thread and apply its answer."""
        backend = self.backend
        if not isinstance(backend, Backend):
            raise TypeError("this session's backend only counts; run its jobs where the model is")
        try:
            answer = job.run(backend, on_chunk, on_recorded)
        except Exception as exc:
            self.fail(job, str(exc))
            raise
        self.finish(job, answer)
        return answer
