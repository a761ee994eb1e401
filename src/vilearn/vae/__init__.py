"""The VecSet VAE: model, Hunyuan3D-2 compatible loading, volume decoding and mesh extraction.

Public API (shapes: B batch, P surface points, N tokens, C = embed_dim, W = width, M queries):

- ``VecSetVAE(VAEConfig)``; ``preset("tiny" | "hunyuan3d-vae-v2-0" | "hunyuan3d-vae-v2-1" |
  "hunyuan3d-vae-v2-0-withencoder")`` (the last two: packaged released configs)
- ``vae.encode(surface (B, P, 3 + point_feats), num_tokens=N | anchor_index=(B, N)) -> Encoded``
  (``.posterior.mean / .logvar`` (B, N, C), ``.anchors`` (B, N, 3), ``.anchor_index`` (B, N))
- ``vae.decode(latents (B, N, C)) -> tokens (B, N, W)`` (post-KL -> transformer)
- ``vae.query(points (B, M, 3), tokens, key_mask=None) -> logits (B, M)``
- Visibility Grouping: ``vae.geo_decoder.attention_queries(points) -> (B, H, M, d)``,
  ``vae.geo_decoder.attention_keys(tokens) -> (B, H, N, d)``,
  ``vae.geo_decoder.attention_probs(points, tokens) -> (B, M, N)`` (softmax, head mean)
- ``load_vae(path)`` (ours or Hunyuan3D-2 layouts), ``save_vae(folder, vae)``,
  ``resolve_vae(run | checkpoint | weights)``
- which VAE made a set of latents: ``vilearn.vae.identity`` (``identify_vae``,
  ``load_identified``, ``find_latents``; latents live in ``DATASET/latents/<name>-<hash8>/``)
- ``latents_to_mesh(vae, latents (N, C)) -> (Mesh, VolumeGrid)``; lower level in
  ``vilearn.vae.volume`` (``dense_grid``, ``hierarchical_grid``, fields) and
  ``vilearn.vae.surface`` (``marching_cubes``, ``export_mesh``)

Compatibility with Hunyuan3D (what differs, on purpose):

- hy3dgen 2.0.2 ``ShapeVAE``: identical decoder parameters and maths (tested to < 1e-5);
  drop-path, the KV cache and the FlashVDM attention processors are not reproduced. Our
  ``marching_cubes`` maps grid index i to ``i * 2b / R - b``; hy3dgen divides by R + 1.
- Hunyuan3D-2.1 ``hy3dshape`` encoder: same names (``encoder.input_proj``,
  ``encoder.cross_attn``, ``encoder.self_attn``, ``encoder.ln_post``, ``pre_kl``) and maths:
  a released-layout folder (config.yaml + model.fp16.ckpt) loads strictly and encodes and
  decodes as hy3dshape does on the same random weights (< 1e-5; tests/fixtures/hy21-vae). Its
  input (``vilearn.vae.input``) is hy3dshape's: N * downsample_ratio points, the uniform /
  sharp-edge split of points and tokens, uniform tokens first, the sharp flag; the subset and
  the FPS start are deterministic instead of random. Not verified against released weights
  (none is reachable here).
"""

from vilearn.vae.config import PRESETS, VAEConfig, preset
from vilearn.vae.distribution import DiagonalGaussian
from vilearn.vae.extract import latents_to_mesh
from vilearn.vae.fps import fps_indices
from vilearn.vae.loading import load_vae, save_vae
from vilearn.vae.model import Encoded, VecSetVAE
from vilearn.vae.resolve import resolve_vae

__all__ = ["PRESETS", "DiagonalGaussian", "Encoded", "VAEConfig", "VecSetVAE", "fps_indices",
           "latents_to_mesh", "load_vae", "preset", "resolve_vae", "save_vae"]
