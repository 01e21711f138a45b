"""Security groups over the API and the CLI: create, list, show, delete; rules; attaching
to a VM's NIC; what is refused and why.

The world: projects p1 and p2; alice operates p1, carol views p1, bob operates p2; the local
administrator on the UNIX socket. ``corral.toml`` says ``[network] host = false``: groups and
networks live in the database only (the host's side is tests/net/test_security.py's).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from corral.access.audit import AuditFilter, list_entries
from corral.access.local import local_principal
from corral.access.principal import Principal
from corral.compute.context import Corral
from corral.compute.define import CreateRequest, create
from corral.compute.nics import add_nic
from corral.compute.security import load_plan
from corral.compute.settings import SETTINGS_FILE
from corral.store.models import VmRow
from tests import daemons
from tests.api.support import admin_client, state_dir, user_client
from tests.integration.conftest import cli

API = "/api/v1"
SG = f"{API}/security-groups"


@dataclass
class World:
    ctx: Corral
    admin: Principal
    clients: dict[str, TestClient]


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    users = {
        "alice": ("operator", ["p1"]),
        "carol": ("viewer", ["p1"]),
        "bob": ("operator", ["p2"]),
    }
    with state_dir("sg-", ["p1", "p2"], users) as ctx:
        (ctx.home.root / SETTINGS_FILE).write_text("[network]\nhost = false\n")
        with admin_client(ctx) as local:
            clients = {"local": local}
            for user in users:
                clients[user] = user_client(ctx, user).__enter__()
            try:
                admin = local_principal(ctx, os.geteuid())
                net = {"name": "lan", "kind": "nat", "subnet": "10.77.0.0/24", "project": "p1"}
                assert local.post(f"{API}/networks", json=net).status_code == 201
                for vm in ("a", "bare"):
                    create(
                        ctx, CreateRequest(name=vm, image="reference", memory="128M", project="p1")
                    )
                add_nic(ctx, admin, "a", "lan")
                yield World(ctx, admin, clients)
            finally:
                for user in users:
                    clients[user].__exit__(None, None, None)


def _rules(*rules: dict[str, Any]) -> list[dict[str, Any]]:
    return list(rules)


def test_create_list_get_delete(world: World) -> None:
    alice = world.clients["alice"]
    body = {
        "name": "web",
        "project": "p1",
        "description": "front ends",
        "rules": _rules({"protocol": "tcp", "ports": "80"}, {"protocol": "icmp"}),
    }
    made = alice.post(SG, json=body)
    assert made.status_code == 201, made.text
    assert made.headers["location"] == f"{SG}/web"
    group = made.json()
    assert [(r["protocol"], r["ports"], r["direction"]) for r in group["rules"]] == [
        ("tcp", "80", "in"),
        ("icmp", None, "in"),
    ]
    assert group["attached"] == [] and group["project"] == "p1"
    assert [g["name"] for g in alice.get(SG).json()] == ["web"]
    assert alice.get(f"{SG}/web").json()["description"] == "front ends"
    assert alice.post(SG, json=body).status_code == 409
    assert alice.delete(f"{SG}/web").status_code == 204
    assert alice.get(f"{SG}/web").status_code == 404
    actions = [
        (e.action, e.outcome)
        for e in list_entries(world.ctx, world.admin, AuditFilter(target_name="web"))
    ]
    assert ("security_group.create", "ok") in actions
    assert ("security_group.delete", "ok") in actions
    assert ("security_group.create", "AlreadyExists") in actions


@pytest.mark.parametrize(
    ("rule", "field"),
    [
        ({"protocol": "tcp", "ports": "8100-8000"}, "ports"),
        ({"protocol": "tcp", "ports": "0"}, "ports"),
        ({"protocol": "udp", "ports": "70000"}, "ports"),
        ({"protocol": "tcp", "ports": "http"}, "ports"),
        ({"protocol": "icmp", "ports": "80"}, "ports"),
        ({"protocol": "tcp", "cidr": "10.0.0.300/8"}, "cidr"),
        ({"protocol": "tcp", "cidr": "10.0.0.0/8", "group": "web"}, "peer"),
    ],
)
def test_bad_rules_are_422s_naming_the_field(
    world: World, rule: dict[str, Any], field: str
) -> None:
    alice = world.clients["alice"]
    answer = alice.post(SG, json={"name": "bad", "project": "p1", "rules": [rule]})
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == field, answer.json()
    if field == "ports" and "-" in rule.get("ports", ""):
        assert "impossible port range" in answer.json()["message"]
    assert alice.get(f"{SG}/bad").status_code == 404  # nothing half-made


def test_a_bad_protocol_or_name_is_refused(world: World) -> None:
    alice = world.clients["alice"]
    bad = alice.post(SG, json={"name": "x", "project": "p1", "rules": [{"protocol": "gre"}]})
    assert bad.status_code == 422 and "protocol" in (bad.json()["field"] or "")
    assert alice.post(SG, json={"name": "Web!", "project": "p1"}).status_code == 422


def test_rules_added_and_removed(world: World) -> None:
    alice = world.clients["alice"]
    assert alice.post(SG, json={"name": "ssh", "project": "p1"}).status_code == 201
    assert alice.post(SG, json={"name": "bastion", "project": "p1"}).status_code == 201
    rule = alice.post(f"{SG}/ssh/rules", json={"ports": "22", "group": "bastion"})
    assert rule.status_code == 201, rule.text
    assert rule.json()["group"] == "bastion"
    out = alice.post(f"{SG}/ssh/rules", json={"direction": "out", "protocol": "any"})
    assert out.status_code == 201
    assert len(alice.get(f"{SG}/ssh").json()["rules"]) == 2
    # bastion is named by ssh's rule: not deleted.
    named = alice.delete(f"{SG}/bastion")
    assert named.status_code == 409 and "'ssh'" in named.json()["message"]
    assert alice.delete(f"{SG}/ssh/rules/{rule.json()['id'][:8]}").status_code == 204
    assert alice.delete(f"{SG}/ssh/rules/{rule.json()['id']}").status_code == 404
    assert [r["direction"] for r in alice.get(f"{SG}/ssh").json()["rules"]] == ["out"]
    assert alice.delete(f"{SG}/bastion").status_code == 204
    assert alice.delete(f"{SG}/ssh").status_code == 204


def test_attach_and_detach(world: World) -> None:
    alice = world.clients["alice"]
    assert alice.post(SG, json={"name": "app", "project": "p1"}).status_code == 201
    none = alice.post(f"{SG}/app/attachments", json={"vm": "bare"})
    assert none.status_code == 409 and "has no NIC on a network" in none.json()["message"]
    wrong = alice.post(f"{SG}/app/attachments", json={"vm": "a", "nic": "net7"})
    assert wrong.status_code == 404
    done = alice.post(f"{SG}/app/attachments", json={"vm": "a"})
    assert done.status_code == 200, done.text
    assert done.json()["attached"] == ["a/net1"]
    again = alice.post(f"{SG}/app/attachments", json={"vm": "a", "nic": "net1"})
    assert again.status_code == 409 and "already" in again.json()["message"]
    with world.ctx.db.session() as session:
        plan = load_plan(session)
        vm = session.scalars(select(VmRow).where(VmRow.name == "a")).one()
    assert [str(g.address) for g in plan.guards] == ["10.77.0.2"]
    assert plan.guards[0].tap.startswith("crt-") and vm.id
    busy = alice.delete(f"{SG}/app")
    assert busy.status_code == 409 and "a/net1" in busy.json()["message"]
    off = alice.delete(f"{SG}/app/attachments/a")
    assert off.status_code == 200 and off.json()["attached"] == []
    assert alice.delete(f"{SG}/app/attachments/a").status_code == 404
    assert alice.delete(f"{SG}/app").status_code == 204


def test_other_projects_groups_do_not_exist(world: World) -> None:
    alice, bob, carol = (world.clients[u] for u in ("alice", "bob", "carol"))
    assert alice.post(SG, json={"name": "mine", "project": "p1"}).status_code == 201
    assert bob.post(SG, json={"name": "theirs", "project": "p2"}).status_code == 201
    assert bob.get(f"{SG}/mine").status_code == 404
    assert bob.delete(f"{SG}/mine").status_code == 404
    assert [g["name"] for g in bob.get(SG).json()] == ["theirs"]
    # A rule's peer group is looked for in the group's own project.
    cross = alice.post(f"{SG}/mine/rules", json={"ports": "22", "group": "theirs"})
    assert cross.status_code == 404 and "theirs" in cross.json()["message"]
    # bob's group may not be attached to alice's VM.
    assert bob.post(f"{SG}/theirs/attachments", json={"vm": "a"}).status_code == 404
    # carol only views p1.
    assert carol.get(f"{SG}/mine").status_code == 200
    assert carol.post(f"{SG}/mine/rules", json={"ports": "22"}).status_code == 403
    assert carol.post(SG, json={"name": "hers", "project": "p1"}).status_code == 403
    assert alice.delete(f"{SG}/mine").status_code == 204
    assert bob.delete(f"{SG}/theirs").status_code == 204


def test_the_cli_creates_changes_shows_and_deletes() -> None:
    home = Path(tempfile.mkdtemp(prefix="sgcli-", dir="/tmp"))
    try:
        (home / SETTINGS_FILE).write_text("[network]\nhost = false\n")
        made = cli(home, "sg", "create", "web", "--allow", "tcp/80", "--allow", "tcp/22")
        assert made.returncode == 0, made.stderr
        assert "security group web created in project default with 2 rules" in made.stdout
        bad = cli(home, "sg", "create", "bad", "--allow", "tcp/90-80")
        assert bad.returncode != 0 and "impossible port range" in bad.stderr
        added = cli(home, "sg", "rule", "add", "web", "udp/53", "--from", "10.0.0.0/8")
        assert added.returncode == 0, added.stderr
        assert "in udp/53 10.0.0.0/8" in added.stdout
        info = json.loads(cli(home, "sg", "info", "web", "--json").stdout)
        assert [(r["protocol"], r["ports"]) for r in info["rules"]] == [
            ("tcp", "80"),
            ("tcp", "22"),
            ("udp", "53"),
        ]
        removed = cli(home, "sg", "rule", "remove", "web", info["rules"][0]["id"][:8])
        assert removed.returncode == 0, removed.stderr
        listed = cli(home, "sg", "list")
        assert listed.returncode == 0 and "web" in listed.stdout
        shown = cli(home, "sg", "info", "web")
        assert "udp/53" in shown.stdout and "tcp/80" not in shown.stdout
        nowhere = cli(home, "sg", "attach", "web", "ghost")
        assert nowhere.returncode != 0 and "vm 'ghost' not found" in nowhere.stderr
        gone = cli(home, "sg", "delete", "web")
        assert gone.returncode == 0 and "security group web deleted" in gone.stdout
    finally:
        daemons.stop(home)
        shutil.rmtree(home, ignore_errors=True)
