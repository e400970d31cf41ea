"""Fixtures of the study tests."""

import pytest

from kt_dropout.study import design


@pytest.fixture
def correlated_design(monkeypatch):
    """A design whose seeding benchmark found paired runs correlated, so that runs seeded "per-layer" at the same
    seeds are compared paired whatever `design.DESIGN_CORRELATION` says today: the tests written for the paired
    path keep testing it."""
    monkeypatch.setattr(design, "DESIGN_CORRELATION", design.Correlation(0.6, 0.3, "a test"))
