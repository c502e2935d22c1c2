"""Every service's systemd exposure, read on the host running it, within its bound.

systemd-analyze security scores a running unit with everything that applies to it
(Debian's unit, the blueprint's drop-in, systemd's defaults): the bounds are
tests/hardening.py's, the ones the fast tests check offline.
"""

from __future__ import annotations

import re

import pytest

from tests.hardening import BOUNDS
from tests.replicas.conftest import first


@pytest.mark.parametrize("unit", BOUNDS)
def test_every_service_runs_within_its_exposure_bound(converged, hosts, unit):
    _, group, bound = BOUNDS[unit]
    host = hosts[first(group)]
    assert host.service(unit).is_running, unit
    out = host.run("systemd-analyze security --no-pager %s", unit)
    assert out.rc == 0, out.stderr
    score = float(re.search(r"Overall exposure level for \S+: (\d+\.\d)", out.stdout)[1])
    print(f"\nfigure: {unit} exposure on {first(group)}: {score} (bound {bound})")
    assert score <= bound
