"""otlib.kernels: Triton kernels of the optical numerics (imported lazily by otlib.ops for CUDA tensors).

Set TRITON_INTERPRET=1 before importing these modules to run them on CPU tensors (tests).
"""
