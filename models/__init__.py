"""PyTorch core of Taesar: data, SASRec, pretraining, bundles and contrastive decoding.

Nothing here imports web or queue code, and nothing here reads the environment.
"""
