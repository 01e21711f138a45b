"""Golden tests of :func:`corral.qemu.argv.build_argv`.

Each ``tests/golden/argv/<case>.json`` holds ``{"spec": ..., "caps": ..., "paths": ...}``: a VM
spec, overrides of the baseline host capabilities below, and overrides of the baseline paths
(``root``, any :class:`VmPaths` field, and ``disks``: chains by disk name). ``<case>.args`` is
the expected command line, one option and its value per line, shell-quoted, so it reads as a
diff in review and pastes into a shell. ``pytest --regen-golden`` rewrites the ``.args`` files.
"""

from __future__ import annotations

import builtins
import dataclasses
import io
import json
import os
import re
import shlex
import socket
import subprocess
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import pytest
from pydantic import BaseModel

from corral.host.caps import HostCaps
from corral.qemu.argv import build_argv
from corral.qemu.paths import DiskFiles, ImageLayer, VmPaths
from corral.spec import parse
from corral.spec.vm import VmSpec

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "argv"
CASES = sorted(p.stem for p in GOLDEN.glob("*.json"))

#: Options that take no value; every other option takes exactly one.
FLAGS = frozenset({"-nodefaults", "-no-user-config"})
#: QEMU's rule for node names and ids.
QEMU_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,30}$")

#: A Debian 12 host with QEMU 7.2, OVMF installed and a KVM that failed its self-test.
BASE_CAPS: dict[str, Any] = {
    "qemu_binary": "/usr/bin/qemu-system-x86_64",
    "qemu_version": [7, 2, 22],
    "machines": {
        "pc": {"name": "pc", "alias": "pc-i440fx-7.2", "max_cpus": 255, "is_default": True},
        "pc-i440fx-7.2": {"name": "pc-i440fx-7.2", "max_cpus": 255},
        "q35": {"name": "q35", "alias": "pc-q35-7.2", "max_cpus": 288},
        "pc-q35-7.2": {"name": "pc-q35-7.2", "max_cpus": 288},
        "microvm": {"name": "microvm", "max_cpus": 288},
    },
    "devices": [
        "VGA",
        "e1000",
        "isa-serial",
        "virtio-blk-device",
        "virtio-blk-pci",
        "virtio-gpu-device",
        "virtio-net-device",
        "virtio-net-pci",
        "virtio-vga",
    ],
    "accelerators": ["kvm", "tcg"],
    "accel": "tcg",
    "kvm_reason": "KVM self-test did not reach 64-bit mode",
    "seccomp": True,
    "ovmf_code": "/usr/share/OVMF/OVMF_CODE_4M.fd",
    "host_cpus": 2,
    "host_memory": 24 * 1024**3,
    "vhost_net": False,
}


@dataclasses.dataclass(frozen=True)
class Case:
    """One golden case, loaded."""

    name: str
    spec: VmSpec
    caps: HostCaps
    paths: VmPaths


def _layer(data: dict[str, Any]) -> ImageLayer:
    return ImageLayer(path=data["path"], format=data["format"])


def default_paths(spec: VmSpec, root: str | None = None) -> VmPaths:
    """Baseline paths: ``/var/lib/corral/vms/<name>/``; a clone's image one layer below it."""
    root = root or f"/var/lib/corral/vms/{spec.name}"
    disks = {
        disk.name: DiskFiles(
            top=ImageLayer(f"{root}/{disk.name}.qcow2", "qcow2"),
            backing=(ImageLayer(f"/var/lib/corral/images/{disk.image}/disk.qcow2", "qcow2"),)
            if disk.image
            else (),
        )
        for disk in spec.disks
    }
    return VmPaths.for_dir(root, disks)


def load_case(name: str) -> Case:
    """Read ``<name>.json`` into inputs for :func:`build_argv`."""
    data = json.loads((GOLDEN / f"{name}.json").read_text())
    assert set(data) <= {"note", "spec", "caps", "paths"}, f"{name}: unknown keys"
    assert "uuid" in data["spec"], f"{name}: a golden spec must fix its uuid"
    spec = parse(VmSpec, data["spec"])
    caps = HostCaps.model_validate({**BASE_CAPS, **data.get("caps", {})})
    over = dict(data.get("paths", {}))
    paths = default_paths(spec, over.pop("root", None))
    disks = dict(paths.disks)
    for disk, chain in over.pop("disks", {}).items():
        disks[disk] = DiskFiles(
            top=_layer(chain["top"]), backing=tuple(_layer(x) for x in chain.get("backing", ()))
        )
    volumes = {dev: _layer(layer) for dev, layer in over.pop("volumes", {}).items()}
    paths = dataclasses.replace(paths, disks=disks, volumes=volumes, **over)
    return Case(name, spec, caps, paths)


