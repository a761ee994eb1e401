"""Visibility Grouping: argmax/dedup against brute force, a sphere seen from +x, permutation,
degenerate views, storage, resume, statistics and the CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from vilearn.data.camera import orbit_camera
from vilearn.data.render import Raycaster
from vilearn.grouping import (
    Groups,
    assign_to_keys,
    chunk_points,
    group_dataset,
    group_shape,
    load_groups,
    measured_visible_ratio,
    save_groups,
    token_assignment,
    write_stats,
)
from vilearn.grouping.stats import describe_counts
from vilearn.grouping.store import groups_path, read_groups
from vilearn.vae import VAEConfig, VecSetVAE

SMALL = dict(embed_dim=8, width=32, heads=4, num_decoder_layers=2, num_latents=64, num_freqs=4,
             include_pi=False, qk_norm=True)


def random_vae(seed: int, **overrides) -> VecSetVAE:
    """A small VAE at its default initialisation (its points spread over ~30 of 64 tokens;
    large random weights would collapse every argmax onto two or three tokens)."""
    torch.manual_seed(seed)
    return VecSetVAE(VAEConfig(**{**SMALL, **overrides})).eval()


def brute_force_assignment(q: torch.Tensor, k: torch.Tensor) -> np.ndarray:
    """argmax_j (1/H) sum_h softmax_j(q_h . k_h / sqrt(d)), head by head in float64.

    q (H, M, d), k (H, N, d) -> (M,) int64.
    """
    q, k = q.double().numpy(), k.double().numpy()
    total = np.zeros((q.shape[1], k.shape[1]))
    for h in range(q.shape[0]):
        logits = q[h] @ k[h].T / math.sqrt(q.shape[-1])
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        total += e / e.sum(axis=1, keepdims=True)
    return (total / q.shape[0]).argmax(axis=1)


# --- argmax, head averaging, chunking ------------------------------------------------------


class _FixedQueries(torch.nn.Module):
    """A stand-in decoder whose query for point (i, 0, 0) is column i of a fixed tensor."""

    def __init__(self, q: torch.Tensor):
        super().__init__()
        self.q = torch.nn.Parameter(q)  # (1, H, M, d)

    def attention_queries(self, points, dtype=torch.float32):
        return self.q[:, :, points[0, :, 0].long()]


def _index_points(m: int) -> torch.Tensor:
    points = torch.zeros(1, m, 3)
    points[0, :, 0] = torch.arange(m)
    return points


@pytest.mark.parametrize("chunk", [1, 7, 64, 100, 101, 1000])
def test_argmax_matches_brute_force_across_chunk_boundaries(chunk):
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 4, 101, 8, generator=g), 1.5 * torch.randn(1, 4, 64, 8, generator=g)
    expected = brute_force_assignment(q[0], k[0])
    got = assign_to_keys(_FixedQueries(q), _index_points(101), k, chunk=chunk)
    assert got.shape == (1, 101) and got.dtype == torch.int64
    np.testing.assert_array_equal(got[0].numpy(), expected)
    # The data discriminates: averaging logits instead of probabilities, or one head alone,
    # would pick other tokens for some points.
    logit_mean = (q[0].double() @ k[0].double().transpose(1, 2)).mean(0).argmax(1).numpy()
    assert (logit_mean != expected).any()
    assert (brute_force_assignment(q[0, :1], k[0, :1]) != expected).any()
    assert len(np.unique(expected)) > 20


def test_token_assignment_goes_through_the_decoders_query_and_key_paths():
    vae = random_vae(0)
    tokens = vae.decode(torch.randn(1, 64, 8))
    points = torch.rand(1, 333, 3) * 2 - 1
    with torch.no_grad():
        q = vae.geo_decoder.attention_queries(points)[0]
        k = vae.geo_decoder.attention_keys(tokens)[0]
        got = token_assignment(vae.geo_decoder, points, tokens, chunk=50)
    expected = brute_force_assignment(q, k)
    np.testing.assert_array_equal(got[0].numpy(), expected)
    assert len(np.unique(expected)) > 10


def test_softmax_is_averaged_over_heads_not_logits():
    """Hand-made 2-head, 3-token case: mean logits pick token 0, mean probabilities token 1."""
    # head 0 logits [4, 3.9, -10], head 1 logits [0, 0.2, 3]: mean logits [2, 2.05, -3.5] -> 1?
    # We want the opposite ordering, so choose values and check both claims explicitly below.
    d = 1
    k = torch.tensor([[[1.0], [0.9], [-2.5]], [[0.0], [0.05], [0.75]]])[None]  # (1, 2, 3, 1)
    q = torch.tensor([[[4.0]], [[4.0]]])[None]  # (1, 2, 1, 1): logits = 4 * k
    logits = (q @ k.transpose(-1, -2))[0, :, 0] / math.sqrt(d)  # (H, N)
    mean_logits = logits.mean(0)
    mean_probs = logits.softmax(-1).mean(0)
    assert mean_logits.argmax() != mean_probs.argmax()  # the case discriminates
    got = assign_to_keys(_FixedQueries(q), torch.zeros(1, 1, 3), k, chunk=1)
    assert got.item() == mean_probs.argmax().item()


def test_in_place_head_sum_equals_the_vae_attention_probs():
    from vilearn.grouping.assign import head_summed_probs
    from vilearn.vae.layers import attention_probs

    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, 3, 17, 8, generator=g), torch.randn(2, 3, 29, 8, generator=g)
    assert torch.allclose(head_summed_probs(q, k) / 3, attention_probs(q, k), atol=1e-6)


def test_chunk_size_respects_the_memory_budget():
    # Hunyuan3D-2 decoder: 16 heads; 4096 tokens; 512 MiB.
    chunk = chunk_points(1, 16, 4096, 512 * 2**20)
    assert 4 * 4096 * 33 * chunk <= 512 * 2**20 < 4 * 4096 * 33 * (chunk + 1)
    assert chunk_points(1, 16, 4096, None) == chunk_points(1, 16, 4096, 16 * 2**20) == 31
    assert chunk_points(1, 16, 10**9, 1) == 1
    with pytest.raises(ValueError, match="max_bytes"):
        chunk_points(1, 16, 4096, 0)


# --- dedup, groups of a shape ----------------------------------------------------------------


def test_group_shape_deduplicates_the_argmax_per_view():
    vae = random_vae(1)
    latents = torch.randn(48, 8)
    views = [np.random.default_rng(s).uniform(-1, 1, (n, 3)).astype(np.float32)
             for s, n in ((0, 300), (1, 5), (2, 1))]
    groups = group_shape(vae, latents, views, chunk=13)
    assert groups.visible.shape == groups.hits.shape == (3, 48)
    assert groups.visible.dtype == bool and groups.hits.dtype == np.int32
    np.testing.assert_array_equal(groups.visible_points, [300, 5, 1])
    with torch.no_grad():
        k = vae.geo_decoder.attention_keys(vae.decode(latents[None]))[0]
        for i, pts in enumerate(views):
            q = vae.geo_decoder.attention_queries(torch.from_numpy(pts)[None])[0]
            picks = brute_force_assignment(q, k)
            np.testing.assert_array_equal(groups.vst(i), np.unique(picks))
            np.testing.assert_array_equal(groups.hits[i], np.bincount(picks, minlength=48))
            np.testing.assert_array_equal(groups.ist(i), np.setdiff1d(np.arange(48), picks))
    assert groups.hits.sum(1).tolist() == [300, 5, 1]
    assert groups.visible[2].sum() == 1


def test_token_permutation_permutes_the_vst():
    vae = random_vae(2)
    latents = torch.randn(64, 8)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    views = [np.random.default_rng(3).uniform(-1, 1, (400, 3)).astype(np.float32)]
    a = group_shape(vae, latents, views)
    b = group_shape(vae, latents[perm], views)
    # Token j of the permuted set is token perm[j] of the original.
    np.testing.assert_array_equal(b.visible[0], a.visible[0][perm.numpy()])
    np.testing.assert_array_equal(b.hits[0], a.hits[0][perm.numpy()])
    assert 1 < a.visible.sum() < 64


def test_zero_visible_points_give_an_empty_flagged_row(tmp_path):
    vae = random_vae(3)
    groups = group_shape(vae, torch.randn(32, 8), [np.zeros((0, 3), np.float32),
                                                   np.full((4, 3), 0.1, np.float32)])
    assert not groups.visible[0].any() and groups.hits[0].sum() == 0
    assert groups.visible_points.tolist() == [0, 4]
    assert groups.empty_views.tolist() == [True, False]
    assert np.isnan(groups.visible_fraction()[0]) and groups.visible_fraction()[1] > 0
    assert groups.vst(0).size == 0 and groups.ist(0).size == 32
    save_groups(tmp_path / "g.npz", groups)
    back = read_groups(tmp_path / "g.npz")
    assert back.visible_points.tolist() == [0, 4] and not back.visible[0].any()


def test_groups_validate_their_shapes():
    with pytest.raises(ValueError, match="hits"):
        Groups(np.zeros((2, 4), bool), np.zeros((2, 5), np.int32), np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="bool"):
        Groups(np.zeros((2, 4), np.int32), np.zeros((2, 4), np.int32), np.zeros(2, np.int64))


# --- a sphere seen from +x --------------------------------------------------------------------


def local_vae(gain: float = 3.0) -> VecSetVAE:
    """A VecSet VAE whose decoder attention is local *by construction*: token j's latent is its
    anchor a_j (embed_dim 3), and the query and key paths reduce to the directions of x and a_j,
    so point x attends most to the anchor at the smallest angle (on a sphere: the nearest one).

    Construction: every weight zero (the transformer's residual branches then vanish, so it is
    the identity), post_kl and query_proj embed v as [v, -v, 0, ...] (zero mean, so the
    LayerNorms ln_1 / ln_2 just rescale it to a fixed norm), c_q and the key half of c_kv are
    ``gain`` * identity. We use it rather than a trained checkpoint because none is committed
    and a training run in a test would be slow and not deterministic enough to assert on; the
    locality of a trained VAE is what ``vilearn group --report`` measures.
    """
    width = 8
    vae = VecSetVAE(VAEConfig(embed_dim=3, width=width, heads=1, num_decoder_layers=1, num_freqs=2,
                              include_pi=False, qk_norm=False, num_latents=64)).eval()
    embed = torch.zeros(width, 3)
    embed[:3], embed[3:6] = torch.eye(3), -torch.eye(3)
    with torch.no_grad():
        for p in vae.parameters():
            p.zero_()
        vae.post_kl.weight.copy_(embed)
        dec = vae.geo_decoder
        dec.query_proj.weight[:, :3] = embed  # Fourier features start with x itself
        block = dec.cross_attn_decoder
        for norm in (block.ln_1, block.ln_2):
            norm.weight.fill_(1.0)
        block.attn.c_q.weight.copy_(gain * torch.eye(width))
        block.attn.c_kv.weight[:width] = gain * torch.eye(width)  # 1 head: keys are channels [0, W)
    return vae


def test_sphere_seen_from_plus_x_groups_the_near_side():
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.8)
    camera = orbit_camera(0.0, 0.0, distance=3.0, fov_deg=40.0, width=96, height=96)
    assert camera.center[0] > 2.9  # the camera sits on +x
    points = Raycaster(sphere.vertices, sphere.faces).render(camera).points
    assert points[:, 0].min() > 0.0  # the rendered visible points are the +x cap
    # 64 anchors spread over the sphere (a Fibonacci lattice).
    i = np.arange(64) + 0.5
    z, phi = 1 - 2 * i / 64, math.pi * (1 + 5 ** 0.5) * i
    anchors = 0.8 * np.stack([np.sqrt(1 - z**2) * np.cos(phi), np.sqrt(1 - z**2) * np.sin(phi), z], 1)
    groups = group_shape(local_vae(), torch.from_numpy(anchors).float(), [points])
    vst, ist = anchors[groups.vst(0)], anchors[groups.ist(0)]
    # Independent truth: each visible point's angularly nearest anchor.
    unit = anchors / np.linalg.norm(anchors, axis=1, keepdims=True)
    nearest = np.unique((points / np.linalg.norm(points, axis=1, keepdims=True) @ unit.T).argmax(1))
    np.testing.assert_array_equal(groups.vst(0), nearest)
    assert vst[:, 0].min() > -0.25 and (ist[:, 0] < 0.2).all()
    assert (anchors[:, 0] > 0.45).sum() and set(np.flatnonzero(anchors[:, 0] > 0.45)) <= set(groups.vst(0))
    assert (anchors[:, 0] < -0.25).sum() and not groups.visible[0][anchors[:, 0] < -0.25].any()
    assert vst[:, 0].mean() > 0.3 > 0 > ist[:, 0].mean()


# --- hunyuan3d-2 layout through our loader ----------------------------------------------------


@pytest.fixture(scope="module")
def hy3dgen_ae():
    """hy3dgen's autoencoders, imported by the VAE tests' helper (skips if hy3dgen is absent)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "_vae_test_conftest", Path(__file__).parent / "vae" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._load_hy3dgen_autoencoders()


