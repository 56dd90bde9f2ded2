"""``serve baseline``: the training data's distribution, binned with the server's own code (README: Drift monitoring).

model (which tensors, ONNX hash, where the baseline lives, staleness), sources (reading
.npy/.npz/CSV/Parquet in chunks, column mapping), builder (the computation), command
(the command line).
"""
