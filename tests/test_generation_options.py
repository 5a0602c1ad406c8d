"""Generation options are checked where they are made: a NaN temperature, a 2^80 seed, top-p out of (0, 1], zero
new tokens or a question that is not valid UTF-8 give one line (exit 2 from the command line), not a traceback."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest

from medgemma_desktop.cli import main
from medgemma_desktop.core.decoding import MAX_SEED, SamplingSettings
from medgemma_desktop.core.engine import GenerationSettings
from medgemma_desktop.core.errors import UserFacingError


@pytest.mark.parametrize(("options", "says"), [
    (dict(temperature=math.nan), "temperature must be a finite number"),
    (dict(temperature=math.inf, greedy=False), "temperature must be a finite number"),
    (dict(temperature=0.0, greedy=False), "above 0 when sampling"),
    (dict(temperature=-1.0, greedy=False), "above 0 when sampling"),
    (dict(top_p=0.0), "top-p must be above 0"),
    (dict(top_p=1.5), "top-p must be above 0"),
    (dict(top_p=math.nan), "top-p must be a finite number"),
    (dict(top_k=-1), "top-k must be a whole number"),
    (dict(seed=2**80), "seed must be a whole number from 0 to"),
    (dict(seed=-1), "seed must be a whole number from 0 to"),
])
def test_bad_sampling_settings_are_one_line(options: dict, says: str) -> None:
    with pytest.raises(UserFacingError, match=says) as caught:
        SamplingSettings(**options)
    assert "\n" not in str(caught.value)


def test_the_edges_are_accepted() -> None:
    SamplingSettings(greedy=False, temperature=1e-3, top_p=1.0, top_k=0, seed=MAX_SEED)
    SamplingSettings(seed=0)
    GenerationSettings(max_new_tokens=1)
    with pytest.raises(UserFacingError, match="new tokens must be a whole number of at least 1"):
        GenerationSettings(max_new_tokens=0)


@pytest.mark.parametrize(("argv", "says"), [
    (["--sample", "--temperature", "nan"], "temperature must be a finite number"),
    (["--temperature", "nan"], "temperature must be a finite number"),
    (["--sample", "--seed", str(2**80)], "seed must be a whole number"),
    (["--max-new-tokens", "0"], "at least 1"),
])
def test_ask_refuses_bad_options_in_one_line(capsys, tiny_checkpoint, argv: list[str], says: str) -> None:
    assert main(["ask", "--model", str(tiny_checkpoint.model_dir), *argv, "hi"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0] and err[0].startswith("medgemma-desktop: ")


@pytest.mark.skipif(os.name == "nt", reason="Windows hands programs UTF-16 arguments, never undecodable bytes")
def test_ask_with_a_question_that_is_not_utf8_is_one_line(tiny_checkpoint) -> None:
    result = subprocess.run([sys.executable, "-m", "medgemma_desktop", "ask", "--model",
                             str(tiny_checkpoint.model_dir), b"What is \xff\xfe here?"],
                            capture_output=True, timeout=300, env={**os.environ, "PYTHONUTF8": "1"})
    err = result.stderr.decode("utf-8", "replace").strip().splitlines()
    assert result.returncode == 2, err
    assert len(err) == 1 and "not valid text" in err[0] and "Traceback" not in err[0]
