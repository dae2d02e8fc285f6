"""timeutil.format_epoch: the pages' fast time format, held equal to strftime's."""

from __future__ import annotations

import math
import time

from hypothesis import given
from hypothesis import strategies as st

from bulkbackup import timeutil
from bulkbackup.timeutil import EPOCH_MAX_S, format_epoch


def strftime_way(epoch_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_s))


@given(st.one_of(st.integers(0, EPOCH_MAX_S),
                 st.floats(0, EPOCH_MAX_S, allow_nan=False, allow_infinity=False)))
def test_format_epoch_writes_what_strftime_writes(epoch_s: float) -> None:
    assert format_epoch(epoch_s) == strftime_way(epoch_s)


def test_format_epoch_edges_and_its_bounded_day_cache() -> None:
    assert format_epoch(0) == "1970-01-01T00:00:00Z"
    assert format_epoch(86399.999) == "1970-01-01T23:59:59Z"
    assert format_epoch(951782400) == "2000-02-29T00:00:00Z"
    assert format_epoch(EPOCH_MAX_S) == "9999-12-31T23:59:59Z"
    for outside in (-1, -0.5, EPOCH_MAX_S + 1, math.inf, -math.inf, math.nan):
        assert format_epoch(outside) is None
    for day in range(timeutil._DAYS_KEPT * 2 + 5):  # one a day: the cache is cleared, kept
        assert format_epoch(day * 86400 + 3661) == strftime_way(day * 86400 + 3661)
    assert timeutil._day_prefix.cache_info().currsize <= timeutil._DAYS_KEPT