def render(argv: list[str]) -> str:
    """One option and its value per line, shell-quoted; the binary alone on the first line."""
    lines = [shlex.quote(argv[0])]
    rest = iter(argv[1:])
    for option in rest:
        assert option.startswith("-"), f"{option!r} is where an option should be"
        if option in FLAGS:
            lines.append(option)
        else:
            lines.append(f"{option} {shlex.quote(next(rest))}")
    return "\n".join(lines) + "\n"


def options(argv: list[str], name: str) -> list[str]:
    """The values of every ``name`` option, in order."""
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == name and i > 0]


@pytest.mark.parametrize("name", CASES)
def test_golden(name: str, request: pytest.FixtureRequest) -> None:
    case = load_case(name)
    text = render(build_argv(case.spec, case.caps, case.paths))
    expected = GOLDEN / f"{name}.args"
    if request.config.getoption("--regen-golden"):
        expected.write_text(text)
        return
    assert expected.exists(), f"{expected} is missing; run pytest --regen-golden and review it"
    assert text == expected.read_text()


def test_enough_cases_and_no_stale_files() -> None:
    assert len(CASES) >= 14
    assert sorted(p.stem for p in GOLDEN.glob("*.args")) == CASES


@pytest.mark.parametrize("name", CASES)
def test_render_round_trips(name: str) -> None:
    """The golden rendering loses nothing: splitting its lines gives back the argv."""
    case = load_case(name)
    argv = build_argv(case.spec, case.caps, case.paths)
    assert [tok for line in render(argv).splitlines() for tok in shlex.split(line)] == argv


@pytest.mark.parametrize("name", CASES)
def test_deterministic(name: str) -> None:
    case = load_case(name)
    first = build_argv(case.spec, case.caps, case.paths)
    assert build_argv(case.spec, case.caps, case.paths) == first
    again = load_case(name)
    spec = again.spec.model_copy(deep=True)
    caps = again.caps.model_copy(update={"devices": frozenset(sorted(again.caps.devices))})
    assert build_argv(spec, caps, again.paths) == first


def _refuse(*_args: object, **_kwargs: object) -> Any:
    raise AssertionError("build_argv did I/O")


class _NoEnviron(dict[str, str]):
    def __getitem__(self, key: str) -> str:
        raise AssertionError(f"build_argv read ${key}")

    def get(self, key: str, default: Any = None) -> Any:
        raise AssertionError(f"build_argv read ${key}")


