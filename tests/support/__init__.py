"""Test harness shared by the test tiers: a real Kubernetes control plane and its clients."""
