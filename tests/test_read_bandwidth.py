"""The memory read-bandwidth probe behind the benches' "% bw" column: a finite positive figure
for small thread counts, and a clear ValueError for bad arguments. No timing is asserted."""
import math

import pytest

from forgert import _core


@pytest.mark.parametrize("threads", [1, 2])
def test_probe_returns_finite_positive_gbs(threads):
    gbs = _core.cpu_read_bandwidth_gbs(threads, 64)
    assert math.isfinite(gbs) and gbs > 0


def test_probe_default_buffer_size():
    # mib=0: sized from the L3 and the available memory (here up to 4 GiB, first-touched).
    gbs = _core.cpu_read_bandwidth_gbs(1)
    assert math.isfinite(gbs) and gbs > 0


@pytest.mark.parametrize("kwargs, message", [
    ({"n_threads": -1}, "n_threads must be >= 0"),
    ({"n_threads": 1, "mib": -5}, "mib must be >= 0"),
    ({"n_threads": 1, "mib": 1 << 30}, "more than half the available memory"),
])
def test_probe_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _core.cpu_read_bandwidth_gbs(**kwargs)
