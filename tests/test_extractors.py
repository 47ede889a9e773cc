"""Feature extractors: availability from the weights folder, RadImageNet's ResNet-50 from a release-layout state
dict (random weights, the real architecture), InceptionV3 from a local weights file, the FD recipes (MAISI's
2.5D one by hand) and the pretrained FDs, recomputed independently with MONAI's FIDMetric."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from medsynth.fsutil import sha256_file
from medsynth.metrics.extractors import EXTRACTORS, extractor_status, load_extractor
from medsynth.metrics.radimagenet import RadImageNetResNet50
from medsynth.metrics.recipes import FDRecipe, RecipeEncoder, fd_recipe, recipe_unit_images
from medsynth.weights import WeightsMissing

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _fetched(weights_dir, model: str, files: dict) -> None:
    """A weights folder as the weights rule leaves it: files/ and inventory.csv."""
    root = weights_dir / model / "files"
    rows = []
    for rel, write in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)
        rows.append({"path": rel, "bytes": path.stat().st_size, "sha256": sha256_file(path)})
    pd.DataFrame(rows).to_csv(weights_dir / model / "inventory.csv", index=False)


def test_every_extractor_names_a_registered_model():
    from medsynth.weights import load_models
    from workflow import REPO

    registry = load_models(REPO / "config" / "models.yaml")
    assert {s.model for s in EXTRACTORS.values() if s.model} <= set(registry)


def test_absent_weights_make_every_pretrained_extractor_unavailable_with_the_fetch_command(tmp_path):
    for name, spec in EXTRACTORS.items():
        status = extractor_status(name, tmp_path)
        if name == "self_trained":
            assert status == "ok"
        else:
            assert status.startswith("unavailable: ")
            if spec.loader:
                assert f"snakemake --cores 1 {tmp_path / spec.model / 'inventory.csv'}" in status
    with pytest.raises(WeightsMissing):
        load_extractor("radimagenet_resnet50", tmp_path)


def test_radimagenet_resnet50_loads_a_release_layout_state_dict(tmp_path):
    torch.manual_seed(0)
    release = RadImageNetResNet50()
    names = list(release.state_dict())
    assert names[:2] == ["conv1.weight", "conv1.bias"] and "layer1.0.downsample.0.weight" in names
    assert sum(p.numel() for p in release.parameters()) == pytest.approx(23.6e6, rel=0.01)  # ResNet-50 size
    _fetched(tmp_path, "radimagenet_resnet50",
             {"RadImageNet-ResNet50_notop.pth": lambda p: torch.save(release.state_dict(), p)})
    assert extractor_status("radimagenet_resnet50", tmp_path) == "ok"
    net = load_extractor("radimagenet_resnet50", tmp_path)
    x = torch.linspace(-1.0, 1.0, 2 * 3 * 64 * 64).reshape(2, 3, 64, 64)
    with torch.no_grad():
        out = net(x)
        assert out.shape == (2, 2048, 2, 2)
        assert torch.equal(out, release.eval()(x))


def test_inception_loads_from_the_local_file(tmp_path, monkeypatch):
    """torch-fidelity's InceptionV3 with random weights saved as the release file; loaded strictly, no URL."""
    from torch_fidelity import feature_extractor_inceptionv3 as fi

    torch.save({}, tmp_path / "empty.pth")
    with monkeypatch.context() as m:  # build the architecture once without weights, to make a release-layout file
        m.setattr(fi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        torch.manual_seed(0)
        random_net = fi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                    feature_extractor_weights_path=str(tmp_path / "empty.pth"))
    name = EXTRACTORS["inception"].file
    _fetched(tmp_path / "w", "inception_v3_fid", {name: lambda p: torch.save(random_net.state_dict(), p)})
    monkeypatch.setattr(fi, "URL_INCEPTION_V3", "http://127.0.0.1:9/never-fetched.pth")
    net = load_extractor("inception", tmp_path / "w")
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(net(x)[0], random_net(x)[0]) and net(x)[0].shape == (2, 2048)


