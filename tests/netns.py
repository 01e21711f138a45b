"""Network namespaces for tests: made with a unique name, removed afterwards, and a way to run
a Python function inside one (a forked child that enters it and sends back the result)."""

from __future__ import annotations

import os
import pickle
import subprocess
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from pyroute2 import netns as pyroute2_netns  # type: ignore[import-untyped]

T = TypeVar("T")


class InNamespaceError(Exception):
    """An exception raised inside a namespace that could not travel back as itself."""


@contextmanager
def namespace(tag: str = "t") -> Iterator[str]:
    """A new network namespace, with its loopback up; deleted (with what is in it) after."""
    name = f"crt{tag}-{uuid.uuid4().hex[:8]}"
    pyroute2_netns.create(name)
    try:
        sh(name, "ip link set lo up")
        yield name
    finally:
        pyroute2_netns.remove(name)


def run_in(name: str, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a forked child that has entered namespace ``name``; its result, or
    its exception raised here."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(read)
        try:
            pyroute2_netns.setns(name)
            payload = pickle.dumps(("ok", fn(*args)))
        except BaseException as exc:  # everything goes back to the parent
            try:
                payload = pickle.dumps(("err", exc))
                pickle.loads(payload)
            except Exception:
                text = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
                payload = pickle.dumps(("err", InNamespaceError(text)))
        with os.fdopen(write, "wb") as out:
            out.write(payload)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as inp:
        data = inp.read()
    os.waitpid(pid, 0)
    kind, value = pickle.loads(data)
    if kind == "err":
        raise value
    return value  # type: ignore[no-any-return]


def sh(name: str, command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``command`` (a shell line) run inside namespace ``name``."""
    return subprocess.run(
        ["ip", "netns", "exec", name, "sh", "-c", command],
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
    )