@pytest.mark.hy3dgen
def test_works_with_a_hunyuan3d_vae_loaded_through_our_loader(hy3dgen_ae, tmp_path):
    """q and k captured from hy3dgen's own cross-attention give the same argmax."""
    import yaml

    from vilearn.vae.loading import load_vae

    params = {**SMALL, "qkv_bias": False, "scale_factor": 0.99, "drop_path_rate": 0.0}
    torch.manual_seed(8)
    theirs = hy3dgen_ae.ShapeVAE(**params).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(0.0, 0.3)
    folder = tmp_path / "hunyuan3d-vae-v2-0"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(
        {"target": "hy3dgen.shapegen.models.ShapeVAE", "params": params}))
    torch.save(theirs.state_dict(), folder / "model.ckpt")
    ours = load_vae(folder)

    captured = {}
    attention = theirs.geo_decoder.cross_attn_decoder.attn.attention
    processor = attention.attn_processor

    def capture(module, q, k, v):
        captured.update(q=q, k=k)
        return processor(module, q, k, v)

    attention.attn_processor = capture
    latents = torch.randn(1, 64, 8)
    points = torch.rand(1, 150, 3) * 2 - 1
    with torch.no_grad():
        theirs.geo_decoder(queries=points, latents=theirs(latents))
        expected = brute_force_assignment(captured["q"][0], captured["k"][0])
        groups = group_shape(ours, latents[0], [points[0].numpy()], chunk=32)
    np.testing.assert_array_equal(groups.vst(0), np.unique(expected))
    np.testing.assert_array_equal(groups.hits[0], np.bincount(expected, minlength=64))


