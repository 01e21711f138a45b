"""corrald's REST API: FastAPI under ``/api/v1``.

- :mod:`~corral.api.app`: the application factory and the one place where a
  :class:`~corral.errors.CorralError` becomes an HTTP answer;
- :mod:`~corral.api.schemas`: wire types, split by verb (``*Read`` for answers);
- :mod:`~corral.api.deps`: the dependencies every endpoint takes (the state directory);
- :mod:`~corral.api.routers`: one router per resource.
"""
