"""Real-world folders of scans through the workflow: bad cases are quarantined, the rest of the study goes on."""

from __future__ import annotations

import os
import shutil

import pandas as pd
import pytest
from workflow import embedded_config, run_snakemake

from medsynth.cases import read_shard_table


def _local_study(root, **overrides) -> dict:
    config = embedded_config(study="mine", datasets=[{"name": "mine", "kind": "local", "root": str(root)}],
                             splits={"fractions": {"train": 1.0}}, **overrides)
    config["volumes"] = {**config["volumes"], "enabled": False}
    # a short VAE with checkpoints (the fault test kills it); every case is in the train split
    config["vae"] = {**config["vae"], "steps": 24, "checkpoint_every": 8, "eval_split": "train"}
    return config


SLICE_TABLES = tuple(f"results/mine/trainsets/slices/shard-{s}.csv" for s in ("000", "001"))


@pytest.fixture(scope="module")
def study(tmp_path_factory, example_dir):
    """A local folder of two valid scans and two broken files, shard size 2 (shard 001: only broken files),
    run to the QC table and the training sets. Returns (working folder, config)."""
    work = tmp_path_factory.mktemp("local_study")
    root = work / "scans"
    root.mkdir()
    shutil.copy(example_dir / "ct" / "upper_abdomen_ct_3mm.nii.gz", root / "a_good.nii.gz")
    shutil.copy(example_dir / "ct" / "upper_abdomen_ct_3mm.nii.gz", root / "b_good.nii.gz")
    (root / "z_truncated.nii.gz").write_bytes(b"\x1f\x8b truncated")
    (root / "z_zero_bytes.nii.gz").write_bytes(b"")
    config = _local_study(root, shard_size=2)
    run_snakemake(work, config, "results/mine/qc/quarantine.csv", *SLICE_TABLES)
    return work, config


def test_a_shard_whose_cases_all_fail_leaves_valid_tables_and_the_study_goes_on(study):
    results = study[0] / "results" / "mine"
    assert set(read_shard_table(results / "ingest" / "shard-001")["status"]) == {"quarantined"}
    for stage in ("registered", "masks"):  # no case reached them: still a CSV with its header
        empty = read_shard_table(results / stage / "shard-001")
        assert empty.empty and {"case_id", "status", "reason"} <= set(empty.columns), stage
    quarantine = pd.read_csv(results / "qc" / "quarantine.csv", dtype=str, keep_default_na=False).set_index("case_id")
    assert sorted(quarantine.index) == ["mine_z_truncated", "mine_z_zero_bytes"]
    assert set(quarantine["stage"]) == {"ingest"}
    assert all(reason.startswith("unreadable") for reason in quarantine["reason"])
    masks = read_shard_table(results / "masks" / "shard-000")
    assert sorted(masks.loc[masks["status"] == "ok", "case_id"]) == ["mine_a_good", "mine_b_good"]
    slices = pd.read_csv(results / "trainsets" / "slices" / "shard-000.csv")
    assert set(slices["case_id"]) == {"mine_a_good", "mine_b_good"}
    assert pd.read_csv(results / "trainsets" / "slices" / "shard-001.csv").empty


def _jobs_to_run(work, config, *targets, extra=()) -> dict[str, int]:
    """Rule -> job count of what snakemake would run now (the "Job stats" table of a dry run)."""
    out = run_snakemake(work, config, *targets, extra=("-n", *extra)).stdout
    if "Job stats:" not in out:
        return {}
    counts = {}
    for line in out.split("Job stats:", 1)[1].splitlines()[3:]:  # after the header and its rule line
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


VAE = "results/mine/vae/final"


