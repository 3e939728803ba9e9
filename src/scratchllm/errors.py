"""The one exception type scratchllm raises for bad input.

Library code raises `ScratchLLMError` with a message that names the input (file, field, value) and
what was expected; the CLI prints that message as one line on stderr and exits with code 2.
"""


class ScratchLLMError(Exception):
    """Bad input or state the user can fix: a missing file, a wrong config key, a bad parameter."""
