"""cloud-init's NoCloud data source: what corral tells a new instance, and the seed it reads.

- :mod:`~corral.cloudinit.render` (pure): ``meta-data``, ``user-data`` and ``network-config``.
- :mod:`~corral.cloudinit.seed`: the ``cidata`` ISO 9660 volume that carries them (pycdlib).
- :mod:`~corral.cloudinit.schema`: user-data checked by Debian's own ``cloud-init schema``.
"""
