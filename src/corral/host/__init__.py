"""What this host and its QEMU can do."""
