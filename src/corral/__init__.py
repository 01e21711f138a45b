"""corral: a virtualization manager for QEMU/KVM hosts."""

__version__ = "0.1.0"
