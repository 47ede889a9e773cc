"""Stage-2 variants: the merged config of a variant, checked for options that exclude each other.

Torch-free, so that the workflow checks every variant when it parses the config (a dry run already
fails with the variant and the keys named), and ``run_stage2`` checks the config it is given.
"""

from __future__ import annotations

from collections.abc import Mapping

from medsynth.configmerge import variant_config

__all__ = ["stage2_conflicts", "check_stage2", "stage2_variant"]


def _consistency_on(cfg: Mapping) -> bool:
    cons = cfg.get("consistency") or {}
    return bool(float(cons.get("temporal_weight", 0.0)) or float(cons.get("spatial_weight", 0.0)))


def stage2_conflicts(cfg: Mapping) -> list[str]:
    """Every pair of stage-2 options of ``cfg`` that cannot be combined, each naming its keys."""
    objective = str(cfg.get("objective", "flow"))
    reflow = bool((cfg.get("reflow") or {}).get("enabled"))
    dmd = bool((cfg.get("dmd") or {}).get("enabled"))
    adversarial = bool((cfg.get("adversarial") or {}).get("enabled"))
    consistency = _consistency_on(cfg)
    found = []
    if reflow and dmd:
        found.append("stage2.reflow and stage2.dmd exclude each other (dmd makes its own pairs: dmd.pairs)")
    if reflow and objective == "ddpm":
        found.append("stage2.reflow trains a flow: it cannot be combined with stage2.objective: ddpm")
    if dmd and (objective != "flow" or consistency):
        found.append("stage2.dmd distils a flow teacher: set stage2.objective: flow and the"
                     " stage2.consistency weights to 0")
    if consistency and objective == "ddpm":
        found.append("the stage2.consistency losses compare velocity fields: set them to 0 for"
                     " stage2.objective: ddpm")
    if bool((cfg.get("contrastive") or {}).get("enabled")) and objective == "ddpm":
        found.append("stage2.contrastive compares velocity fields: it cannot be combined with stage2.objective: ddpm")
    if adversarial and (dmd or objective == "ddpm"):
        found.append("stage2.adversarial applies to the flow / tweedie objectives, not to stage2.dmd or ddpm")
    method = cfg.get("method", "lora")
    if method not in ("lora", "full"):
        found.append(f"stage2.method must be 'lora' or 'full', got {method!r}")
    return found


def check_stage2(cfg: Mapping, variant: str | None = None) -> None:
    """Raise ``ValueError`` listing every conflict of the stage-2 config ``cfg`` (of ``variant``)."""
    found = stage2_conflicts(cfg)
    if found:
        where = f"variant {variant!r}: " if variant else ""
        raise ValueError(where + "; ".join(found))


def stage2_variant(stage2: Mapping, variants: Mapping, name: str) -> dict:
    """Config ``stage2`` with the overrides of variant ``name`` merged in, checked for conflicts."""
    cfg = variant_config(stage2, variants, name)
    check_stage2(cfg, name)
    return cfg