@pytest.mark.parametrize("name", CASES)
def test_no_io(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """No file, environment, clock, process or socket is touched while building."""
    case = load_case(name)
    expected = build_argv(case.spec, case.caps, case.paths)
    for module, attr in [
        (builtins, "open"),
        (io, "open"),
        (os, "open"),
        (os, "stat"),
        (os, "lstat"),
        (os, "listdir"),
        (os, "scandir"),
        (os, "access"),
        (os, "getcwd"),
        (time, "time"),
        (time, "monotonic"),
        (subprocess, "Popen"),
        (socket, "socket"),
    ]:
        monkeypatch.setattr(module, attr, _refuse)
    monkeypatch.setattr(os, "environ", _NoEnviron())
    try:
        argv = build_argv(case.spec, case.caps, case.paths)
    finally:
        monkeypatch.undo()
    assert argv == expected


@pytest.mark.parametrize("name", CASES)
def test_node_graph_is_explicit(name: str) -> None:
    """Every node names its driver; every reference points at a node defined before it;
    every qcow2 node names its backing (or null); node names and ids follow QEMU's rules."""
    case = load_case(name)
    argv = build_argv(case.spec, case.caps, case.paths)
    nodes: dict[str, dict[str, Any]] = {}
    for raw in options(argv, "-blockdev"):
        node = json.loads(raw)
        assert node["driver"] in {"file", "qcow2", "raw"}
        assert QEMU_ID.match(node["node-name"]), node["node-name"]
        assert node["node-name"] not in nodes
        if node["driver"] != "file":
            assert node["file"] in nodes
            assert nodes[node["file"]]["driver"] == "file"
            assert node["read-only"] or not nodes[node["file"]]["read-only"]
        if node["driver"] == "qcow2":
            assert "backing" in node, "QEMU would follow the header's backing path"
            if node["backing"] is not None:
                assert node["backing"] in nodes
                assert nodes[node["backing"]]["read-only"] is True
        nodes[node["node-name"]] = node
    ids = [json.loads(raw)["id"] for raw in options(argv, "-device")]
    ids += [json.loads(raw)["id"] for raw in options(argv, "-netdev")]
    assert len(ids) == len(set(ids))
    assert all(QEMU_ID.match(i) for i in ids)
    drives = [json.loads(raw).get("drive") for raw in options(argv, "-device")]
    assert {d for d in drives if d} <= set(nodes)
    medium = case.spec.cdrom is not None and case.spec.cdrom.path is not None
    volumes = len(case.paths.volumes)
    assert len([d for d in drives if d]) == len(case.spec.disks) + case.spec.seed + medium + volumes


# -- checkprops: every field of the spec is set to something other than its default somewhere


def _types(annotation: Any) -> Iterator[Any]:
    yield annotation
    for arg in get_args(annotation):
        yield from _types(arg)


def spec_models() -> set[type[BaseModel]]:
    """VmSpec and every model nested in it, found from the annotations."""
    found: set[type[BaseModel]] = set()
    todo: list[type[BaseModel]] = [VmSpec]
    while todo:
        model = todo.pop()
        if model in found:
            continue
        found.add(model)
        for info in model.model_fields.values():
            for t in _types(info.annotation):
                if isinstance(t, type) and issubclass(t, BaseModel):
                    todo.append(t)
    return found


def _choices(annotation: Any) -> set[object] | None:
    """The values a field can take when they are few (a Literal or a bool), else None."""
    if annotation is bool:
        return {True, False}
    if get_origin(annotation) is Literal:
        return set(get_args(annotation))
    if get_origin(annotation) in (Union, types.UnionType):
        parts = [_choices(a) for a in get_args(annotation) if a is not type(None)]
        if len(parts) == 1:
            return parts[0]
    return None


def _walk(obj: BaseModel, exercised: set[str], seen: dict[str, set[object]]) -> None:
    model = type(obj)
    for name, info in model.model_fields.items():
        key = f"{model.__name__}.{name}"
        value = getattr(obj, name)
        seen.setdefault(key, set()).add(value if _choices(info.annotation) else None)
        choices = _choices(info.annotation)
        only_one = choices is not None and len(choices) == 1
        explicit = name in obj.model_fields_set
        if (
            info.is_required()
            or (explicit and (info.default_factory is not None or only_one))
            or (info.default_factory is None and value != info.default)
        ):
            exercised.add(key)
        for child in value if isinstance(value, tuple) else (value,):
            if isinstance(child, BaseModel):
                _walk(child, exercised, seen)


def _coverage() -> tuple[set[str], dict[str, set[object]]]:
    exercised: set[str] = set()
    seen: dict[str, set[object]] = {}
    for name in CASES:
        _walk(load_case(name).spec, exercised, seen)
    return exercised, seen


def test_spec_models_found() -> None:
    names = {m.__name__ for m in spec_models()}
    assert {
        "VmSpec",
        "DiskSpec",
        "NicSpec",
        "PortForward",
        "BootSpec",
        "SerialSpec",
        "VncSpec",
    } <= names


def test_every_field_exercised() -> None:
    """Like virt-manager's checkprops: a field no golden case sets is a field nobody tested."""
    everything = {f"{m.__name__}.{f}" for m in spec_models() for f in m.model_fields}
    exercised, _ = _coverage()
    missing = sorted(everything - exercised)
    assert not missing, f"no golden case sets these fields to a non-default value: {missing}"


def test_every_choice_exercised() -> None:
    """Every value of every Literal or bool field appears in some golden case."""
    _, seen = _coverage()
    missing = []
    for model in spec_models():
        for name, info in model.model_fields.items():
            choices = _choices(info.annotation)
            if choices is None:
                continue
            key = f"{model.__name__}.{name}"
            missing += [f"{key}={c!r}" for c in sorted(choices - seen.get(key, set()), key=str)]
    assert not missing, f"no golden case uses: {missing}"
