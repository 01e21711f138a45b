"""A typed client of corrald's API, mirroring its resources (as Incus's client package does).

:class:`~corral.client.api.Client` talks to a daemon over its UNIX socket or over TCP with a
token; answers come back as the API's own wire types (:mod:`corral.api.schemas`), and error
answers as the :class:`~corral.errors.CorralError` the daemon raised.
"""

from corral.client.api import Client

__all__ = ["Client"]
