"""`medgemma-desktop ask`: one question through the same session as the window, the answer streamed to the
terminal (from the local model, or from a server with --server) and kept in the same history (unless
`--no-history`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medgemma_desktop.cli.backend_options import (
    add_generation_arguments,
    add_model_arguments,
    generation_settings,
    load_backend,
)
from medgemma_desktop.cli.dicom_options import add_dicom_report_arguments, write_answer_report
from medgemma_desktop.core.errors import UserFacingError

# Command-line names of the task modes, as a user would say them.
TASKS = {"describe": "DESCRIBE", "chat": "FREE_CHAT", "ct-series": "CT_SERIES", "mri-series": "MRI_SERIES",
         "compare": "LONGITUDINAL_CXR", "locate": "LOCALIZATION", "lab-report": "DOCUMENT_EXTRACTION"}


def add_parser(commands: argparse._SubParsersAction) -> None:
    ask = commands.add_parser("ask", help="ask one question and stream the answer to the terminal")
    ask.add_argument("question", nargs="?", default="",
                     help="the question (omit it in a task mode to ask the mode's own question)")
    add_model_arguments(ask, remote=True)
    ask.add_argument("--image", action="append", default=[], type=Path,
                     help="a picture, a DICOM file (with or without suffix), a folder or a DICOMDIR; repeat for "
                          "several: DICOM slices of one series are read as that series")
    ask.add_argument("--task", choices=sorted(TASKS),
                     help="how to ask, as Google's notebooks do (default: ct-series or mri-series for a series, "
                          "else chat)")
    ask.add_argument("--prior", type=Path, help="the older chest X-ray, sent first (with --task compare)")
    ask.add_argument("--slices", type=int, default=85, help="the most slices of a series sent (default 85)")
    ask.add_argument("--system", help="a system text, prepended to the question (Gemma has no system role)")
    add_generation_arguments(ask)
    ask.add_argument("--show-thinking", action="store_true", help="also print the model's thinking trace")
    ask.add_argument("--no-history", action="store_true", help="do not keep the question and answer in the history")
    ask.add_argument("--history-file", type=Path, help="the history database (default: the window's)")
    add_dicom_report_arguments(ask)
    ask.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from medgemma_desktop.core.prompts import TaskMode, check_user_text
    from medgemma_desktop.core.store import ConversationStore
    from medgemma_desktop.session.conversation import Session
    from medgemma_desktop.session.inputs import open_inputs
    from medgemma_desktop.session.question import MODE_FOR_MODALITY, SERIES_MODES

    # Bad options, text and files fail before the slow model load.
    settings = generation_settings(args)
    check_user_text(args.question)
    check_user_text(args.system or "", "the system text")
    if not 1 <= args.slices <= 85:
        raise UserFacingError("--slices must be between 1 and 85")
    if args.deidentify and args.sr is None:
        raise UserFacingError("--deidentify goes with --sr DIR", fix="Add --sr and the folder for the report.")
    items = open_inputs(args.image)  # bad files fail before the slow model load
    prior = open_inputs([args.prior])[0] if args.prior else None
    first_series = next((item.series for item in items if item.series is not None), None)
    if args.task is not None:
        task = TaskMode[TASKS[args.task]]
    else:
        task = MODE_FOR_MODALITY.get(first_series.modality, TaskMode.FREE_CHAT) if first_series else TaskMode.FREE_CHAT
    if prior is not None and task is not TaskMode.LONGITUDINAL_CXR:
        raise UserFacingError("--prior is the older study of a comparison", fix="Add --task compare.")
    # A DICOMDIR may hold several series: a series mode reads the largest of its modality.
    modality = {"CT": "CT", "MRI": "MR"}.get(SERIES_MODES.get(task, ""), "")
    selected = next((item for item in items if item.series is not None and item.series.modality == modality), None)
    if selected is not None:
        print(f"-- {task.title}: {selected.label}", file=sys.stderr)

    # One answer, then exit: a compiled step would only be ready for a next answer (fast_decode.choose_decoder).
    backend = load_backend(args, one_answer=True)
    store = None if args.no_history else ConversationStore(args.history_file)
    try:
        session = Session(backend, store, settings=settings, system=args.system)
        answer = session.ask(task, [prior, *items] if prior else items, args.question, prior=prior,
                             selected=selected, max_slices=args.slices, on_chunk=_write)
    except KeyboardInterrupt:
        print("\n-- stopped", file=sys.stderr)
        return 130
    finally:
        if store is not None:
            store.close()
    if args.show_thinking and answer.thinking:
        print(f"\n-- thinking:\n{answer.thinking}", file=sys.stderr)
    stats = answer.stats
    print()
    peak = f", peak GPU memory {stats.peak_memory_bytes / 2**30:.2f} GiB" if stats.peak_memory_bytes else ""
    prepared = f" ({stats.prompt_s:.2f} s preparing the prompt)" if stats.prompt_s else ""
    print(f"-- {stats.prompt_tokens} prompt + {stats.new_tokens} new tokens; time to first token "
          f"{stats.time_to_first_token_s:.2f} s{prepared}; {stats.decode_tokens_per_s:.1f} tokens/s "
          f"({stats.decoder}){peak}; "
          f"answered by {backend.identity.device}", file=sys.stderr)
    for box in session.exchanges[-1].boxes:
        print(f"-- box {box.label!r}: box_2d [{box.y0:g}, {box.x0:g}, {box.y1:g}, {box.x1:g}]", file=sys.stderr)
    if session.id is not None:
        print(f"-- kept as conversation {session.id} (medgemma-desktop history show {session.id})", file=sys.stderr)
    if args.sr is not None:
        exchange = session.exchanges[-1]
        line = write_answer_report(args.sr, exchange.question or task.default_question, answer.text, task.value,
                                   backend.identity, exchange.images, deidentify=args.deidentify)
        print(f"-- {line}", file=sys.stderr)
    return 0


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