# --- partition and statistics -----------------------------------------------------------------


def test_measured_ratio_feeds_the_dit_fixed_partition(tmp_path):
    from vilearn.dit.vape import fixed_partition
    from vilearn.grouping import DEFAULT_VISIBLE_RATIO

    assert fixed_partition(2048, DEFAULT_VISIBLE_RATIO)[0].sum() == 683  # the paper's example
    folder = tmp_path / "latents" / "v" / "300" / "groups"
    visible = np.zeros((1, 300), bool)
    visible[0, :90] = True
    save_groups(folder / "a.npz", Groups(visible, visible.astype(np.int32), np.array([90])))
    write_stats(folder)
    ratio = measured_visible_ratio(tmp_path, "v", 300)
    assert ratio == pytest.approx(0.3) and fixed_partition(300, ratio)[0].sum() == 90


def test_count_histogram_percentiles_match_numpy():
    rng = np.random.default_rng(0)
    values = rng.integers(1, 50, 1001) ** 2
    stats = describe_counts(np.bincount(values))
    for p in (5, 25, 50, 75, 95):
        assert stats[f"p{p}"] == pytest.approx(np.percentile(values, p))
    assert stats["mean"] == pytest.approx(values.mean()) and stats["std"] == pytest.approx(values.std())
    assert (stats["min"], stats["max"]) == (values.min(), values.max())


