"""The battery of bad and odd cases: layers x input kinds x modes, tools x odd models, lab x
damaged data. Each case's expected outcome is decided before normlab runs (see each module's docstring);
docs/battery.md holds the counts (``battery_page.py``)."""

import pytest
import torch

import battery_lab
import battery_layers
import battery_page
import battery_tools


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread, so that a loaded machine's cores are not fought over for each case."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


LAYER_CASES = battery_layers.layer_cases()


@pytest.mark.parametrize("case", LAYER_CASES, ids=[c.id for c in LAYER_CASES])
def test_layer(case):
    expected, context = battery_layers.expect(case)
    actual, said = battery_layers.judge(case, expected, context)
    if "defect" in context and actual != expected:
        pytest.fail(f"{case.id}: the known defect is gone ({actual}): remove it from KNOWN_DEFECTS")
    assert actual == expected, f"{case.id}: expected {expected}, got {actual}: {said}"


TOOL_CASES = [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if battery_tools.BY_NAME[c.model].slow else [])
              for c in battery_tools.tool_cases()]


@pytest.mark.parametrize("case", TOOL_CASES)
def test_tool(case):
    expected = battery_tools.expected(case)
    actual, said = battery_tools.run_tool(case)
    assert actual == expected, f"{case.id}: expected {expected}, got {actual}: {said}"


LAB_CASES = battery_lab.lab_cases()


@pytest.mark.parametrize("case", LAB_CASES, ids=[c.id for c in LAB_CASES])
@pytest.mark.slow
def test_lab(case):
    expected = battery_lab.expected(case)
    actual, said = battery_lab.run_lab(case)
    assert actual == expected, f"{case.id}: expected {expected}, got {actual}: {said}"


def test_docs_hold_the_counts():
    if f"counted with torch {battery_page.TORCH} " not in battery_page.PAGE.read_text():
        pytest.skip(f"docs/battery.md was counted with another torch than {battery_page.TORCH}")
    assert battery_page.PAGE.read_text() == battery_page.render(battery_page.expected_outcomes()), (
        "regenerate: python tests/battery/battery_page.py > docs/battery.md")

