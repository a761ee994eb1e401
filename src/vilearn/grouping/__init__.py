"""Visibility Grouping: decoder cross-attention -> VST / IST per view, statistics, figures.

Method (docs/design.md, "The method as implemented"): the visible points of a view query the
shape's decoded tokens through the VAE decoder's own cross-attention paths; A = softmax over
tokens of q.k / sqrt(d), averaged over heads; each point picks its argmax token; VST = the
unique picks, IST = the rest. Done once after ``vilearn encode``, on the posterior means, in the
latents' (object) frame.

Public API (V views, N tokens, M points, W width):

- ``token_assignment(geo_decoder, points (B, M, 3), tokens (B, N, W)) -> (B, M) int64``
  (chunked under a memory budget; ``assign_to_keys`` takes precomputed keys)
- ``group_shape(vae, latents (N, C), view_points [(P_k, 3)] * V) -> Groups``
- ``Groups``: ``visible (V, N) bool``, ``hits (V, N) int32``, ``visible_points (V,) int64``;
  ``.vst(k)``, ``.ist(k)``, ``.visible_fraction()``, ``.empty_views``
- storage: ``load_groups(root, key, N, shape_id)`` (``key``: the latents folder,
  ``VAEIdentity.key``), ``groups_path``, ``groups_dir``, ``save_groups``, ``read_groups``;
  dataset driver ``group_dataset(root, vae, identity, tokens)``
- statistics: ``write_stats(groups_dir)`` -> ``stats.json`` + ``stats.png``
- inference partition ratio: ``DEFAULT_VISIBLE_RATIO`` (1/3) and
  ``measured_visible_ratio(root, vae_name, N)`` (for ``DiTConfig.visible_ratio``; the partition
  itself is ``vilearn.dit.vape.fixed_partition``)
- ``groups_figure(...)`` (``vilearn show-groups``), ``locality_report(...)``
  (``vilearn group --report``)
"""

from vilearn.grouping.assign import assign_to_keys, chunk_points, token_assignment
from vilearn.grouping.groups import Groups, dedup, group_shape
from vilearn.grouping.partition import DEFAULT_VISIBLE_RATIO, measured_visible_ratio
from vilearn.grouping.run import group_dataset
from vilearn.grouping.stats import group_stats, write_stats
from vilearn.grouping.store import groups_dir, groups_path, load_groups, read_groups, save_groups

__all__ = ["DEFAULT_VISIBLE_RATIO", "Groups", "assign_to_keys", "chunk_points", "dedup",
           "group_dataset", "group_shape", "group_stats", "groups_dir", "groups_path",
           "load_groups", "measured_visible_ratio", "read_groups", "save_groups",
           "token_assignment", "write_stats"]
