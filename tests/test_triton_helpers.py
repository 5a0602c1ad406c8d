"""The installed app's prebuilt Triton helper (`core.triton_helpers`): Triton is handed the prebuilt module only for
the exact C source it was built from, and builds everything else itself. Triton is not installed with the CPU
torch of the tests, so a module with Triton's two hooks (`knobs.build.impl`, `runtime.build._build`, with Triton
3.6's signature) stands in for it here; the whole path ran on an H200 with Triton 3.6 (benchmarks/README.md, run
15: no C compiler, empty caches, the step compiled and ran at 288 tokens/s)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from medgemma_desktop.core import triton_helpers


@pytest.fixture
def fake_triton(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    built: list[tuple] = []

    def _build(name, src, srcdir, library_dirs, include_dirs, libraries, ccflags):  # Triton 3.6's signature
        assert knobs.build.impl is None, "Triton's own build must not call back into the hook"
        built.append((name, ccflags))
        return f"{srcdir}/{name}.built.so"

    knobs = types.SimpleNamespace(build=types.SimpleNamespace(impl=None))
    triton = types.ModuleType("triton")
    triton.knobs = knobs
    runtime = types.ModuleType("triton.runtime")
    build = types.ModuleType("triton.runtime.build")
    build._build = _build
    runtime.build = build
    triton.runtime = runtime
    for name, module in (("triton", triton), ("triton.runtime", runtime), ("triton.runtime.build", build)):
        monkeypatch.setitem(sys.modules, name, module)
    return types.SimpleNamespace(knobs=knobs, built=built)


def _helper(folder: Path, source: Path) -> Path:
    module = folder / "cuda_utils.cpython-312-x86_64-linux-gnu.so"
    module.write_bytes(b"\x7fELF prebuilt")
    module.with_name(module.name + triton_helpers.DIGEST_SUFFIX).write_text(triton_helpers.source_digest(source))
    return module


def test_the_prebuilt_helper_serves_its_own_source_only(tmp_path: Path, fake_triton) -> None:
    source = tmp_path / "driver.c"
    source.write_text("int main(void) { return 0; }\n")
    folder = tmp_path / "helpers"
    folder.mkdir()
    module = _helper(folder, source)
    assert triton_helpers.serve_prebuilt(folder)
    hook = fake_triton.knobs.build.impl
    assert hook("cuda_utils", str(source), str(tmp_path), [], [], ["cuda"]) == str(module)
    assert fake_triton.built == []
    other = tmp_path / "changed.c"
    other.write_text("int main(void) { return 1; }\n")  # another Triton's source: built, not served
    assert hook("cuda_utils", str(other), str(tmp_path), [], [], ["cuda"]) == f"{tmp_path}/cuda_utils.built.so"
    assert hook("__triton_launcher", str(source), str(tmp_path), [], [], []).endswith("__triton_launcher.built.so")
    assert fake_triton.built == [("cuda_utils", []), ("__triton_launcher", [])]
    assert fake_triton.knobs.build.impl is hook  # put back after each build of Triton's own


def test_nothing_to_serve_leaves_triton_alone(tmp_path: Path, fake_triton) -> None:
    assert not triton_helpers.serve_prebuilt(tmp_path)
    assert fake_triton.knobs.build.impl is None
    assert triton_helpers.bundled_folder() is None  # not running from the installer's bundle
