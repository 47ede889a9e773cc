"""Feature extractors: availability from the weights folder, RadImageNet's ResNet-50 from a release-layout state
dict (random weights, the real architecture), InceptionV3 from a local weights file, MAISI's 2.5D input recipe."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from medsynth.fsutil import sha256_file
from medsynth.metrics.extractors import EXTRACTORS, extractor_status, load_extractor
from medsynth.metrics.radimagenet import MAISI_BGR_MEAN, RadImageNetResNet50, maisi_radimagenet_input
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
    x = maisi_radimagenet_input(torch.linspace(-1200, 1200, 2 * 64 * 64).reshape(2, 1, 64, 64))
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


def test_maisi_input_recipe_by_hand():
    hu = torch.tensor([-2000.0, -1000.0, 0.0, 1000.0, 3000.0]).reshape(5, 1, 1, 1)
    x = maisi_radimagenet_input(hu)
    assert x.shape == (5, 3, 1, 1)
    # clipped to [-1000, 1000], one min-max over the stack: 0, 0, 0.5, 1, 1; minus the BGR mean per channel
    for c, mean in enumerate(MAISI_BGR_MEAN):
        torch.testing.assert_close(x[:, c, 0, 0], torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]) - mean)
    with pytest.raises(ValueError):
        maisi_radimagenet_input(torch.zeros(2, 3, 4, 4))