def test_stats_from_stored_groups(tmp_path):
    folder = tmp_path / "latents" / "v" / "4" / "groups"
    a = Groups(np.array([[1, 1, 0, 0], [0, 0, 0, 0]], bool), np.array([[3, 1, 0, 0], [0, 0, 0, 0]], np.int32),
               np.array([4, 0]))
    b = Groups(np.array([[1, 1, 1, 0]], bool), np.array([[2, 2, 6, 0]], np.int32), np.array([10]))
    save_groups(folder / "a.npz", a)
    save_groups(folder / "b.npz", b)
    stats = write_stats(folder)
    assert (stats["shapes"], stats["views"], stats["empty_views"], stats["tokens"]) == (2, 3, 1, 4)
    assert stats["visible_fraction_mean"] == pytest.approx((0.5 + 0.75) / 2)
    assert stats["points_per_vst_token"]["p50"] == pytest.approx(np.median([3, 1, 2, 2, 6]))
    assert (folder / "stats.json").is_file() and (folder / "stats.png").stat().st_size > 1000
    assert measured_visible_ratio(tmp_path, "v", 4) == pytest.approx(0.625)
    with pytest.raises(FileNotFoundError, match="stats.json"):
        measured_visible_ratio(tmp_path, "v", 8)


# --- a dataset: group, resume, store, CLI -----------------------------------------------------


