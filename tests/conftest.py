import dataclasses
import os

import pytest

# Two cores are shared by test workers and the library's own threads: keep torch to one.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Wide enough that rich does not wrap the error messages tests look for.
os.environ["COLUMNS"] = "300"


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_prepare_config():
    from vilearn.config import load_config
    from vilearn.data.prepare import PrepareConfig

    return load_config(PrepareConfig, "prepare-tiny")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory, tiny_prepare_config):
    """Six random_urdfs shapes prepared with the tiny config (shared, read-only)."""
    from vilearn.data.prepare import prepare_dataset

    root = tmp_path_factory.mktemp("tiny-dataset")
    config = dataclasses.replace(tiny_prepare_config, val_fraction=0.34)  # both splits populated
    summary = prepare_dataset("pybullet:random_urdfs", root, config, workers=1, limit=6)
    assert summary.ok == 6
    return root


TOKENS = (32, 64)


@pytest.fixture(scope="session")
def encoded(tmp_path_factory, tiny_prepare_config):
    """Six prepared shapes, a tiny random-weight VAE, latents at 32 and 64 tokens, groups."""
    import torch

    from vilearn.data.prepare import prepare_dataset
    from vilearn.grouping.run import group_dataset
    from vilearn.vae import VecSetVAE, preset, save_vae
    from vilearn.vae.encode import encode_dataset
    from vilearn.vae.identity import identify_vae

    root = tmp_path_factory.mktemp("encoded")
    config = dataclasses.replace(tiny_prepare_config, val_fraction=0.34)
    prepare_dataset("pybullet:random_urdfs", root / "data", config, limit=6)
    torch.manual_seed(0)
    vae = VecSetVAE(preset("tiny")).eval()
    save_vae(root / "vae", vae)
    identity = identify_vae(vae, root / "vae")
    encode_dataset(root / "data", vae, identity, list(TOKENS), surface_points=1024)
    group_dataset(root / "data", vae, identity, list(TOKENS))
    return root



@pytest.fixture(scope="session")
def encoded_key(encoded) -> str:
    """The latents folder name (``vae-<hash8>``) of the ``encoded`` fixture's VAE."""
    from vilearn.vae.identity import load_identified

    return load_identified(encoded / "vae")[1].key
