"""The ``corral`` command line: virsh-like verbs over :mod:`corral.compute`."""
