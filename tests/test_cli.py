"""The command line as a user runs it: one line and exit code 2 for bad input, never a traceback."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from pypdf import PdfReader

from medgemma_desktop import __version__
from medgemma_desktop.cli import main


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medgemma_desktop", *args], capture_output=True, text=True,
                          timeout=300)


def test_version() -> None:
    result = _run("--version")
    assert result.returncode == 0 and __version__ in result.stdout


def test_ask_streams_an_answer_with_stats(tiny_checkpoint, tmp_path: Path) -> None:
    first, second = tmp_path / "a.png", tmp_path / "b.jpg"
    Image.new("RGB", (90, 70), "gray").save(first)
    Image.new("RGB", (70, 90), "white").save(second)
    result = _run("ask", "--model", str(tiny_checkpoint.model_dir), "--adapter", str(tiny_checkpoint.adapter_dir),
                  "--image", str(first), "--image", str(second), "--system", "Be brief.",
                  "--max-new-tokens", "16", "Describe these images")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    prompt_tokens = int(re.search(r"(\d+) prompt", result.stderr).group(1))
    assert prompt_tokens > 2 * 16  # both images (16 tokens each in the tiny model) reached the prompt
    assert "16 new tokens" in result.stderr and "tokens/s" in result.stderr and "time to first token" in result.stderr \
        and "preparing the prompt" in result.stderr
    assert "Traceback" not in result.stderr


def _assert_user_error(capsys, argv: list[str], *expected: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    message = err[-1]
    assert message.startswith("medgemma-desktop: ")
    for part in expected:
        assert part in message


def test_missing_model_folder(capsys, tmp_path: Path) -> None:
    _assert_user_error(capsys, ["ask", "--model", str(tmp_path / "none"), "hi"], str(tmp_path / "none"),
                       "folder not found")


def test_llama_folder(capsys, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    _assert_user_error(capsys, ["ask", "--model", str(tmp_path), "hi"], "not MedGemma")


@pytest.mark.parametrize("content", [b"", b"this is not an image", b"\x89PNG\r\n\x1a\n\x00\x00broken"])
def test_bad_image_files(capsys, tiny_checkpoint, tmp_path: Path, content: bytes) -> None:
    image = tmp_path / "scan.png"
    image.write_bytes(content)
    _assert_user_error(capsys, ["ask", "--model", str(tiny_checkpoint.model_dir), "--image", str(image), "hi"],
                       str(image))


def test_missing_image(capsys, tiny_checkpoint, tmp_path: Path) -> None:
    _assert_user_error(capsys, ["ask", "--model", str(tiny_checkpoint.model_dir), "--image",
                                str(tmp_path / "gone.png"), "hi"], "gone.png")


def test_adapter_without_weights(capsys, tiny_checkpoint, tmp_path: Path) -> None:
    adapter = Path(shutil.copytree(tiny_checkpoint.adapter_dir, tmp_path / "adapter"))
    (adapter / "adapter_model.safetensors").unlink()
    _assert_user_error(capsys, ["ask", "--model", str(tiny_checkpoint.model_dir), "--adapter", str(adapter), "hi"],
                       "adapter_model.safetensors is missing")


def test_prompt_over_the_context_limit(capsys, tiny_checkpoint) -> None:
    _assert_user_error(capsys, ["ask", "--model", str(tiny_checkpoint.model_dir), "--context-limit", "8",
                                "a question far longer than eight tokens"], "context limit of 8")


def test_doctor_runs_the_whole_pipeline() -> None:
    result = _run("doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "bitsandbytes" in result.stdout and "Compute" in result.stdout
    assert result.stdout.count("ok  ") == 4 and "All steps passed." in result.stdout


def test_ask_reads_a_dicom_file(tiny_checkpoint) -> None:
    from pydicom.data import get_testdata_file

    args = ("ask", "--model", str(tiny_checkpoint.model_dir), "--image", get_testdata_file("CT_small.dcm"),
            "--max-new-tokens", "4", "What organ is this?")
    result = _run(*args)
    assert result.returncode == 0, result.stderr
    assert int(re.search(r"(\d+) prompt", result.stderr).group(1)) > 16  # the CT slice became 16 image tokens
    assert "4 new tokens" in result.stderr and "Traceback" not in result.stderr
    assert _run(*args).stdout == result.stdout  # greedy by default: the same question, the same answer


def test_models_check_reports_and_plans(tiny_checkpoint) -> None:
    result = _run("models", "check", str(tiny_checkpoint.model_dir), "--adapter", str(tiny_checkpoint.adapter_dir))
    assert result.returncode == 0, result.stderr
    assert "Gemma3ForConditionalGeneration" in result.stdout and "rank 8, alpha 16" in result.stdout
    assert "KV cache for 8,192 tokens" in result.stdout


def test_models_check_of_a_wrong_folder_is_one_line(tmp_path: Path) -> None:
    result = _run("models", "check", str(tmp_path))
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0 and "no config.json" in result.stderr


def test_ask_saves_then_reuses_the_4bit_model(tiny_checkpoint) -> None:
    args = ("ask", "--model", str(tiny_checkpoint.model_dir), "--max-new-tokens", "2", "hi")
    first, second = _run(*args), _run(*args)
    assert "quantizing" in first.stderr or "saved 4-bit" in first.stderr
    assert "reading the saved 4-bit model" in second.stderr
    listing = _run("models", "cache")
    assert "medgemma-tiny" in listing.stdout


def _ask_series(capsys, tiny_checkpoint, history: Path, image: Path, *task: str) -> int:
    """`ask` about a series; returns the id of the conversation it kept."""
    assert main(["ask", "--model", str(tiny_checkpoint.model_dir), "--image", str(image), "--slices", "3",
                 "--max-new-tokens", "2", "--history-file", str(history), *task]) == 0
    err = capsys.readouterr().err
    assert "-- CT series:" in err and "Traceback" not in err
    return int(re.search(r"kept as conversation (\d+)", err).group(1))


def test_ask_reads_a_ct_folder_and_a_dicomdir_as_ct_series_then_history_lists_and_exports_them(
        capsys, tiny_checkpoint, tmp_path: Path, ct_slices) -> None:
    from pydicom.data import get_testdata_file

    from medgemma_desktop.core.prompts import CT_QUESTION
    from medgemma_desktop.core.store import ConversationStore

    history = tmp_path / "history.sqlite3"
    ct_slices(tmp_path / "ct", [2.5 * i for i in range(6)])
    folder_id = _ask_series(capsys, tiny_checkpoint, history, tmp_path / "ct")  # a CT series: its mode by default
    # The DICOMDIR's largest series is an MR angiogram; --task picks its largest CT series (5 slices).
    dicomdir_id = _ask_series(capsys, tiny_checkpoint, history, Path(get_testdata_file("DICOMDIR")),
                              "--task", "ct-series")
    with ConversationStore(history) as store:
        for conversation_id in (folder_id, dicomdir_id):
            (message,) = store.messages(conversation_id)
            assert message.task_mode == "ct_series" and message.question == CT_QUESTION
            assert len(message.images) == 3 and message.answer.status.value == "done"

    assert main(["history", "--history-file", str(history), "list"]) == 0
    listed = capsys.readouterr().out
    assert str(folder_id) in listed and str(dicomdir_id) in listed and "Based on the visual evidence" in listed
    assert main(["history", "--history-file", str(history), "show", str(folder_id)]) == 0
    assert "CT" in capsys.readouterr().out
    pdf = tmp_path / "out.pdf"
    assert main(["history", "--history-file", str(history), "export", str(dicomdir_id), "--format", "pdf",
                 "--out", str(pdf)]) == 0
    assert pdf.read_bytes().startswith(b"%PDF") and pdf.stat().st_size > 1000
    text = " ".join(" ".join(page.extract_text() for page in PdfReader(pdf).pages).split())  # pypdf: tabs between words
    assert "Research use only" in text or "research" in text.lower()
    assert main(["history", "--history-file", str(history), "export", "9999"]) == 2
    assert "no conversation 9999" in capsys.readouterr().err


def test_ask_no_history_keeps_nothing_and_prior_needs_compare(capsys, tiny_checkpoint, tmp_path: Path) -> None:
    history = tmp_path / "history.sqlite3"
    picture = tmp_path / "a.png"
    Image.new("RGB", (20, 20), "gray").save(picture)
    assert main(["ask", "--model", str(tiny_checkpoint.model_dir), "--image", str(picture), "--no-history",
                 "--history-file", str(history), "--max-new-tokens", "2", "hi"]) == 0
    assert "kept as conversation" not in capsys.readouterr().err and not history.exists()
    _assert_user_error(capsys, ["ask", "--model", str(tiny_checkpoint.model_dir), "--prior", str(picture),
                                "--image", str(picture), "hi"], "--task compare")
