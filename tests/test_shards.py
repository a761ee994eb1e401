"""``--shard K/N``: a stable split of shape ids that covers the dataset once, and encode / group
run shard by shard to the same files as one unsharded run (statistics by a final unsharded run)."""

import shutil
from collections import Counter

import pytest
import torch
from typer.testing import CliRunner

from vilearn.cli import app
from vilearn.data.shards import Shard, shard_of
from vilearn.vae import VecSetVAE, preset, save_vae


def test_shards_parse_and_split_ids_stably_and_evenly():
    assert Shard.parse(" 3 / 16 ") == Shard(3, 16) and str(Shard(3, 16)) == "3/16"
    for bad in ("3", "16/16", "-1/2", "a/b", "1/0"):
        with pytest.raises(ValueError, match="K/N"):
            Shard.parse(bad)
    ids = [f"shape-{i:05d}" for i in range(4000)]
    owners = [shard_of(i, 8) for i in ids]
    assert owners == [shard_of(i, 8) for i in reversed(ids)][::-1]  # a function of the id alone
    counts = Counter(owners)
    assert sorted(counts) == list(range(8)) and max(counts.values()) < 1.15 * 4000 / 8
    assert all(Shard(k, 8).owns(i) == (k == o) for i, o in zip(ids[:50], owners) for k in range(8))


def files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.*"))}


def test_encode_and_group_by_shards_write_what_one_run_writes(tiny_dataset, tmp_path):
    torch.manual_seed(0)
    save_vae(tmp_path / "vae", VecSetVAE(preset("tiny")).eval())
    runner = CliRunner()
    one, sharded = tmp_path / "one", tmp_path / "sharded"
    shutil.copytree(tiny_dataset, one)
    shutil.copytree(tiny_dataset, sharded)

    def run(command, root, *extra):
        result = runner.invoke(app, [command, str(root), "--vae", str(tmp_path / "vae"), "--tokens", "16",
                                     *extra])
        assert result.exit_code == 0, result.output
        return result.output

    for command in ("encode", "group"):
        run(command, one)
        outputs = [run(command, sharded, "--shard", f"{k}/2") for k in (0, 1)]
        assert all("without --shard" in text for text in outputs)
    from vilearn.vae.identity import load_identified

    key = load_identified(tmp_path / "vae")[1].key
    folders = [lambda root: root / "latents" / key / "16",
               lambda root: root / "latents" / key / "16" / "groups"]
    assert not any((folder(sharded) / "stats.json").exists() for folder in folders)
    for command in ("encode", "group"):
        run(command, sharded)  # finds every shape done and writes the statistics
    for folder in folders:
        assert files(folder(sharded)) == files(folder(one)) and (folder(one) / "stats.json").is_file()
