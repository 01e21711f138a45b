"""The pure snapshot plans: chains, create, revert and delete, without a file touched."""

from __future__ import annotations

import pytest

from corral.errors import AlreadyExists, InvalidInput, NotFound
from corral.storage.snapshots import (
    CURRENT_STATE,
    Chain,
    DeletePlan,
    Tree,
    all_chains,
    describe_delete,
    describe_revert,
    plan_create,
    plan_delete,
    plan_revert,
)


def _take(tree: Tree, chain: Chain, name: str) -> tuple[Tree, Chain]:
    plan = plan_create(tree, chain, f"id-{name}", name, name)
    return Tree({**tree.nodes, plan.node.id: plan.node}), plan.chain


def _line(count: int) -> tuple[Tree, Chain]:
    """s1 <- s2 <- ... in a line, the VM on the last one; two disks."""
    tree, chain = Tree(), Chain.initial(["root", "data"])
    for i in range(1, count + 1):
        tree, chain = _take(tree, chain, f"s{i}")
    return tree, chain


def test_create_freezes_every_top_and_chains_overlays() -> None:
    tree, chain = _line(2)
    assert chain.current == "id-s2"
    assert all_chains(tree, chain) == {
        "root": ["root-s2.qcow2", "root-s1.qcow2", "root.qcow2"],
        "data": ["data-s2.qcow2", "data-s1.qcow2", "data.qcow2"],
    }
    assert tree.nodes["id-s2"].parent == "id-s1"
    assert tree.nodes["id-s1"].layers == {"root": "root.qcow2", "data": "data.qcow2"}


def test_create_refuses_a_taken_or_bad_name() -> None:
    tree, chain = _line(1)
    with pytest.raises(AlreadyExists):
        plan_create(tree, chain, "x", "s1", "t")
    with pytest.raises(InvalidInput) as caught:
        plan_create(tree, chain, "x", "Bad Name", "t")
    assert caught.value.field == "name"


def test_revert_discards_tops_keeps_every_snapshot_and_branches() -> None:
    tree, chain = _line(3)
    plan = plan_revert(tree, chain, "s1", "vm", "r1")
    assert plan.discarded == ("data-s3.qcow2", "root-s3.qcow2")
    assert plan.since == "s3"
    assert plan.chain.current == "id-s1"
    assert all_chains(tree, plan.chain)["root"] == ["root-r1.qcow2", "root.qcow2"]
    lines = describe_revert(plan, "vm", unsaved=True)
    assert lines[0].startswith("LOST: what vm 'vm' wrote since snapshot 's3'")
    assert "every snapshot stays in the tree" in lines
    assert describe_revert(plan, "vm", unsaved=False)[0].startswith("nothing is lost")
    with pytest.raises(NotFound):
        plan_revert(tree, chain, "nope", "vm", "r")


def test_delete_middle_merges_into_the_child_and_relinks_it() -> None:
    tree, chain = _line(3)
    plan = plan_delete(tree, chain, "s2", "vm")
    merge = {m.disk: m for m in plan.merges}["root"]
    assert (merge.layer, merge.into, merge.backing, merge.live) == (
        "root-s1.qcow2",
        "root-s2.qcow2",
        "root.qcow2",
        True,
    )
    assert plan.tree.nodes["id-s3"].parent == "id-s1"
    assert "id-s2" not in plan.tree.nodes
    assert all_chains(plan.tree, plan.chain)["root"] == [
        "root-s3.qcow2",
        "root-s2.qcow2",
        "root.qcow2",
    ]
    lines = describe_delete(plan, "vm", running=True)
    assert lines[0] == "snapshot 's2' is merged into s3 of vm 'vm'"
    assert "(by QEMU while the VM runs)" in lines[1]
    assert "(with qemu-img)" in describe_delete(plan, "vm", running=False)[1]


def test_delete_of_the_current_root_merges_into_the_vm_over_the_image() -> None:
    tree, chain = _line(1)
    plan = plan_delete(tree, chain, "s1", "vm")
    assert plan.absorbed_by == (CURRENT_STATE,)
    assert {(m.layer, m.into, m.backing) for m in plan.merges} == {
        ("root.qcow2", "root-s1.qcow2", None),
        ("data.qcow2", "data-s1.qcow2", None),
    }
    assert plan.chain.current is None
    assert all_chains(plan.tree, plan.chain)["root"] == ["root-s1.qcow2"]


def _merges(plan: DeletePlan) -> list[tuple[str, str, str, str | None, bool]]:
    return [(m.successor, m.disk, m.into, m.backing, m.live) for m in plan.merges]


def test_delete_with_a_child_and_the_vm_merges_into_both() -> None:
    tree, chain = _line(2)
    back = plan_revert(tree, chain, "s1", "vm", "r1").chain  # the VM and s2 both on s1
    plan = plan_delete(tree, back, "s1", "vm")
    # The branch off the running chain first (qemu-img), the VM's own top last (QEMU).
    assert _merges(plan) == [
        ("s2", "data", "data-s1.qcow2", None, False),
        ("s2", "root", "root-s1.qcow2", None, False),
        (CURRENT_STATE, "data", "data-r1.qcow2", None, True),
        (CURRENT_STATE, "root", "root-r1.qcow2", None, True),
    ]
    assert plan.absorbed_by == ("s2", CURRENT_STATE)
    assert plan.removed == ("data.qcow2", "root.qcow2")
    assert plan.tree.nodes["id-s2"].parent is None
    assert plan.chain.current is None
    assert all_chains(plan.tree, plan.chain)["root"] == ["root-r1.qcow2"]
    lines = describe_delete(plan, "vm", running=True)
    assert lines[0] == "snapshot 's1' is merged into s2 and the VM's current state of vm 'vm'"
    assert "root: copy root.qcow2 into root-s1.qcow2 (with qemu-img)" in lines[2]
    assert "root: copy root.qcow2 into root-r1.qcow2 (by QEMU while the VM runs)" in lines[4]
    assert "disk use grows by up to 1 copies of snapshot 's1'" in lines[5]


