"""``check_finite`` flags exactly the rows with a non-finite logit (nan, +inf or -inf)."""

from __future__ import annotations

import pytest
import torch

from steerlab.engine.batch import check_finite
from steerlab.errors import SteerlabError

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_each_kind_of_non_finite_value_is_caught(bad: float, dtype: torch.dtype) -> None:
    logits = torch.zeros(3, 5, dtype=dtype)
    logits[1, 3] = bad
    with pytest.raises(SteerlabError, match=r"non-finite .* in 1 row"):
        check_finite(logits, None, [(), (), ()])


def test_finite_rows_and_the_overflow_flag() -> None:
    logits = torch.tensor([[1e30, -1e30, 0.0], [3.0, 2.0, 1.0]])
    check_finite(logits, None, [(), ()])  # large but finite
    with pytest.raises(SteerlabError, match=r"in 1 row"):
        check_finite(logits, torch.tensor([False, True]), [(), ()])
