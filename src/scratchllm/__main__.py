"""`python -m scratchllm` (and `torchrun -m scratchllm`) runs the command-line interface."""

from scratchllm.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
