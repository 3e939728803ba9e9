"""The import path the CPU decode kernels had before they moved down to the model layer
(models/decode_kernels.py), so that `checkpoint.load` can apply them to the models it returns.
The same names, for code written against this path."""

from scratchllm.models.decode_kernels import (DecodeLinear, matrix_vector_kernels, optimize_for_decoding,
                                              plain_linears, split_product)

__all__ = ["DecodeLinear", "matrix_vector_kernels", "optimize_for_decoding", "plain_linears", "split_product"]