@pytest.fixture(scope="module")
def encoded(tiny_dataset, tmp_path_factory):
    """The tiny dataset copied, a random tiny VAE saved, and its latents at 16 and 32 tokens."""
    import shutil

    from vilearn.vae.encode import encode_dataset
    from vilearn.vae.identity import identify_vae
    from vilearn.vae.loading import save_vae

    root = tmp_path_factory.mktemp("grouping") / "data"
    shutil.copytree(tiny_dataset, root)
    vae = random_vae(4, point_feats=3, num_encoder_layers=1)
    save_vae(root.parent / "tinyvae", vae)
    identity = identify_vae(vae, root.parent / "tinyvae")
    encode_dataset(root, vae, identity, [16, 32], surface_points=512)
    return root, vae, identity


def test_group_dataset_writes_resumes_and_regroups_bad_files(encoded):
    from vilearn.data.dataset import PreparedDataset

    root, vae, identity = encoded
    key = identity.key
    data = PreparedDataset(root)
    ids = data.ids()
    summary = group_dataset(root, vae, identity)
    assert summary.grouped == 2 * len(ids) and not summary.failed
    first = load_groups(root, key, 32, ids[0])
    view = data.view(ids[0], 1)
    assert first.num_tokens == 32 and first.visible_points[1] == len(view["visible_points"])
    assert first.visible[1].any()
    # Resume: nothing to do; a truncated file and a file of the wrong size are redone.
    assert group_dataset(root, vae, identity).skipped == 2 * len(ids)
    groups_path(root, key, 16, ids[0]).write_bytes(b"PK\x03\x04 truncated")
    save_groups(groups_path(root, key, 32, ids[1]), Groups(
        np.zeros((1, 7), bool), np.zeros((1, 7), np.int32), np.zeros(1, np.int64)))
    again = group_dataset(root, vae, identity)
    assert again.grouped == 2 and again.skipped == 2 * len(ids) - 2
    assert load_groups(root, key, 32, ids[1]).num_views == first.num_views
    with pytest.raises(FileNotFoundError, match="no grouping"):
        load_groups(root, key, 32, "nope")
    odd = groups_path(root, key, 16, "odd")
    save_groups(odd, first)
    with pytest.raises(ValueError, match="expected 16"):
        load_groups(root, key, 16, "odd")
    odd.unlink()
    with pytest.raises(FileNotFoundError, match="vilearn encode"):
        group_dataset(root, vae, identity, [64])


