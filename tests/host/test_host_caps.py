"""Host capabilities: parsing QMP answers, choosing the accelerator, the cache, the real probe."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from corral.errors import HostError, InvalidInput
from corral.host import caps, facts, kvm
from corral.host.caps import MachineType
from corral.host.kvm import KvmVerdict

# Trimmed from QEMU 7.2's real answers.
MACHINES: list[dict[str, Any]] = [
    {"name": "none", "cpu-max": 1, "deprecated": False, "hotpluggable-cpus": False},
    {"name": "pc-q35-7.2", "alias": "q35", "cpu-max": 288, "deprecated": False},
    {"name": "microvm", "cpu-max": 288, "deprecated": False},
    {"name": "pc-i440fx-7.2", "alias": "pc", "is-default": True, "cpu-max": 255},
    {"name": "pc-i440fx-1.4", "cpu-max": 255, "deprecated": True},
]
ANSWERS: dict[str, dict[str, Any]] = {
    "version": {"return": {"qemu": {"major": 7, "minor": 2, "micro": 22}, "package": "x"}},
    "machines": {"return": MACHINES},
    "devices": {"return": [{"name": "virtio-blk-pci"}, {"name": "isa-serial"}]},
    "accels": {"return": [{"name": "tcg-accel"}, {"name": "kvm-accel"}, {"name": "accel"}]},
    "kvm": {"return": {"enabled": False, "present": True}},
    "sandbox": {"return": [{"option": "sandbox", "parameters": []}]},
    "cpus": {"return": [{"name": "qemu64"}, {"name": "host"}]},
}


# --- Parsing (pure) ---------------------------------------------------------------------------


def test_parse_machines_adds_aliases() -> None:
    machines = caps.parse_machines(MACHINES)
    assert machines["pc"] == MachineType(
        name="pc", alias="pc-i440fx-7.2", max_cpus=255, is_default=True
    )
    assert machines["pc-i440fx-7.2"] == MachineType(
        name="pc-i440fx-7.2", max_cpus=255, is_default=True
    )
    assert machines["q35"].alias == "pc-q35-7.2"
    assert machines["microvm"].alias is None
    assert machines["pc-i440fx-1.4"].deprecated
    assert set(machines) == {
        "none",
        "pc-q35-7.2",
        "q35",
        "microvm",
        "pc-i440fx-7.2",
        "pc",
        "pc-i440fx-1.4",
    }


def test_parse_probe() -> None:
    part = caps.parse_probe(ANSWERS)
    assert part["version"] == [7, 2, 22]
    assert part["devices"] == ["isa-serial", "virtio-blk-pci"]
    assert part["accelerators"] == ["kvm", "tcg"]  # the abstract "accel" is not one
    assert part["seccomp"] is True
    assert part["cpu_models"] == ["host", "qemu64"]
    assert json.loads(json.dumps(part)) == part  # it is what the cache stores


def test_parse_probe_without_sandbox_means_no_seccomp() -> None:
    answers = {
        **ANSWERS,
        "sandbox": {"error": {"class": "GenericError", "desc": "invalid option name: sandbox"}},
    }
    assert caps.parse_probe(answers)["seccomp"] is False


def test_parse_probe_without_a_required_answer_fails() -> None:
    answers = {**ANSWERS, "machines": {"error": {"class": "GenericError", "desc": "boom"}}}
    with pytest.raises(HostError, match="query-machines failed: boom"):
        caps.parse_probe(answers)


def test_parse_meminfo() -> None:
    info = caps.parse_meminfo(
        "MemTotal:       1000 kB\nMemAvailable:    500 kB\nHugePages_Total: 0\n"
    )
    assert info == {"MemTotal": 1024000, "MemAvailable": 512000, "HugePages_Total": 0}


# --- OVMF -------------------------------------------------------------------------------------


def _descriptor(code: str, vars_: str, features: list[str]) -> dict[str, Any]:
    return {
        "interface-types": ["uefi"],
        "mapping": {
            "device": "flash",
            "executable": {"filename": code, "format": "raw"},
            "nvram-template": {"filename": vars_, "format": "raw"},
        },
        "targets": [{"architecture": "x86_64", "machines": ["pc-q35-*"]}],
        "features": features,
    }


def test_pick_ovmf_skips_secure_boot_and_smm() -> None:
    descriptors = [
        _descriptor("/sb/CODE.fd", "/sb/VARS.fd", ["requires-smm", "secure-boot"]),
        _descriptor("/plain/CODE.fd", "/plain/VARS.fd", ["acpi-s3"]),
    ]
    assert caps.pick_ovmf(descriptors) == ("/plain/CODE.fd", "/plain/VARS.fd")
    assert caps.pick_ovmf(descriptors[:1]) is None


def test_find_ovmf_reads_descriptors_then_fallbacks(tmp_path: Path) -> None:
    etc, share, fw = tmp_path / "etc", tmp_path / "share", tmp_path / "fw"
    for d in (etc, share, fw):
        d.mkdir()
    code, vars_ = fw / "CODE.fd", fw / "VARS.fd"
    code.write_bytes(b"")
    vars_.write_bytes(b"")
    # A descriptor naming a missing file is passed over; one in etc overrides share's.
    (share / "50-a.json").write_text(json.dumps(_descriptor("/missing.fd", "/missing", [])))
    (share / "60-b.json").write_text(json.dumps(_descriptor(str(code), str(vars_), [])))
    (etc / "60-b.json").write_text("not json")
    found = caps.find_ovmf((str(etc), str(share)), fallbacks=())
    assert found == (None, None)  # etc's broken 60-b.json shadows share's good one
    (etc / "60-b.json").unlink()
    assert caps.find_ovmf((str(etc), str(share)), fallbacks=()) == (str(code), str(vars_))
    assert caps.find_ovmf((), fallbacks=((str(code), None),)) == (str(code), None)
    assert caps.find_ovmf((), fallbacks=()) == (None, None)


# --- Finding QEMU -----------------------------------------------------------------------------


def _script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def test_find_qemu_honours_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _script(tmp_path / "my-qemu", "exit 0")
    monkeypatch.setenv(caps.QEMU_ENV, fake)
    assert caps.find_qemu() == fake
    monkeypatch.setenv(caps.QEMU_ENV, str(tmp_path / "missing"))
    with pytest.raises(HostError, match="CORRAL_QEMU"):
        caps.find_qemu()


def test_find_qemu_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(caps.QEMU_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(facts, "QEMU_FALLBACKS", (str(tmp_path / "qemu-kvm"),))
    with pytest.raises(HostError, match="apt-get install qemu-system-x86"):
        caps.find_qemu()


def test_a_hung_qemu_is_killed_at_the_deadline(tmp_path: Path) -> None:
    fake = _script(tmp_path / "hang", "exec sleep 60")
    with pytest.raises(HostError, match=r"did not answer its capability probe within 0\.5 s"):
        caps.query_qemu(fake, timeout=0.5)


def test_a_qemu_that_fails_reports_its_stderr(tmp_path: Path) -> None:
    fake = _script(tmp_path / "bad", "echo 'qemu: unsupported machine' >&2; exit 1")
    with pytest.raises(HostError, match="unsupported machine"):
        caps.query_qemu(fake)


# --- Accelerator choice (pure) ----------------------------------------------------------------

BOTH = frozenset({"kvm", "tcg"})
PASSED = KvmVerdict(True, "ok in 0.1 s", 0.1)
FAILED = KvmVerdict(False, "KVM self-test failed: loop did not finish within 3 s", 3.0)


@pytest.mark.parametrize(
    ("override", "accelerators", "problem", "verdict", "expected"),
    [
        (None, BOTH, None, PASSED, ("kvm", "")),
        (None, BOTH, None, FAILED, ("tcg", FAILED.reason)),
        (None, BOTH, "/dev/kvm missing", None, ("tcg", "/dev/kvm missing")),
        (None, frozenset({"tcg"}), None, None, ("tcg", "this QEMU was built without KVM support")),
        ("tcg", BOTH, None, PASSED, ("tcg", "forced by CORRAL_ACCEL=tcg")),
        ("kvm", BOTH, "/dev/kvm missing", FAILED, ("kvm", "")),
        (None, BOTH, None, None, ("tcg", "KVM self-test did not run")),
    ],
)
def test_decide_accel(
    override: Any,
    accelerators: frozenset[str],
    problem: str | None,
    verdict: KvmVerdict | None,
    expected: tuple[str, str],
) -> None:
    assert caps.decide_accel(override, accelerators, problem, verdict) == expected


def test_decide_accel_without_tcg_says_nothing_can_run() -> None:
    accel, reason = caps.decide_accel(None, frozenset({"kvm"}), None, FAILED)
    assert accel == "tcg"
    assert reason.endswith("no TCG either, so it cannot run guests")


@pytest.mark.parametrize(
    ("value", "expected"), [("", None), ("auto", None), ("KVM", "kvm"), ("tcg", "tcg")]
)
def test_accel_override(monkeypatch: pytest.MonkeyPatch, value: str, expected: str | None) -> None:
    monkeypatch.setenv(caps.ACCEL_ENV, value)
    assert caps.accel_override() == expected


def test_accel_override_rejects_unknown_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(caps.ACCEL_ENV, "xen")
    with pytest.raises(InvalidInput, match="must be kvm, tcg or auto"):
        caps.accel_override()


# --- The cache, with QEMU and the self-test replaced by counters ------------------------------


class Fakes:
    """Counts QEMU starts; lets a test set the boot id, /dev/kvm's state and the verdict."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.queries = 0
        self.tests = 0
        self.boot = "boot-1"
        self.device_problem: str | None = None
        self.verdict = PASSED
        monkeypatch.setattr(caps, "query_qemu", self._query)
        monkeypatch.setattr(caps, "boot_id", lambda: self.boot)
        monkeypatch.setattr(kvm, "self_test", self._self_test)
        monkeypatch.setattr(kvm, "dev_kvm_problem", lambda: self.device_problem)
        monkeypatch.delenv(caps.ACCEL_ENV, raising=False)

    def _query(self, binary: str, timeout: float = 0) -> dict[str, Any]:
        self.queries += 1
        return caps.parse_probe(ANSWERS)

    def _self_test(self, binary: str, cpu: str = "") -> KvmVerdict:
        self.tests += 1
        return self.verdict


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Fakes:
    return Fakes(monkeypatch)


