"""Tests of the cloud-init NoCloud seed: rendering, the ISO, and cloud-init's own checks."""
