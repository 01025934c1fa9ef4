"""Validation against people (human-labelled sets, agreement of judges with them, the labelling page).

* :mod:`calib.human.sets`: load human-labelled sets (calib's ``.npz``; the Tramèr et al. 2020 layout);
* :mod:`calib.human.agreement`: a judge's agreement with people, with intervals;
* :mod:`calib.human.validate`: ``calib validate``, every judge of a run against the sets.
"""
from calib.human.agreement import agreement, roc_points, wilson
from calib.human.sets import HumanSet, load_calib_npz, load_human_sets, load_tramer_set, save_human_set
from calib.human.validate import check_sets, load_validation, save_validation, validate_run

__all__ = ["HumanSet", "load_human_sets", "load_calib_npz", "load_tramer_set", "save_human_set", "agreement",
           "roc_points", "wilson", "check_sets", "validate_run", "save_validation",
           "load_validation"]
