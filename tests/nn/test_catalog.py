"""docs/normalizations.md cannot drift: every layer has an entry, the page is the catalog's
rendering, and running each layer confirms the axes and inference behaviour it states."""

import inspect
import pathlib

import pytest
import torch

import normlab.nn
from normlab.nn.catalog import ENTRIES, render

PAGE = pathlib.Path(__file__).resolve().parents[2] / "docs" / "normalizations.md"


def test_every_layer_has_an_entry_and_every_entry_a_layer():
    layers = {n for n in normlab.nn.__all__ if inspect.isclass(getattr(normlab.nn, n))}
    assert layers == {e.layer for e in ENTRIES}


def test_page_is_the_rendered_catalog():
    assert PAGE.read_text() == render(), "regenerate: python -m normlab.nn.catalog > docs/normalizations.md"


checked = [e for e in ENTRIES if e.axes is not None]


@pytest.mark.parametrize("entry", checked, ids=[e.layer for e in checked])
def test_statistics_are_taken_over_the_stated_axes(entry):
    layer = getattr(normlab.nn, entry.layer)(*entry.args).train()
    gen = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(entry.example, generator=gen, dtype=torch.float64) + 1
    layer = layer.double()
    with torch.no_grad():
        y = layer(x)
    y = y.reshape(entry.view) if entry.view else y
    def normalized_over(axes):
        ok = not entry.scale or (y.square().mean(axes) - 1).abs().max() < 1e-3  # eps keeps it a hair below 1
        return ok and (not entry.center or y.mean(axes).abs().max() < 1e-6)

    assert normalized_over(entry.axes)
    # ...and over no fewer axes: leaving any one out of the reduction breaks it, which
    # tells batch norm from instance norm on the same input
    for a in entry.axes if len(entry.axes) > 1 else ():
        assert not normalized_over(tuple(d for d in entry.axes if d != a)), f"also normalized without axis {a}"


@pytest.mark.parametrize("entry", checked, ids=[e.layer for e in checked])
def test_inference_dependence_on_the_batch_is_as_stated(entry):
    layer = getattr(normlab.nn, entry.layer)(*entry.args).double()
    gen = torch.Generator().manual_seed(1)
    x = 3 * torch.randn(entry.example, generator=gen, dtype=torch.float64) + 1
    with torch.no_grad():
        layer.train()(x)  # gives layers with running statistics something to run on
        layer.eval()
        together, alone = layer(x)[:1], layer(x[:1])
    assert torch.allclose(together, alone) != entry.inference_uses_batch
