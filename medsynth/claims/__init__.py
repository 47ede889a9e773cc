"""The claims table: each headline claim of the four papers, its published effect recomputed from the
paper's own tables (and checked against its text), the study's effect with a bootstrap interval, and a
verdict (reproduced, contradicted, not resolvable at this scale).

Claims are data (``config/claims.yaml``, read by :func:`load_claims`); :func:`record_paths` lists the
records they need, :func:`claims_table` builds the table.
"""

from .published import PublishedEffect, missing_rows, published_effect
from .records import load_records, record_paths, record_refs
from .reproduced import ReproducedEffect, reproduced_effect
from .spec import Claim, Claims, ClaimsError, RecordRef, load_claims, parse_claims, study_roles
from .table import COLUMNS, claims_table
from .verdict import verdict

__all__ = ["COLUMNS", "Claim", "Claims", "ClaimsError", "PublishedEffect", "RecordRef", "ReproducedEffect",
           "claims_table", "load_claims", "load_records", "missing_rows", "parse_claims", "published_effect",
           "record_paths", "record_refs", "reproduced_effect", "study_roles", "verdict"]