def _schema_recipe(name: str) -> FDRecipe:
    """The recipe the schema's defaults give (``metrics.fd_recipes.<name>``)."""
    from medsynth.settings import section

    return fd_recipe(section("metrics")["fd_recipes"][name])


def test_maisi_recipe_by_hand():
    """The schema's RadImageNet recipe is MAISI's: clip [-1000, 1000], one min-max per stack, minus the BGR mean."""
    recipe = _schema_recipe("radimagenet_resnet50")
    assert recipe.record() == {"hu_window": [-1000.0, 1000.0], "scaling": "minmax", "mean": [0.406, 0.456, 0.485],
                               "std": None, "size": None, "central_fraction": 0.4}
    hu_range = (-1024.0, 3071.0)
    hu = torch.tensor([-2000.0, -1000.0, 0.0, 1000.0, 3000.0, -500.0, 500.0, 100.0]).reshape(8, 1, 1, 1).clamp(*hu_range)
    units = (hu - hu_range[0]) / (hu_range[1] - hu_range[0]) * 2 - 1  # what the pipeline stores
    groups = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1])  # two plane stacks
    x01 = recipe_unit_images(units, recipe, hu_range, groups)[:, 0, 0, 0]
    torch.testing.assert_close(x01, torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0, 0.0, 1.0, 0.6]), atol=1e-5, rtol=0)
    # window scaling ignores the stacks; MR (no HU range) maps the model's [-1, 1]
    window = FDRecipe(hu_window=(-1000.0, 1000.0), scaling="window")
    torch.testing.assert_close(recipe_unit_images(units, window, hu_range)[:, 0, 0, 0],
                               torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0, 0.25, 0.75, 0.55]), atol=1e-5, rtol=0)
    torch.testing.assert_close(recipe_unit_images(torch.tensor([-1.0, 0.0, 1.0]).reshape(3, 1, 1, 1), window, None),
                               torch.tensor([0.0, 0.5, 1.0]).reshape(3, 1, 1, 1))
    # the network sees grey as R = G = B minus the mean per channel
    seen = RecipeEncoder(torch.nn.Identity(), recipe)(torch.tensor([-1.0, 0.0, 1.0]).reshape(3, 1, 1, 1))
    for c, mean in enumerate(recipe.mean):
        torch.testing.assert_close(seen[:, c, 0, 0], torch.tensor([0.0, 0.5, 1.0]) - mean)
    with pytest.raises(ValueError, match="scaling"):
        FDRecipe(scaling="zscore")


def _monai_fd(net, recipe: FDRecipe, x01: torch.Tensor, y01: torch.Tensor) -> float:
    """The FD recomputed without the pipeline's extraction: 8-bit images, R = G = B, minus the mean, the
    network, spatial mean; MONAI's FIDMetric."""
    from monai.metrics import FIDMetric

    def feats(x01):
        u8 = (x01.clamp(0, 1) * 255).round() / 255
        rgb = u8.expand(-1, 3, -1, -1) - torch.tensor(recipe.mean).view(1, 3, 1, 1)
        with torch.no_grad():
            return net(rgb).mean(dim=(2, 3)).double()

    return float(FIDMetric()(feats(y01), feats(x01)))


@pytest.fixture(scope="module")
def radimagenet_file(tmp_path_factory):
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("radimagenet") / "RadImageNet-ResNet50_notop.pth"
    torch.save(RadImageNetResNet50().state_dict(), path)
    return path


