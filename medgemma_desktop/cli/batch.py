"""`medgemma-desktop batch`: one question over many images, DICOM files and series, a row per item in a JSON-lines
or CSV file; run it again with the same --out to go on where it stopped."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from medgemma_desktop.cli.backend_options import (
    add_generation_arguments,
    add_model_arguments,
    generation_settings,
    load_backend,
)
from medgemma_desktop.cli.dicom_options import add_dicom_report_arguments
from medgemma_desktop.core.errors import UserFacingError
from medgemma_desktop.core.prompts import TaskMode

EXIT_INTERRUPTED = 130  # the shell's code for Ctrl+C
AUTO = "auto"  # session.batch.AUTO, here without importing the model stack for --help
TASKS = (AUTO, *(mode.value for mode in TaskMode if mode.accepts(1)))  # the modes one item can answer


def add_parser(commands: argparse._SubParsersAction) -> None:
    batch = commands.add_parser("batch", help="ask one question of many images, DICOM files and series; a row each")
    batch.add_argument("inputs", nargs="+", type=Path, metavar="INPUT",
                       help="image or DICOM files, series folders, DICOMDIRs, or folders of them")
    add_model_arguments(batch, remote=True)
    batch.add_argument("--task", choices=TASKS, default=AUTO,
                       help="what to ask (default auto: a CT or MRI series in its series mode, an image described)")
    batch.add_argument("--question", default="", help="the question (default: each task's own)")
    add_generation_arguments(batch)
    batch.add_argument("--out", type=Path, required=True, metavar="RESULTS",
                       help="results.jsonl or results.csv; an existing one is continued, finished items skipped")
    batch.add_argument("--include-patient-data", action="store_true",
                       help="add the identifying DICOM tags (name, ID, dates) to each row; left out by default")
    add_dicom_report_arguments(batch)
    batch.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from medgemma_desktop.session.batch import BatchTask, batch_units, run_batch, unit_finished
    from medgemma_desktop.session.batch_results import ResultsFile

    settings = generation_settings(args)
    units = batch_units(args.inputs)
    if not units:
        raise UserFacingError("the inputs hold nothing to answer", fix="Give image or DICOM files or folders.")
    if args.deidentify and args.sr is None:
        raise UserFacingError("--deidentify goes with --sr DIR", fix="Add --sr and the folder for the reports.")
    results = ResultsFile.open(args.out, include_patient=args.include_patient_data, dicom_reports=args.sr is not None)
    remaining = [unit for unit in units if not unit_finished(unit, results.done)]
    if len(remaining) < len(units):
        print(f"{len(units) - len(remaining)} of {len(units)} inputs were finished by an earlier run "
              f"({results.rows_before} rows in {args.out}); going on with the rest", file=sys.stderr)
    backend = load_backend(args) if remaining else None
    task = BatchTask(args.task, args.question, settings, args.include_patient_data, dicom_reports=args.sr,
                     deidentify=args.deidentify)
    stop = threading.Event()

    def interrupt(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        tqdm.write("stopping after this item (Ctrl+C again stops at once)", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        with results, tqdm(total=len(remaining), unit="item", file=sys.stderr, dynamic_ncols=True) as bar:

            def opened(unit: Path, rows: int) -> None:  # a folder or DICOMDIR may hold several items
                bar.total += rows - 1
                bar.refresh()

            summary = run_batch(remaining, backend, task, results, stop, on_opened=opened,
                                on_row=lambda row: bar.update(1)) if backend is not None else None
    except KeyboardInterrupt:
        print(f"stopped at once; {args.out} holds every finished item: run the same command to go on",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGINT, previous)
    if summary is None:
        print(f"nothing to do: every input is in {args.out}", file=sys.stderr)
        return 0
    print(f"{summary.answered} answered, {summary.failed} with an error (see their rows), {summary.skipped} already "
          f"done; results in {args.out}", file=sys.stderr)
    if summary.stopped:
        print("stopped before the end: run the same command to go on", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0
