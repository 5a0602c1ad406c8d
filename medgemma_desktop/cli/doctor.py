"""`medgemma-desktop doctor`: this machine in plain words, then the whole pipeline on the tiny model."""

from __future__ import annotations

import argparse


def add_parser(commands: argparse._SubParsersAction) -> None:
    doctor = commands.add_parser("doctor",
                                 help="report on this machine and run the whole pipeline on a tiny test model")
    doctor.set_defaults(run=run)


def run(_args: argparse.Namespace) -> int:
    from medgemma_desktop.core.doctor import check_pipeline, system_report

    for key, value in system_report():
        print(f"{key:>16}: {value}")
    print()
    ok = True
    for step in check_pipeline():
        print(f"  {'ok  ' if step.ok else 'FAIL'} {step.name}: {step.detail}")
        ok = ok and step.ok
    print("\nAll steps passed." if ok else "\nA step failed: see the line marked FAIL.")
    return 0 if ok else 1
