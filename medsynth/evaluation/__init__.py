"""Entry functions of the downstream and metrics rules: what is compared with what, and the JSON written.

* :func:`run_downstream` (rule ``downstream``, :mod:`.downstream_run`): one training setting of the downstream segmenter
  (ViCTr Table 3, MedSyn2 Table 5). ``real`` / ``real_aug`` train on the real ``train_select``
  slices; ``real_synth-<model>`` adds ``synthetic_fraction`` x as many synthetic slices of that model
  (its default sampling run on the ``train`` condition set, labelled with the masks they were
  generated from, shuffled with the downstream seed); ``synth_only-<model>`` uses the synthetic
  slices alone. Scored on the real ``test_select`` slices: per-channel Dice / Jaccard / HD95 / ASD
  (MONAI, distances in mm from the slice pixel spacing), mDSC and mHD95 over the channels present.
* :func:`evaluate_run` (rule ``metrics``, :mod:`.runs`; the files and settings of a run: :class:`RunFiles`,
  :class:`RunSettings`): one sampling run on the ``eval`` condition set against the
  real slices whose masks and prompts conditioned it (one generated image per real slice):

  - ``fid`` / ``kid``: torch-fidelity's InceptionV3, only with local weights (else ``status``
    "unavailable: no Inception weights ...", value null);
  - ``fd_self``: Frechet distance + KID on the encoder of the downstream segmenter trained on real
    slices (setting ``metrics.extractor_setting``), the embedded study's medical-feature extractor;
  - ``windowed``: that FD per CT window (MedSyn2 Table 1, axial plane for 2D studies);
  - ``pairs``: SSIM / PSNR of each generated image against the real image of its condition;
  - ``mask_fidelity``: the same segmenter re-segments the generated images; Dice / Jaccard / HD95 /
    ASD against the conditioning masks (``generated_vs_gt``) and, as the segmenter's own error
    floor, on the real images (``real_vs_gt``) (MedSyn2 Table 7);
  - ``controllability`` (models trained with graded prompts): the severity grade measured on the
    re-segmented generated image (liver fraction, :mod:`medsynth.generator.data`) against the
    prompted grade; accuracy and confusion counts; the real images' accuracy beside it. Grades read
    from case metadata (``generator.severity.from_field``) have no image measure: ``status`` "not
    applicable" instead of a circular number.
* :func:`evaluate_volume_run` (3D studies, :mod:`.volumes`): the same record for a sampling run of volumes
  ``(N, 1, X, Y, Z)`` against the real volumes of its condition set, with the 2D self-trained
  extractor applied to slices: ``windowed`` holds MedSyn2 Table 1's FD per CT window x plane (XY / YZ /
  ZX central 40 % slices, :func:`medsynth.metrics.per_plane_windowed_fd`) with per-window and overall
  means; ``fd_self`` is the unwindowed 2.5D FD (mean over the planes, each plane beside it); slices
  are resized to the extractor's input size; ``mask_fidelity`` re-segments the volumes axial slice by
  axial slice and scores them in 3D.
* :func:`run_volume_downstream` (rule ``volume_downstream``, :mod:`.volume_downstream`): MAISI-v2's downstream
  tumour segmentation on the 3D path: per task (tumour type) a 3D SegResNet trained on the task's real
  training volumes (``real``) or on them plus the volumes generated from their masks (``real_synth``),
  scored by the ROI's per-case Dice on the task's real test volumes, with intervals over the test patients.
* ``run_reference`` (rule ``downstream_reference``, :mod:`.downstream_reference`, imported from there: it
  brings the masks stage's segmenters): a pretrained segmenter (one of ``masks.segmenters``) scored off the
  shelf on a downstream task's real test slices, as the trained settings are (MedSyn2 Table 5's MedPSeg row).
"""

from .downstream_run import meddiff_filter, run_downstream
from .extractor import SELF_EXTRACTOR, SegmenterEncoder, extractor_input_size
from .records import pixel_spacing, voxel_spacing
from .runs import RunFiles, RunSettings, evaluate_run
from .volume_downstream import VOLUME_SETTINGS, run_volume_downstream
from .volumes import evaluate_volume_run

__all__ = [
    "SELF_EXTRACTOR",
    "RunFiles",
    "RunSettings",
    "SegmenterEncoder",
    "VOLUME_SETTINGS",
    "evaluate_run",
    "evaluate_volume_run",
    "extractor_input_size",
    "meddiff_filter",
    "pixel_spacing",
    "run_downstream",
    "run_volume_downstream",
    "voxel_spacing",
]