def test_empty_view_in_a_dataset_is_stored_and_flagged(encoded, tmp_path):
    import shutil

    from vilearn.data.layout import DatasetLayout
    from vilearn.io import write_npz

    src, vae, identity = encoded
    key = identity.key
    root = tmp_path / "data"
    shutil.copytree(src, root, ignore=shutil.ignore_patterns("groups"))
    layout = DatasetLayout(root)
    shape_id = sorted(p.name for p in (root / "shapes").iterdir())[0]
    with np.load(layout.view(shape_id, 0)) as arrays:
        view = {k: arrays[k] for k in arrays.files}
    view["visible_points"] = np.zeros((0, 3), np.float32)
    write_npz(layout.view(shape_id, 0), **view)
    assert not group_dataset(root, vae, identity, [16]).failed
    groups = load_groups(root, key, 16, shape_id)
    assert groups.visible_points[0] == 0 and not groups.visible[0].any() and groups.visible[1].any()
    stats = write_stats(root / "latents" / key / "16" / "groups")
    assert stats["empty_views"] == 1


def test_cli_group_report_and_show_groups(encoded, tmp_path):
    from typer.testing import CliRunner

    from vilearn.cli import app

    root, _, identity = encoded
    key = identity.key
    runner = CliRunner()
    vae = str(root.parent / "tinyvae")
    result = runner.invoke(app, ["group", str(root), "--vae", vae, "--tokens", "16", "--report",
                                 "--report-shapes", "1", "--report-views", "1",
                                 "--report-resolution", "32"])
    assert result.exit_code == 0, result.output
    folder = root / "latents" / key / "16" / "groups"
    assert (folder / "stats.json").is_file() and (folder / "locality.json").is_file()
    out = tmp_path / "fig.png"
    shape_id = sorted(p.name for p in (root / "shapes").iterdir())[0]
    result = runner.invoke(app, ["show-groups", str(root), "--id", shape_id, "--view", "1", "--vae", vae,
                                 "--tokens", "16", "--out", str(out), "--resolution", "32"])
    assert result.exit_code == 0, result.output
    from PIL import Image

    assert Image.open(out).size == (4 * 256, 2 * 256)
    bad = runner.invoke(app, ["show-groups", str(root), "--id", shape_id, "--view", "9", "--vae", vae])
    assert bad.exit_code == 2 and "--view 9" in bad.output
    bad = runner.invoke(app, ["group", str(root), "--vae", vae, "--tokens", "sixteen"])
    assert bad.exit_code == 2 and "--tokens" in bad.output


def test_shape_ticker_counts_steps_fresh_work_and_failures():
    from vilearn.cli.progress import ShapeTicker, progress_bar

    with progress_bar() as bar:
        task = bar.add_task("group", total=4, failed=0, rate="")
        tick = ShapeTicker(bar, task, fresh="grouped")
        for outcome in ("grouped", "kept", "failed", "grouped"):
            tick(outcome)
        state = bar.tasks[0]
    assert state.completed == 4 and state.fields["failed"] == 1
    assert (tick.fresh, tick.failed) == (2, 1) and state.fields["rate"].endswith("shapes/s")
