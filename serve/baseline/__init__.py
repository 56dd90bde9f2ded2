"""``serve baseline``: the training data's distribution, binned with the server's own code (README: Drift monitoring).

model (which tensors, ONNX hash, where the baseline lives, staleness), sources (reading
.npy/.npz/CSV/Parquet in chunks) and columns (which column feeds which feature), chunks (the
sources as one stream), runner (the model on the held-out sample), builder (the computation;
streamed for data larger than memory), command (the command line).
"""
