"""Numeric constants that a Triton kernel and its PyTorch reference must share: defined once,
here, so both (and the code that inverts them) agree by construction."""
COSINE_EPS = 1.0e-8    # guards the norms of all-zero rows, as torch.nn.functional.cosine_similarity
NORM_PIX_EPS = 1.0e-6  # MAE's per-patch target normalisation: (t - mean) / sqrt(var + eps)
