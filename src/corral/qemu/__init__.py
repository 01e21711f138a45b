"""QEMU: command lines (pure), processes, the monitor vocabulary, and qemu-img."""
