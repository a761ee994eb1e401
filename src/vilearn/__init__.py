"""ViLearn: single-image-to-3D VecSet latent diffusion with Visibility Learning (CVPR 2026)."""

__version__ = "0.1.0"