def test_delete_with_two_children_off_the_vm_rebases_each_onto_the_parent() -> None:
    tree, chain = _line(2)  # s1 <- s2
    back = plan_revert(tree, chain, "s1", "vm", "r1").chain
    tree, chain = _take(tree, back, "s3")  # s1 <- s3, the VM on s3
    plan = plan_delete(tree, chain, "s1", "vm")
    assert [m for m in _merges(plan) if m[1] == "root"] == [
        ("s2", "root", "root-s1.qcow2", None, False),
        ("s3", "root", "root-r1.qcow2", None, True),  # s3's frozen file is in the VM's chain
    ]
    assert plan.absorbed_by == ("s2", "s3")
    assert {n.parent for n in plan.tree.nodes.values()} == {None}
    assert plan.chain == chain
    assert all_chains(plan.tree, plan.chain)["root"] == ["root-s3.qcow2", "root-r1.qcow2"]


def test_delete_with_three_successors_backs_each_by_the_parent_layer() -> None:
    tree, chain = _line(3)  # s1 <- s2 <- s3; delete s2 with s3, s4 and the VM on it
    back = plan_revert(tree, chain, "s2", "vm", "r1").chain
    tree, chain = _take(tree, back, "s4")
    chain = plan_revert(tree, chain, "s2", "vm", "r2").chain
    plan = plan_delete(tree, chain, "s2", "vm")
    assert plan.absorbed_by == ("s3", "s4", CURRENT_STATE)
    assert [m for m in _merges(plan) if m[1] == "root"] == [
        ("s3", "root", "root-s2.qcow2", "root.qcow2", False),
        ("s4", "root", "root-r1.qcow2", "root.qcow2", False),
        (CURRENT_STATE, "root", "root-r2.qcow2", "root.qcow2", True),
    ]
    assert {plan.tree.nodes[i].parent for i in ("id-s3", "id-s4")} == {"id-s1"}
    assert plan.chain.current == "id-s1"
    assert all_chains(plan.tree, plan.chain)["root"] == ["root-r2.qcow2", "root.qcow2"]
    lines = describe_delete(plan, "vm", running=False)
    assert all("(with qemu-img)" in line for line in lines[1:7])
    assert "each of the 3 layers built on it: disk use grows by up to 2 copies" in lines[7]


def test_delete_of_a_root_with_two_children_leaves_two_roots_on_the_image() -> None:
    tree, chain = Tree(), Chain.initial(["root"])
    tree, chain = _take(tree, chain, "base")
    tree, chain = _take(tree, chain, "a")
    chain = plan_revert(tree, chain, "base", "vm", "r1").chain
    tree, chain = _take(tree, chain, "b")  # base <- a, base <- b <- the VM
    plan = plan_delete(tree, chain, "base", "vm")
    assert _merges(plan) == [
        ("a", "root", "root-base.qcow2", None, False),
        ("b", "root", "root-r1.qcow2", None, True),
    ]
    assert plan.removed == ("root.qcow2",)
    assert [n.name for n in plan.tree.children(None)] == ["a", "b"]
    assert all_chains(plan.tree, plan.chain)["root"] == ["root-b.qcow2", "root-r1.qcow2"]


def test_delete_of_a_branch_leaf_off_the_vm_is_offline_or_a_plain_removal() -> None:
    tree, chain = _line(3)
    back = plan_revert(tree, chain, "s1", "vm", "r1").chain
    leaf = plan_delete(tree, back, "s3", "vm")
    assert leaf.merges == ()
    assert leaf.removed == ("data-s2.qcow2", "root-s2.qcow2")
    middle = plan_delete(tree, back, "s2", "vm")
    assert all(not m.live for m in middle.merges)
    assert middle.chain == back


def test_a_memory_snapshot_names_its_state_file_and_delete_removes_it() -> None:
    tree, chain = Tree(), Chain.initial(["root"])
    plan = plan_create(tree, chain, "m1", "full", "abcd", memory=True)
    assert (plan.node.kind, plan.node.memory) == ("memory", "memory-abcd.state")
    assert plan_create(tree, chain, "d1", "disk", "abce").node.kind == "disk"
    tree = Tree({"m1": plan.node})
    removed = plan_delete(tree, plan.chain, "full", "vm1").removed
    assert removed == ("root.qcow2", "memory-abcd.state")


def test_reverting_to_memory_says_a_running_vm_is_destroyed() -> None:
    tree, chain = Tree(), Chain.initial(["root"])
    made = plan_create(tree, chain, "m1", "full", "abcd", memory=True)
    tree = Tree({"m1": made.node})
    plan = plan_revert(tree, made.chain, "full", "vm1", "efgh")
    lines = describe_revert(plan, "vm1", unsaved=False, running=True, resume="paused")
    assert lines[0] == "vm 'vm1' runs: it is destroyed first (LOST: its memory as it is now)"
    assert "the guest is paused again where it was" in lines[-2]
    stopped = describe_revert(plan, "vm1", unsaved=False, running=False, resume="running")
    assert not stopped[0].startswith("vm 'vm1' runs")
