"""Post-training compression stages (prune, low-rank, quantize, distill) and their outputs.

`run_stages` runs `compression.stages` after training; `load_stage` loads any stage's output
for inference; `validate_compression` checks the chain before training starts.
"""

from lmjob_trainer.compression.load import load_stage
from lmjob_trainer.compression.validate import check_compression, validate_compression

__all__ = ["check_compression", "load_stage", "validate_compression"]
