"""The VM state machine: which operations each state allows, and which moves exist."""

import pytest

from corral.compute.state import ALLOWED, TRANSITIONS, Op, VmState, check_transition, require
from corral.errors import StateError


def test_resume_of_shutoff_vm_names_current_and_required_state() -> None:
    with pytest.raises(StateError) as info:
        require("demo1", Op.RESUME, VmState.SHUTOFF)
    assert info.value.current == "shutoff"
    assert info.value.allowed == ("paused",)
    assert str(info.value) == "cannot resume vm 'demo1': it is shutoff; resume needs paused"


@pytest.mark.parametrize("op", list(Op))
def test_every_operation_is_allowed_somewhere_and_refused_somewhere(op: Op) -> None:
    allowed = ALLOWED[op]
    assert allowed
    assert set(VmState) - allowed


@pytest.mark.parametrize("state", list(VmState))
def test_every_state_has_a_way_out_and_is_reachable(state: VmState) -> None:
    assert TRANSITIONS[state]
    if state is not VmState.DEFINED:
        assert any(state in targets for targets in TRANSITIONS.values())


def test_operations_only_start_where_their_first_move_exists() -> None:
    first_move = {
        Op.START: VmState.STARTING,
        Op.PAUSE: VmState.PAUSED,
        Op.RESUME: VmState.RUNNING,
        Op.STOP: VmState.STOPPING,
        Op.DESTROY: VmState.SHUTOFF,
    }
    for op, target in first_move.items():
        for state in ALLOWED[op]:
            if state is not target:
                assert target in TRANSITIONS[state], (op, state)


def test_undefined_move_is_refused() -> None:
    with pytest.raises(StateError) as info:
        check_transition("vm1", VmState.SHUTOFF, VmState.PAUSED)
    assert "running" in info.value.allowed
    check_transition("vm1", VmState.RUNNING, VmState.RUNNING)


def test_delete_refused_while_running() -> None:
    with pytest.raises(StateError):
        require("vm1", Op.DELETE, VmState.RUNNING)
    require("vm1", Op.DELETE, VmState.CRASHED)
