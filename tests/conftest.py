"""Test-wide settings. Triton kernels run under the interpreter on CPU tensors; the variable
must be set before triton is first imported, hence here."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