def test_a_study_killed_with_sigkill_mid_training_reruns_only_that_job_and_resumes_to_the_same_weights(study):
    """SIGKILL to snakemake and its job while the VAE trains (after its first checkpoint): the rerun runs the
    VAE job alone (nothing upstream), resumes from the checkpoint, and ends with the weights of an
    uninterrupted run; no declared output of the killed job survived under its name."""
    import signal
    import subprocess
    import sys
    import time

    from safetensors.numpy import load_file
    from workflow import REPO

    work, config = study
    vae = work / "results" / "mine" / "vae"
    run_snakemake(work, config, VAE)  # the uninterrupted reference
    (weights,) = (vae / "final").glob("*.safetensors")
    reference = load_file(str(weights))
    reference_curve = (vae / "loss_curve.csv").read_text()
    shutil.rmtree(vae)

    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(work),
           "--configfile", str(work / "config.yaml"), "--cores", "2", VAE]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    while not list((vae / "checkpoints").glob("step-*[0-9]")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # snakemake and the job: no cleanup of any kind
    proc.wait()
    assert list((vae / "checkpoints").glob("step-*[0-9]")), "the VAE never wrote a checkpoint"
    for name in ("final", "loss_curve.csv", "train_config.json", "latent_stats.json", "reconstruction.csv"):
        assert not (vae / name).exists(), name

    run_snakemake(work, config, extra=("--unlock",))  # what snakemake asks for after a killed run
    assert _jobs_to_run(work, config, VAE, extra=("--rerun-incomplete",)) == {"vae": 1}  # nothing upstream
    run_snakemake(work, config, VAE, extra=("--rerun-incomplete",))
    assert "resumed from" in (work / "results" / "mine" / "logs" / "vae.log").read_text()
    resumed = load_file(str(vae / "final" / weights.name))
    assert resumed.keys() == reference.keys() and all((resumed[k] == reference[k]).all() for k in reference)
    assert (vae / "loss_curve.csv").read_text() == reference_curve
    assert _jobs_to_run(work, config, VAE, *SLICE_TABLES) == {}  # and then nothing is left to do


def _labelled_shard(tmp_path, example_dir, extra_id: int | None) -> pd.DataFrame:
    """A registered-shard table of two cases (the shipped upper-abdomen CT and its TotalSegmentator labels);
    case ``a``'s label map also holds ``extra_id`` in a block of voxels."""
    import nibabel as nib
    import numpy as np

    labels = nib.load(str(example_dir / "labels" / "upper_abdomen_ct_3mm_total.nii.gz"))
    data = np.asarray(labels.dataobj).astype(np.int16)
    if extra_id is not None:
        data[:8, :8, :4] = extra_id
    nib.save(nib.Nifti1Image(data, labels.affine), str(tmp_path / "a_labels.nii.gz"))
    image = str(example_dir / "ct" / "upper_abdomen_ct_3mm.nii.gz")
    return pd.DataFrame([{"case_id": case, "patient_id": case, "dataset": "t", "modality": "CT", "split": "train",
                          "status": "ok", "registered_path": image, "registered_label_path": str(path)}
                         for case, path in (("a", tmp_path / "a_labels.nii.gz"),
                                            ("b", example_dir / "labels" / "upper_abdomen_ct_3mm_total.nii.gz"))])


@pytest.mark.parametrize("policy", ["report", "quarantine"])
def test_label_ids_outside_the_class_map_are_reported_or_quarantined(tmp_path, example_dir, policy):
    from medsynth.masks.conditions import ConditionSpec
    from medsynth.masks.stage import masks_shard

    registered = _labelled_shard(tmp_path, example_dir, extra_id=250)  # 'total' names ids 1..117
    table = masks_shard(registered, tmp_path / "masks", {"shipped": {"backend": "dataset", "class_map": "total"}},
                        {"CT": "shipped"}, [ConditionSpec.from_config({"name": "liver", "structures": ["liver"]})],
                        progress=False, unknown_labels=policy).set_index("case_id")
    assert table.loc["a", "unknown_label_ids"] == "[250]"
    assert table.loc["b", "status"] == "ok" and table.loc["b", "unknown_label_ids"] == ""
    if policy == "report":
        assert table.loc["a", "status"] == "ok"
        assert (tmp_path / "masks" / "conditions" / "a.nii.gz").exists()
    else:
        assert table.loc["a", "status"] == "quarantined"
        assert table.loc["a", "reason"] == ("label ids [250] are not in the class map of segmenter 'shipped'"
                                            " (masks.segmenters.shipped.class_map); masks.unknown_labels: quarantine")
        assert not (tmp_path / "masks" / "conditions" / "a.nii.gz").exists()
    assert (tmp_path / "masks" / "conditions" / "b.nii.gz").exists()


class _RunsCode:
    """Pickles as a call of ``os.getcwd`` (harmless, but code: the safe loader must refuse it)."""

    def __reduce__(self):
        import os

        return (os.getcwd, ())


def test_a_pickle_that_would_run_code_is_refused_as_unsafe_with_how_to_convert_it(tmp_path):
    import torch

    from medsynth.io.state_dict import UnsafeWeightsFile, load_weights
    from medsynth.metrics.extractors import extractor_from_file
    from medsynth.vae.models import build_autoencoder

    evil = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(2), "payload": _RunsCode()}, evil)
    with pytest.raises(UnsafeWeightsFile) as refused:
        load_weights(evil)
    message = str(refused.value)
    assert message.startswith(f"{evil} was refused as unsafe: it is a pickle that would run code when loaded")
    assert "getcwd" in message and str(tmp_path / "weights.safetensors") in message
    assert "weights_only=False will likely succeed" not in message  # torch's advice is not passed on
    with pytest.raises(UnsafeWeightsFile, match="refused as unsafe"):  # the consumers load through it
        extractor_from_file("radimagenet_resnet50", evil)
    with pytest.raises(UnsafeWeightsFile, match="refused as unsafe"):
        build_autoencoder({"spatial_dims": 3, "backend": "maisi", "in_channels": 1, "out_channels": 1,
                           "block_out_channels": [4, 4], "layers_per_block": 1, "latent_channels": 2,
                           "norm_num_groups": 2, "attention": False, "pretrained": str(evil)})
    plain = tmp_path / "plain.pt"  # a pickle of tensors only still loads
    torch.save({"w": torch.ones(3)}, plain)
    assert torch.equal(load_weights(plain)["w"], torch.ones(3))


