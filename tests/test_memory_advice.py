"""numpy's huge-page advice is off in edgeseg's processes (``edgeseg/_memory.py``), unless the user chose.

Each case runs a fresh interpreter (the switch is read once, when numpy is imported) and asks numpy for its state.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

#: numpy's own record of the switch, read after the imports the case names
STATE = "from numpy._core import multiarray; print(multiarray._get_madvise_hugepage())"


def _run(code: str, **env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    proc = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_importing_edgeseg_first_turns_numpys_huge_page_advice_off() -> None:
    assert _run(f"import edgeseg.runtime, os; print(os.environ['NUMPY_MADVISE_HUGEPAGE']); {STATE}") == ["0", "False"]


@pytest.mark.parametrize("choice, state", [("1", "True"), ("0", "False")])
def test_a_users_own_setting_is_kept(choice: str, state: str) -> None:
    assert _run(f"import edgeseg; {STATE}", NUMPY_MADVISE_HUGEPAGE=choice) == [state]


def test_a_host_that_imported_numpy_first_keeps_its_state() -> None:
    before_after = _run(f"{STATE}; import edgeseg, os; print(os.environ.get('NUMPY_MADVISE_HUGEPAGE')); {STATE}")
    assert before_after[1] == "None"  # nothing set for the host's children either
    assert before_after[0] == before_after[2]
