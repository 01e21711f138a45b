"""Reconciliation: the record meets the facts after crashes and interrupted commands."""

import pytest

from corral.compute.reconcile import Observation, observed_state
from corral.compute.state import VmState
from corral.qemu.process import ExitRecord

S = VmState


@pytest.mark.parametrize(
    ("recorded", "seen", "expected"),
    [
        (S.RUNNING, Observation(alive=False, exit=ExitRecord(137)), S.CRASHED),
        (S.RUNNING, Observation(alive=False, exit=ExitRecord(0)), S.SHUTOFF),
        (S.RUNNING, Observation(alive=False, exit=None), S.CRASHED),
        (S.PAUSED, Observation(alive=False, exit=ExitRecord(1)), S.CRASHED),
        (S.STOPPING, Observation(alive=False, exit=ExitRecord(0)), S.SHUTOFF),
        (S.STARTING, Observation(alive=False, exit=None), S.SHUTOFF),
        (S.STARTING, Observation(alive=False, exit=ExitRecord(1)), S.CRASHED),
        (S.STARTING, Observation(alive=True), S.RUNNING),
        (S.STARTING, Observation(alive=True, qmp_status="paused"), S.PAUSED),
        (S.RUNNING, Observation(alive=True, qmp_status="paused"), S.PAUSED),
        (S.PAUSED, Observation(alive=True, qmp_status="running"), S.RUNNING),
        (S.RUNNING, Observation(alive=True, qmp_status="running"), S.RUNNING),
        (S.STOPPING, Observation(alive=True, qmp_status="running"), S.STOPPING),
        (S.SHUTOFF, Observation(alive=False), S.SHUTOFF),
        (S.DEFINED, Observation(alive=False), S.DEFINED),
    ],
)
def test_observed_state(recorded: VmState, seen: Observation, expected: VmState) -> None:
    state, reason = observed_state(recorded, seen)
    assert state is expected
    assert (reason is None) == (state is recorded)


def test_crash_reason_names_the_signal() -> None:
    _, reason = observed_state(S.RUNNING, Observation(alive=False, exit=ExitRecord(137)))
    assert reason == "QEMU was killed by SIGKILL"
