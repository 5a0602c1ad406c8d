"""`medgemma-desktop history`: the conversations the window and `ask` keep, read from the command line: list them,
show one, export one as Markdown, JSON or PDF (patient data left out unless asked), or its answers about DICOM
images as DICOM structured reports (`--format dicom`, optionally `--deidentify`).

PDF goes through the window's own renderer (the core's HTML export printed by Qt's QTextDocument into a
QPdfWriter) on an offscreen Qt platform, so it works on a machine without a display and looks the same as the
window's export.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from medgemma_desktop.cli.dicom_options import add_dicom_report_arguments
from medgemma_desktop.core.errors import UserFacingError

FORMATS = {"md": ".md", "json": ".json", "pdf": ".pdf", "dicom": "_dicom"}  # dicom: a folder of reports


def add_parser(commands: argparse._SubParsersAction) -> None:
    history = commands.add_parser("history", help="list, show or export kept conversations")
    history.add_argument("--history-file", type=Path, help="the history database (default: the window's)")
    actions = history.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="the conversations, most recent first")
    show = actions.add_parser("show", help="one conversation as text (patient data left out)")
    show.add_argument("id", type=int)
    export = actions.add_parser("export", help="write one conversation as Markdown, JSON or PDF, or its answers "
                                               "about DICOM images as DICOM structured reports (a folder)")
    export.add_argument("id", type=int)
    export.add_argument("--format", choices=sorted(FORMATS), default="md")
    export.add_argument("--out", type=Path, help="the file to write (default: the title, in this folder)")
    export.add_argument("--include-patient-data", action="store_true",
                        help="include identifying DICOM tags and file paths")
    add_dicom_report_arguments(export, folder_option=False)
    actions.add_parser("forget-patient-data",
                       help="remove identifying DICOM tags and original file paths that earlier versions kept with "
                            "the images (the images stay)")
    history.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from medgemma_desktop.core.store import ConversationStore

    with ConversationStore(args.history_file) as store:
        if args.action == "list":
            return _list(store)
        if args.action == "forget-patient-data":
            print(f"removed patient details from {store.forget_patient_data()} stored image(s) in {store.path}")
            return 0
        try:
            conversation = store.conversation(args.id)
        except KeyError:
            raise UserFacingError(f"there is no conversation {args.id} in {store.path}",
                                  fix="Run `medgemma-desktop history list` to see the ids.") from None
        if args.action == "show":
            from medgemma_desktop.core.export import conversation_record, markdown_text

            print(markdown_text(conversation_record(store, args.id)))
            return 0
        from medgemma_desktop.core.export import export_file_name

        out = args.out or Path(f"{export_file_name(conversation.title)}{FORMATS[args.format]}")
        if args.deidentify and args.format != "dicom":
            raise UserFacingError("--deidentify goes with --format dicom", fix="Add --format dicom.")
        if args.format == "dicom":
            from medgemma_desktop.core.dicom_export import write_conversation_reports, written_summary

            reports, left_out = write_conversation_reports(store, args.id, out, deidentify=args.deidentify)
            print(written_summary(out, reports, left_out))
            return 0
        written = _export(store, args.id, out, args.format, args.include_patient_data)
        print(f"wrote {written}")
        return 0


def _list(store) -> int:
    conversations = store.list_conversations()
    if not conversations:
        print(f"No conversations yet in {store.path}.", file=sys.stderr)
        return 0
    for conversation in conversations:
        when = datetime.fromtimestamp(conversation.updated_at).strftime("%Y-%m-%d %H:%M")
        count = len(store.messages(conversation.id))
        print(f"{conversation.id:>6}  {when}  {count:>3} question{'s' if count != 1 else ' '}  "
              f"{conversation.title or '(untitled)'}")
    return 0


def _export(store, conversation_id: int, out: Path, kind: str, include_patient_data: bool) -> Path:
    from medgemma_desktop.core.export import export_json, export_markdown

    if kind == "md":
        return export_markdown(store, conversation_id, out, include_patient_data=include_patient_data)
    if kind == "json":
        return export_json(store, conversation_id, out, include_patient_data=include_patient_data)
    from PySide6.QtWidgets import QApplication

    if QApplication.instance() is None:
        # A QApplication, not a QGuiApplication: called in-process (tests, a script) before any window, a
        # QGuiApplication would stay the application and every later widget would abort the process.
        _app = QApplication(["medgemma-desktop", "-platform", "offscreen"])  # kept alive while printing
    from medgemma_desktop.ui.export_dialog import write_pdf

    return write_pdf(store, conversation_id, out, include_patient_data)
