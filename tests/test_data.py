"""Loading the real shared datasets, the pool split and its disjointness, the medmnist loader,
transforms."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from meduniverse.core.config import InputSpec
from meduniverse.core.errors import DataError, PrivacyError
from meduniverse.data.medmnist import medmnist_file
from meduniverse.data.npz import read_labelled_npz
from meduniverse.data.transforms import images_to_spec, masks_to_spec
from meduniverse.sites.duplicates import duplicate_keys, image_hashes, near_pairs, signatures
from meduniverse.sites.pool import build_pool, verify_disjoint
from meduniverse.sites.sources import load_site, pool_indices, read_raw_images


def test_every_shared8_site_loads_at_its_input_spec(shared8_config):
    for site in shared8_config.sites:
        spec = shared8_config.input_spec(site.task)
        data = load_site(site, shared8_config.pool, spec, 0)
        for split in data.splits.values():
            assert split.images.dtype == torch.uint8
            assert tuple(split.images.shape[1:]) == (3, spec.size, spec.size)
            if site.task == "segmentation":
                assert tuple(split.targets.shape[1:]) == (spec.size, spec.size)
                assert set(split.targets.unique().tolist()) <= {0, 1}
            else:
                assert split.targets.max() < len(site.classes)


def test_pool_takes_its_fraction_and_never_a_copy_of_a_private_image(shared8_config):
    site = shared8_config.site(
        "pneumonia_xray"
    )  # has byte-identical images inside train and across splits
    images = read_raw_images(site)
    lent = pool_indices(duplicate_keys(images, 0.999), 0.2, 0)
    assert abs(len(lent) - 0.2 * len(images["train"])) <= 20
    private = np.setdiff1d(np.arange(len(images["train"])), lent)
    pool_hashes = set(image_hashes(images["train"][lent]))
    private_hashes = (
        set(image_hashes(images["train"][private]))
        | set(image_hashes(images["val"]))
        | set(image_hashes(images["test"]))
    )
    assert not pool_hashes & private_hashes
    data = load_site(site, shared8_config.pool, shared8_config.input_spec(site.task), 0)
    assert len(data.splits["train"]) == len(private)


def test_the_pool_takes_no_near_copy_of_a_private_image(shared8_config):
    site = shared8_config.site("breast_us")  # re-saved near-copies that byte hashes miss
    images = read_raw_images(site)
    exact = pool_indices(duplicate_keys(images, 0.0), 0.2, 0)
    near = pool_indices(duplicate_keys(images, 0.999), 0.2, 0)

    def near_copies(lent):
        rest = np.setdiff1d(np.arange(len(images["train"])), lent)
        private = np.concatenate([images["train"][rest], images["val"], images["test"]])
        return len(near_pairs(signatures(images["train"][lent]), signatures(private), 0.999))

    assert near_copies(near) == 0
    assert near_copies(exact) > 0  # the check can fail: byte hashes alone let near-copies through


def test_verify_disjoint_passes_on_shared8_and_fails_loudly_on_overlap(
    shared8_config, shared_data, tmp_path
):
    assert verify_disjoint(shared8_config, build_pool(shared8_config)) > 0
    with np.load(shared_data / "breast_us.npz") as d:
        leaked = d["test_images"][:5]
    extra = tmp_path / "public.npz"
    np.savez(extra, images=leaked)
    bad = replace(shared8_config, pool=replace(shared8_config.pool, files=(extra,)))
    with pytest.raises(PrivacyError, match=r"breast_us.*test.*5 private image"):
        verify_disjoint(bad, build_pool(bad))
    brighter = np.clip(leaked.astype(int) + 3, 0, 255).astype(
        np.uint8
    )  # re-saved a little brighter
    np.savez(extra, images=brighter)
    with pytest.raises(
        PrivacyError, match=r"breast_us.*test.*5 private image\(s\) nearly identical"
    ):
        verify_disjoint(bad, build_pool(bad))


def test_pool_holds_every_group_within_limits(shared8_config):
    pool = build_pool(shared8_config).images
    assert set(pool) == {"classification", "segmentation"}
    assert pool["classification"].shape[1:] == (3, 32, 32) and len(pool["classification"]) <= 96
    assert pool["segmentation"].shape[1:] == (3, 128, 128) and len(pool["segmentation"]) <= 16


def test_medmnist_files_are_found_by_name_in_a_local_root(shared_data, tmp_path):
    with np.load(shared_data / "pneumonia_xray.npz") as d:
        np.savez(tmp_path / "pneumoniamnist.npz", **{k: d[k][:10] for k in d.files})
    path = medmnist_file("pneumoniamnist", tmp_path)
    splits = read_labelled_npz(path, "binary", 2)
    assert len(splits["train"].images) == 10


def test_missing_medmnist_file_offline_names_the_root(tmp_path):
    with pytest.raises(DataError) as err:
        medmnist_file("bloodmnist", tmp_path / "medmnist-root", size=64)
    assert "bloodmnist_64.npz" in str(err.value) and str(tmp_path / "medmnist-root") in str(
        err.value
    )


def test_images_to_spec_converts_gray_and_resizes_without_touching_input():
    gray = np.tile(np.arange(28, dtype=np.uint8) * 9, (2, 28, 1))
    before = gray.copy()
    x = images_to_spec(gray, InputSpec(32, 3))
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.uint8
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
    assert np.array_equal(gray, before)
    rgb = np.zeros((1, 64, 64, 3), np.uint8)
    rgb[..., 0] = 200
    y = images_to_spec(rgb, InputSpec(32, 3))
    assert (
        y.shape == (1, 3, 32, 32) and int(y[0, 0].float().mean()) == 200 and int(y[0, 1].max()) == 0
    )


def test_masks_to_spec_keeps_class_ids():
    masks = np.zeros((1, 128, 128), np.uint8)
    masks[0, 40:80, 40:80] = 1
    m = masks_to_spec(masks, InputSpec(64))
    assert m.shape == (1, 64, 64) and set(m.unique().tolist()) == {0, 1}
    assert int(m.sum()) == 20 * 20


def test_synthetic_sites_are_deterministic(demo_config):
    site = demo_config.sites[0]
    a = load_site.__wrapped__(site, demo_config.pool, demo_config.input_spec(site.task), 0)
    b = load_site.__wrapped__(site, demo_config.pool, demo_config.input_spec(site.task), 0)
    assert torch.equal(a.splits["train"].images, b.splits["train"].images)
    assert len(a.splits["train"]) == 240 and len(a.splits["test"]) == 100
