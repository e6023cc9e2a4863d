"""bin/lock --check: the committed lock matches pyproject.toml, and notices when it does not."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _lock_module() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("bin_lock", str(ROOT / "bin" / "lock"))
    spec = importlib.util.spec_from_loader("bin_lock", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.fixture
def lock() -> ModuleType:
    return _lock_module()


@pytest.fixture
def copy(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "requirements").mkdir()
    locks = {}
    for kind in ("runtime", "dev"):
        locks[kind] = tmp_path / "requirements" / f"{kind}.txt"
        shutil.copy(ROOT / "requirements" / f"{kind}.txt", locks[kind])
    return tmp_path / "pyproject.toml", locks


def test_the_committed_lock_is_current(lock: ModuleType) -> None:
    assert lock.problems() == []


def test_the_lock_pins_every_package_with_hashes(lock: ModuleType) -> None:
    for path in lock.LOCKS.values():
        text = path.read_text()
        pinned = lock.pins(text)
        assert {"django", "django-money", "babel"} <= set(pinned)
        # Every pin carries its hashes (pip --require-hashes refuses a line without).
        lines = text.splitlines()
        for number, line in enumerate(lines):
            if "==" in line and not line.startswith((" ", "#")):
                assert "--hash=sha256:" in lines[number + 1], line


def test_a_changed_range_in_pyproject_makes_the_lock_stale(
    lock: ModuleType, copy: tuple[Path, dict[str, Path]]
) -> None:
    pyproject, locks = copy
    assert lock.problems(pyproject, locks) == []
    text = pyproject.read_text().replace('"stripe>=16,<17"', '"stripe>=17,<18"')
    pyproject.write_text(text)
    found = lock.problems(pyproject, locks)
    assert any("make lock" in problem and "runtime.txt" in problem for problem in found)
    assert any("stripe==16" in problem and "outside" in problem for problem in found)


def test_a_new_dependency_without_a_pin_is_reported(
    lock: ModuleType, copy: tuple[Path, dict[str, Path]]
) -> None:
    pyproject, locks = copy
    text = pyproject.read_text().replace('"pyyaml>=6,<7",', '"pyyaml>=6,<7",\n    "attrs>=99",')
    pyproject.write_text(text)
    assert any("attrs" in problem for problem in lock.problems(pyproject, locks))
