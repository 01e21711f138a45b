"""The service layer: every user operation on VMs and images, under an explicit state machine."""
