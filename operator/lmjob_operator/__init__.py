"""lmjob's Kubernetes operator (kopf): LargeModelJob → elastic torchrun worker pods.

Never imports torch. Entry point: `python -m lmjob_operator`.
"""