@pytest.fixture
def binary(tmp_path: Path) -> Path:
    path = tmp_path / "qemu-system-x86_64"
    path.write_bytes(b"not really qemu")
    return path


def test_second_probe_uses_the_cache(fakes: Fakes, binary: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = caps.probe(str(binary), cache)
    assert (fakes.queries, fakes.tests) == (1, 1)
    assert first.accel == "kvm"
    assert first.machines["pc"].alias == "pc-i440fx-7.2"
    [cache_file] = cache.iterdir()
    written = cache_file.stat().st_mtime_ns
    second = caps.probe(str(binary), cache)
    assert (fakes.queries, fakes.tests) == (1, 1)
    assert second == first
    assert cache_file.stat().st_mtime_ns == written
    assert [p.name for p in cache.iterdir()] == [cache_file.name]  # no temporary files left


def test_a_changed_binary_is_probed_again(fakes: Fakes, binary: Path, tmp_path: Path) -> None:
    caps.probe(str(binary), tmp_path)
    st = binary.stat()
    os.utime(binary, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    caps.probe(str(binary), tmp_path)
    assert (fakes.queries, fakes.tests) == (2, 2)
    binary.write_bytes(b"a different size")
    caps.probe(str(binary), tmp_path)
    assert fakes.queries == 3


def test_a_new_boot_reruns_only_the_self_test(fakes: Fakes, binary: Path, tmp_path: Path) -> None:
    caps.probe(str(binary), tmp_path)
    fakes.boot = "boot-2"
    fakes.verdict = FAILED
    after = caps.probe(str(binary), tmp_path)
    assert (fakes.queries, fakes.tests) == (1, 2)
    assert after.accel == "tcg"
    assert after.kvm_reason == FAILED.reason


def test_a_changed_dev_kvm_invalidates_the_verdict(
    fakes: Fakes, binary: Path, tmp_path: Path
) -> None:
    caps.probe(str(binary), tmp_path)
    fakes.device_problem = "no permission on /dev/kvm (add yourself to group kvm)"
    denied = caps.probe(str(binary), tmp_path)
    assert denied.accel == "tcg"
    assert denied.kvm_reason == fakes.device_problem
    assert fakes.tests == 1  # no test without a usable device
    fakes.device_problem = None  # back as it was when the cached verdict was made
    assert caps.probe(str(binary), tmp_path).accel == "kvm"
    assert fakes.tests == 1


def test_refresh_ignores_the_cache(fakes: Fakes, binary: Path, tmp_path: Path) -> None:
    caps.probe(str(binary), tmp_path)
    caps.probe(str(binary), tmp_path, refresh=True)
    assert (fakes.queries, fakes.tests) == (2, 2)


def test_a_broken_cache_file_is_replaced(fakes: Fakes, binary: Path, tmp_path: Path) -> None:
    caps.probe(str(binary), tmp_path)
    [cache_file] = tmp_path.glob("hostcaps-*.json")
    cache_file.write_text("{truncated")
    caps.probe(str(binary), tmp_path)
    assert fakes.queries == 2
    assert json.loads(cache_file.read_text())["format"] == caps.CACHE_FORMAT


def test_a_cache_with_a_wrong_shape_is_replaced(fakes: Fakes, binary: Path, tmp_path: Path) -> None:
    first = caps.probe(str(binary), tmp_path)
    [cache_file] = tmp_path.glob("hostcaps-*.json")
    data = json.loads(cache_file.read_text())
    del data["qemu"]["version"]
    data["qemu"]["machines"]["pc"] = {"name": "pc"}  # max_cpus missing
    cache_file.write_text(json.dumps(data))
    assert caps.probe(str(binary), tmp_path) == first
    assert fakes.queries == 2


def test_overrides_apply_on_top_of_the_cache(
    fakes: Fakes, binary: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(caps.ACCEL_ENV, "tcg")
    forced = caps.probe(str(binary), tmp_path)
    assert (forced.accel, forced.kvm_reason) == ("tcg", "forced by CORRAL_ACCEL=tcg")
    assert fakes.tests == 0  # forcing TCG never runs the test
    fakes.verdict = FAILED
    monkeypatch.setenv(caps.ACCEL_ENV, "kvm")
    assert caps.probe(str(binary), tmp_path).accel == "kvm"
    assert fakes.tests == 0
    monkeypatch.delenv(caps.ACCEL_ENV)
    assert caps.probe(str(binary), tmp_path).accel == "tcg"
    assert fakes.tests == 1


def test_an_unwritable_cache_still_probes(fakes: Fakes, binary: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = caps.probe(str(binary), blocker / "cache")  # cannot create a directory in a file
    assert result.accel == "kvm"


# --- The real binary --------------------------------------------------------------------------


@pytest.mark.tcg
def test_probe_the_real_binary(
    qemu_binary: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(caps.ACCEL_ENV, "tcg")  # this test is about QMP, not the KVM self-test
    found = caps.probe(qemu_binary, tmp_path)
    assert found.qemu_version >= (7, 0, 0)
    assert {"pc", "q35"} <= set(found.machines)
    assert found.machines["pc"].alias is not None
    assert found.machines[found.machines["pc"].alias].is_default
    assert {"virtio-blk-pci", "isa-serial", "virtio-net-pci", "isa-debug-exit"} <= found.devices
    assert "tcg" in found.accelerators
    assert {"qemu64", "host"} <= found.cpu_models
    assert found.host_cpus >= 1
    assert found.host_memory > 0
    assert found.accel == "tcg"

    [cache_file] = tmp_path.glob("hostcaps-*.json")
    written = cache_file.stat().st_mtime_ns

    def no_qemu(*args: object, **kwargs: object) -> dict[str, Any]:
        raise AssertionError("a cached probe must not start QEMU")

    monkeypatch.setattr(caps, "query_qemu", no_qemu)
    assert caps.probe(qemu_binary, tmp_path) == found
    assert cache_file.stat().st_mtime_ns == written


@pytest.mark.tcg
@pytest.mark.slow
def test_probe_with_the_self_test(
    qemu_binary: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(caps.ACCEL_ENV, raising=False)
    found = caps.probe(qemu_binary, tmp_path)
    if found.accel == "kvm":
        assert found.kvm_reason == ""
    else:
        assert found.kvm_reason

    def no_test(*args: object, **kwargs: object) -> KvmVerdict:
        raise AssertionError("a cached verdict must not run the self-test again")

    monkeypatch.setattr(kvm, "self_test", no_test)
    assert caps.probe(qemu_binary, tmp_path) == found