def test_an_unusable_results_folder_fails_at_the_start_naming_the_path(tmp_path):
    from medsynth.fsutil import OutputFolderError, check_output_folder

    (tmp_path / "a_file").write_text("")
    with pytest.raises(OutputFolderError, match=f"results folder {tmp_path}/a_file/results cannot be created: "
                                                f"{tmp_path}/a_file is a file, not a folder"):
        check_output_folder(tmp_path / "a_file" / "results", 0)
    with pytest.raises(OutputFolderError, match=r"has [0-9.]+ GiB free on its disk, less than the 1e\+09 GiB this study"
                                                r" asks for \(config min_free_gib\)"):
        check_output_folder(tmp_path / "results", 1e9)
    check_output_folder(tmp_path / "results", 0)  # usable: passes, and leaves nothing behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]
    proc = run_snakemake(tmp_path, embedded_config(results_dir=str(tmp_path / "a_file" / "results")), "-n", check=False)
    assert proc.returncode != 0
    assert f"results folder {tmp_path}/a_file/results/example cannot be created" in proc.stdout + proc.stderr


def test_a_read_only_file_system_is_not_writable_even_for_root(tmp_path):
    from medsynth.fsutil import OutputFolderError, check_output_folder

    try:  # /sys is read-only for every user on Linux; elsewhere there is nothing to test
        with open("/sys/medsynth-probe", "w"):
            pass
        pytest.skip("/sys is writable here")
    except OSError:
        pass
    with pytest.raises(OutputFolderError, match="results folder /sys/medsynth is not writable"):
        check_output_folder("/sys/medsynth", 0)
