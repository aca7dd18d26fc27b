"""Stage keys of measured studies are literals recorded by the runs that trained them.

A new option must leave the keys of every config that does not set it unchanged, or a resumed run (and the zoo)
refuses its own finished stages.  ``train.stop.at_val_acc`` was added while frontier-64 was running and, dumped
as ``null``, changed every target key of a config that uses ``train.stop``; these literals catch that kind of
drift."""
import pytest

from midre.config import load_config, validate_train
from midre.plan import RunPlan

# recorded in run.json by the runs of these configs (seed 0), before any later option existed
RECORDED = {
    "calibration-64-curve": {"targets/nodef": "dcc9c2984136733a", "targets/nodef-lr0.001": "efef30abcdd6128c",
                             "targets/nodef-lr0.005": "82169892ca160edf"},
    "frontier-64": {"targets/nodef": "a2684134422dc571", "targets/nodef-e2": "7d99feaf013e9624",
                    "targets/midre-0.4": "71a4e455a7eb6a37", "targets/midre-0.4-paper": "90e8ff535e0d7181",
                    "priors/lomma-midre-0.4": "d2dc3ea50e88a1d9"},
}


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_stage_keys_of_measured_studies_unchanged(name):
    keys = RunPlan(load_config(name).for_seed(0)).keys
    changed = {k: (v, keys.get(k)) for k, v in RECORDED[name].items() if keys.get(k) != v}
    assert not changed, f"{name}: stage keys changed (recorded, now): {changed}"


def test_unset_stop_options_stay_out_of_the_dump():
    full = validate_train("t", "train", {"epochs": 3, "stop": {"patience": 2}})
    assert "at_val_acc" not in full["stop"]
    assert validate_train("t", "train", {"epochs": 3, "stop": {"at_val_acc": 90}})["stop"]["at_val_acc"] == 90
