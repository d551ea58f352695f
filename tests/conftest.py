import os
from pathlib import Path

import pytest
from hypothesis import settings

# CI runs the property tests with a fixed seed, so a red build is reproducible; locally they explore.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (ROOT / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data beside the checkout (../shared/data). Tests never copy it."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing: the tests need ../shared/data beside the checkout")
    return SHARED_DATA


# ------------------------------------------------------------------ reliability figures
# Tests that inject faults record what they checked here; the totals are printed at the end of the
# run, and docs/reliability.md quotes them (so its figures come from the suite, not from memory).
RELIABILITY: dict[str, int] = {}


@pytest.fixture
def reliability():
    """``reliability("faults injected", 3)`` adds 3 to that figure in the end-of-run summary."""

    def count(what: str, n: int = 1) -> None:
        RELIABILITY[what] = RELIABILITY.get(what, 0) + n

    return count


def pytest_terminal_summary(terminalreporter):
    if RELIABILITY:
        terminalreporter.write_sep("-", "reliability figures (docs/reliability.md)")
        for what, n in sorted(RELIABILITY.items()):
            terminalreporter.write_line(f"{what}: {n}")
