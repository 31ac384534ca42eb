"""The shared argument check: one message shape, the caller's exception types."""

from __future__ import annotations

import pytest

from modeldiff.errors import ModelDiffError, SearchError, check_int


def test_check_int_accepts_integers_and_names_what_is_wrong():
    assert check_int("steps", 3, 1) == 3
    assert check_int("seed", -7) == -7
    with pytest.raises(TypeError, match=r"^expected steps to be an int, got float$"):
        check_int("steps", 3.0, 1)
    with pytest.raises(TypeError, match=r"^expected steps to be an int, got bool$"):
        check_int("steps", True, 1)
    with pytest.raises(ModelDiffError, match=r"^expected steps >= 1, got 0$"):
        check_int("steps", 0, 1)
    with pytest.raises(SearchError, match=r"^expected steps >= 1, got 0$"):
        check_int("steps", 0, 1, error=SearchError)
    with pytest.raises(SearchError, match=r"to be an int"):
        check_int("steps", "3", 1, error=SearchError, type_error=SearchError)
