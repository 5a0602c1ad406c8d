"""Child process for the kill test in test_store.py: writes through the real store until it is killed.

Prints "committed" once the first answer is finished and the second question is saved, then the length of the
growing answer after each `update_answer` returns.
"""

from __future__ import annotations

import sys

from medgemma_desktop.core.store import AnswerStatus, ConversationStore, WeightsIdentity

MODEL = WeightsIdentity("medgemma-1.5-4b-it", "0" * 64)


def main(path: str) -> None:
    store = ConversationStore(path, save_interval=0)  # every update is written: the test knows what was saved
    conversation = store.create_conversation("crash test")
    first = store.add_question(conversation.id, "first question")
    answer_id = store.begin_answer(first.id, MODEL, None, {"temperature": 0.0})
    store.finish_answer(answer_id, "first answer", {"tokens": 2}, AnswerStatus.DONE)
    second = store.add_question(conversation.id, "second question")
    answer_id = store.begin_answer(second.id, MODEL, None, {"temperature": 0.0})
    print("committed", flush=True)
    text = ""
    for index in range(100_000):  # bounded, in case the parent dies before killing us
        text += f"token{index} "
        store.update_answer(answer_id, text)
        print(len(text), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