def test_radimagenet_fd_of_slices_follows_the_recipe(radimagenet_file):
    from medsynth.metrics.pretrained_fd import pretrained_fd

    recipe, hu_range = _schema_recipe("radimagenet_resnet50"), (-1024.0, 3071.0)
    gen = torch.Generator().manual_seed(0)
    real = torch.rand(12, 1, 32, 32, generator=gen) * 2 - 1
    fake = (real + 0.3 * torch.randn(12, 1, 32, 32, generator=gen)).clamp(-1, 1)
    out = pretrained_fd("radimagenet_resnet50", radimagenet_file, "metrics.radimagenet_pretrained_path", real, fake,
                        recipe, hu_range, batch_size=5)
    assert out["status"] == "ok" and out["recipe"] == recipe.record() and out["extractor"].startswith("RadImageNet")
    net = RadImageNetResNet50()
    net.load_state_dict(torch.load(radimagenet_file, weights_only=True))
    expected = _monai_fd(net.eval(), recipe, recipe_unit_images(real, recipe, hu_range),
                         recipe_unit_images(fake, recipe, hu_range))
    assert out["value"] == pytest.approx(expected, rel=1e-3) and out["value"] > 0
    missing = pretrained_fd("radimagenet_resnet50", None, "metrics.radimagenet_pretrained_path", real, fake, recipe,
                            hu_range)
    assert missing["value"] is None and missing["status"].startswith(
        "unavailable: metrics.radimagenet_pretrained_path is not set")
    gone = pretrained_fd("radimagenet_resnet50", radimagenet_file.parent / "absent.pth", "k", real, fake, recipe, None)
    assert gone["value"] is None and "is not a file" in gone["status"]


def test_radimagenet_fd_of_volumes_is_the_mean_over_three_planes(radimagenet_file):
    from medsynth.metrics.pretrained_fd import pretrained_fd_volumes

    recipe = FDRecipe(hu_window=(-1000.0, 1000.0), scaling="minmax", mean=(0.406, 0.456, 0.485), central_fraction=0.5)
    gen = torch.Generator().manual_seed(2)
    real = torch.rand(3, 1, 32, 32, 8, generator=gen) * 2 - 1
    fake = (real + 0.5 * torch.randn(real.shape, generator=gen)).clamp(-1, 1)
    out = pretrained_fd_volumes("radimagenet_resnet50", radimagenet_file, "k", real, fake, recipe,
                                (-1024.0, 3071.0), batch_size=8)
    assert set(out["per_plane"]) == {"XY", "YZ", "ZX"} and out["status"] == "ok"
    assert out["value"] == pytest.approx(sum(p["fd"] for p in out["per_plane"].values()) / 3)
    assert out["per_plane"]["XY"]["n_real"] == 3 * 4 and out["per_plane"]["YZ"]["n_real"] == 3 * 16


def test_radimagenet_fd_per_ct_window(radimagenet_file):
    """MedSyn2 Table 1's FID: one FD per window on RadImageNet features (2D: plane XY), with the mean row."""
    from medsynth.metrics.pretrained_fd import pretrained_windowed_fd

    recipe, hu_range = _schema_recipe("radimagenet_resnet50"), (-1024.0, 1024.0)
    windows = {"lung": (-600.0, 1500.0), "soft_tissue": (50.0, 350.0)}
    gen = torch.Generator().manual_seed(3)
    real = torch.rand(8, 1, 32, 32, generator=gen) * 2 - 1
    fake = (real + 0.4 * torch.randn(8, 1, 32, 32, generator=gen)).clamp(-1, 1)
    out = pretrained_windowed_fd("radimagenet_resnet50", radimagenet_file, "k", real, fake, recipe, hu_range, windows,
                                 batch_size=4)
    assert out["status"] == "ok" and [r["window"] for r in out["rows"]] == ["lung", "soft_tissue", "mean"]
    assert all(r["plane"] == "XY" and r["fd"] > 0 for r in out["rows"])
    assert out["rows"][-1]["fd"] == pytest.approx((out["rows"][0]["fd"] + out["rows"][1]["fd"]) / 2)
    absent = pretrained_windowed_fd("radimagenet_resnet50", None, "metrics.radimagenet_pretrained_path", real, fake,
                                    recipe, hu_range, windows)
    assert absent["rows"] == [] and absent["status"].startswith("unavailable: metrics.radimagenet_pretrained_path")
