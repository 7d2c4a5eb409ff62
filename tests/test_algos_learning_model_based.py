"""The model-based learners (MOPO, MOReL, COMBO) learn goal reaching from states on the point-mass world, by
the same check and margin as the model-free family (``tests/test_algos_learning.py``; in a file of their own so
that pytest-xdist runs them beside that file rather than after it)."""

from __future__ import annotations

import pytest

from data_lake import Lake
from tests.test_algos_learning import MODEL_BASED_CASES, learns_from_states, state_lake

__all__ = ["state_lake"]  # the module fixture, shared


@pytest.mark.parametrize("name", sorted(MODEL_BASED_CASES))
def test_model_based_learns_goal_reaching_from_states(name: str, state_lake: Lake) -> None:
    learns_from_states(name, *MODEL_BASED_CASES[name], state_lake)
