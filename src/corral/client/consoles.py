"""Console endpoints: the serial console and the VNC display as websockets, a VNC ticket."""

from __future__ import annotations

from typing import TYPE_CHECKING

from corral.api.schemas.consoles import VncPasswordCreate, VncPasswordRead, VncTicketRead
from corral.client.transport import PREFIX, ApiError, Transport, error_of, segment
from corral.errors import HostError

if TYPE_CHECKING:
    from websockets.sync.client import ClientConnection

#: Seconds to wait for the daemon to accept a websocket.
OPEN_TIMEOUT = 30.0


class ConsolesApi(Transport):
    def vnc_ticket(self, name: str) -> VncTicketRead:
        """A single-use ticket, valid for a minute, that opens the VM's VNC websocket."""
        return self._post(f"/vms/{segment(name)}/vnc/token", VncTicketRead)

    def set_vnc_password(
        self, name: str, password: str, expires: int | None = None
    ) -> VncPasswordRead:
        """Make ``password`` the VM's VNC password (``expires``: seconds, running VMs only)."""
        body = VncPasswordCreate(password=password, expires=expires)
        return self._post(
            f"/vms/{segment(name)}/vnc/password",
            VncPasswordRead,
            body.model_dump(exclude_none=True),
        )

    def clear_vnc_password(self, name: str) -> VncPasswordRead:
        """Remove the VM's VNC password and password auth (stopped VMs only)."""
        cleared = self._delete(f"/vms/{segment(name)}/vnc/password", VncPasswordRead)
        assert cleared is not None
        return cleared

    def open_console(self, name: str, text: bool = False) -> ClientConnection:
        """The VM's serial console as a websocket (binary frames both ways), or with ``text``
        the terminal of its ``curses`` display (keys as binary frames, the window's size as a
        text frame ``{"rows": R, "columns": C}``); close it to detach.

        :raise ApiError: the daemon refused (no such VM, not running, not the caller's, ...).
        :raise HostError: the daemon cannot be reached.
        """
        kind = "?kind=text" if text else ""
        return self._websocket(f"/vms/{segment(name)}/console{kind}")

    def open_vnc(self, name: str) -> ClientConnection:
        """The VM's VNC display as a websocket carrying the RFB stream (a new ticket each time).

        :raise ApiError: the daemon refused.
        :raise HostError: the daemon cannot be reached.
        """
        ticket = self.vnc_ticket(name)
        return self._websocket(ticket.path.removeprefix(PREFIX), authenticated=False)

    def _websocket(self, path: str, authenticated: bool = True) -> ClientConnection:
        """A websocket to ``path`` (under ``/api/v1``), over the daemon's UNIX socket or TCP."""
        from websockets.exceptions import InvalidHandshake, InvalidStatus
        from websockets.sync.client import connect, unix_connect

        base = self._http.base_url
        token = self._http.headers.get("authorization")
        headers = {"Authorization": token} if token and authenticated else None
        local = base.host == "corrald" and not base.port
        scheme = "wss" if base.scheme == "https" else "ws"
        uri = f"{scheme}://{base.netloc.decode()}{PREFIX}{path}"
        try:
            if local:
                return unix_connect(
                    self.address,
                    uri,
                    additional_headers=headers,
                    open_timeout=OPEN_TIMEOUT,
                    max_size=None,
                )
            return connect(
                uri, additional_headers=headers, open_timeout=OPEN_TIMEOUT, max_size=None
            )
        except InvalidStatus as exc:
            raise _refusal(exc.response.status_code, bytes(exc.response.body or b"")) from None
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise HostError(f"cannot reach corrald on {self.address}: {exc}") from exc


def _refusal(status: int, body: bytes) -> ApiError:
    """The error a refused websocket handshake stands for."""
    import httpx

    return error_of(httpx.Response(status, content=body))
