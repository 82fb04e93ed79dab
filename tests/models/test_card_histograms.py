"""The training distribution in the model cards (models/card.py ``training_distribution``)
and the histogram / PSI code it shares with the gateway's drift monitor (models/psi.py)."""

from __future__ import annotations

import json
import math

import pytest
from aiotkit.models import card as cardmod
from aiotkit.models import psi
from hypothesis import given, settings
from hypothesis import strategies as st
from modelpaths import MODELS, SHIPPED

finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)
anyfloat = st.floats(allow_nan=True, allow_infinity=True)
counts = st.lists(st.integers(0, 10_000), min_size=1, max_size=20).filter(
    lambda c: sum(c) > 0)


@settings(max_examples=300, deadline=None)
@given(st.lists(finite, min_size=1, max_size=300), st.integers(1, 20))
def test_histogram_counts_every_value_once_in_sorted_bins(values, bins):
    h = psi.histogram(values, bins)
    edges, cnt = h["edges"], h["counts"]
    assert len(cnt) == len(edges) - 1 <= bins
    assert edges == sorted(edges) and edges[0] == min(values) and edges[-1] == max(values)
    assert sum(cnt) == len(values)
    # the bins the histogram counted in are the bins bin_index gives
    again = [0] * len(cnt)
    for v in values:
        again[psi.bin_index(edges, v)] += 1
    assert again == cnt


@settings(max_examples=300, deadline=None)
@given(st.lists(finite, min_size=1, max_size=100), anyfloat)
def test_out_of_range_nan_and_infinite_values_land_in_a_bin(values, x):
    edges = psi.histogram(values)["edges"]
    i = psi.bin_index(edges, x)
    assert 0 <= i < len(edges) - 1
    if x < edges[0]:
        assert i == 0
    if x > edges[-1]:
        assert i == len(edges) - 2


@settings(max_examples=300, deadline=None)
@given(counts)
def test_psi_of_a_distribution_with_itself_is_zero(c):
    assert psi.psi(c, c) == 0.0
    assert psi.psi(c, [3 * x for x in c]) == pytest.approx(0.0, abs=1e-12)  # scale-free


@settings(max_examples=300, deadline=None)
@given(counts, st.data())
def test_psi_is_nonnegative_and_finite_even_with_empty_bins(expected, data):
    actual = data.draw(st.lists(st.integers(0, 10_000), min_size=len(expected),
                                max_size=len(expected)).filter(lambda c: sum(c) > 0))
    v = psi.psi(expected, actual)
    assert v >= 0.0 and math.isfinite(v)


def test_psi_refuses_mismatched_or_empty_histograms():
    for e, a in (([1, 2], [1]), ([], []), ([0, 0], [1, 1]), ([1, 1], [0, 0])):
        with pytest.raises(ValueError):
            psi.psi(e, a)
    with pytest.raises(ValueError):
        psi.histogram([math.nan, math.inf])


def test_a_shifted_distribution_scores_above_the_drift_level():
    base = [i / 100 for i in range(1000)]
    h = psi.histogram(base)
    shifted = [0] * len(h["counts"])
    for x in base:
        shifted[psi.bin_index(h["edges"], 1.5 * x)] += 1
    assert psi.psi(h["counts"], shifted) > 0.25


def test_training_distribution_is_in_physical_units():
    """x = out * 2**(p*E - frac): a code^2 output (p = 2) with 8 fractional bits at
    E = -3 is out / 256 / 64 g^2; the histogram edges are those values."""
    inputs = [{"name": "band", "index": 1, "unit": "code^2", "unit_power": 2, "frac": 8},
              {"name": "zcr", "index": 0, "unit": "count", "unit_power": 0, "frac": 0}]
    rows = [[10 + i, 256 * 64 * i] for i in range(50)]
    dist = cardmod.training_distribution(rows, [-3] * 50, inputs, [i % 2 for i in range(50)],
                                         ("normal", "ball"))
    band, zcr = dist["features"]
    assert (band["edges"][0], band["edges"][-1]) == (0.0, 49.0)
    assert (zcr["edges"][0], zcr["edges"][-1]) == (10.0, 59.0)
    assert dist["windows"] == 50 and sum(band["counts"]) == 50
    assert sum(band["by_label"]["normal"]) == sum(band["by_label"]["ball"]) == 25


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_cards_hold_the_training_distribution_of_their_inputs(name):
    card = json.loads((MODELS / name / "card.json").read_text())
    dist = card["training_distribution"]
    inputs = card["input"]["features"]
    assert [(f["name"], f["index"], f["unit_power"], f["frac"]) for f in dist["features"]] \
        == [(d["name"], d["index"], d["unit_power"], d["frac"]) for d in inputs]
    # the classifier is trained on every window, the autoencoder on the normal ones
    want = card["training"]["windows"]["train"] if card["kind"] == "classifier" else None
    for f in dist["features"]:
        assert len(f["counts"]) == len(f["edges"]) - 1 <= psi.BINS
        assert f["edges"] == sorted(f["edges"])
        assert sum(f["counts"]) == dist["windows"]
        if want is not None:
            assert dist["windows"] == want
            assert {k: sum(v) for k, v in f["by_label"].items()}.keys() == set(
                card["output"]["labels"])
    # README.md is generated from the card, distribution table included
    assert cardmod.readme(card) == (MODELS / name / "README.md").read_text()
    assert "## Training distribution" in cardmod.readme(card)
