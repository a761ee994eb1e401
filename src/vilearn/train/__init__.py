"""The diffusion trainer: data, the denoiser wrapper, validation and the training loop.

The model-agnostic machinery it shares with the VAE trainer lives in ``vilearn.engine``.
"""
