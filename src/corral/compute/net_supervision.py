"""Keeping the host's networking as the database says while corrald runs.

On start-up corrald makes the host match its networks and ports once (bridges, taps and
dnsmasq processes kept where they are right, corral's nftables table replaced in one
transaction, so running guests and their connections go on), then again every few seconds:
a dnsmasq that died is started again, a tap or bridge someone removed is made again. Nothing
is done while there are no networks, or when ``[network] host`` is off.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import select

from corral.compute.context import Corral
from corral.compute.network_host import host_enabled, host_lock, sync_host
from corral.errors import CorralError
from corral.store.models import NetworkRow

#: Seconds between two checks of the host.
INTERVAL = 5.0

log = logging.getLogger(__name__)


def sync_once(ctx: Corral) -> bool:
    """Make the host match the database once, if there are networks; whether it did.

    :raise CorralError: the host could not be made so.
    """
    if not host_enabled(ctx):
        return False
    with ctx.db.session() as session:
        if session.scalars(select(NetworkRow.id).limit(1)).first() is None:
            return False
    with host_lock(ctx):
        sync_host(ctx)
    return True


class Supervisor:
    """A daemon thread that runs :func:`sync_once` now and every ``interval`` seconds until
    :meth:`stop`; a failure is logged and tried again at the next round."""

    def __init__(self, ctx: Corral, interval: float = INTERVAL) -> None:
        self.ctx = ctx
        self.interval = interval
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="corral-networks", daemon=True)

    def start(self) -> None:
        """Sync once (a failure is logged), then go on in the thread."""
        self._round()
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """End the thread (after the round it may be in)."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            self._round()

    def _round(self) -> None:
        try:
            sync_once(self.ctx)
        except CorralError as exc:
            log.warning("virtual networks: the host does not match the database: %s", exc)
