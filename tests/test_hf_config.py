"""Method registry vs the method classes, and study-config validation of methods (no job may start on errors)."""

from __future__ import annotations

import inspect

import pytest

from sparse_kernels.registry import (BUDGET_PARAMS, CALIBRATED_BUDGET_PARAMS, METHOD_PARAMS, METHOD_PHASES,
                                     OPT_IN_PARAMS, TASK_PARAM_DEFAULTS, split_method)


def test_registry_matches_method_signatures():
    from sparse_kernels.methods import METHOD_CLASSES

    assert set(METHOD_PHASES) == set(METHOD_CLASSES) | {"dense"}
    for name, cls in METHOD_CLASSES.items():
        assert cls.phase == METHOD_PHASES[name]
        sig = inspect.signature(cls.__init__).parameters
        args = set(sig) - {"self"}
        # every constructor argument is either a config hyperparameter, a budget knob or ratio/nominal_length
        opt_in = OPT_IN_PARAMS.get(name, {})
        assert args == set(METHOD_PARAMS[name]) | set(BUDGET_PARAMS[name]) | set(opt_in) | {"ratio", "nominal_length"}
        assert not set(METHOD_PARAMS[name]) & set(BUDGET_PARAMS[name]) - {"min_budget"}
        assert not set(opt_in) & (set(METHOD_PARAMS[name]) | set(BUDGET_PARAMS[name]))
        for key, default in {**METHOD_PARAMS[name], **opt_in}.items():
            if sig[key].default is not None:               # None = set from the ratio / table in the class
                assert sig[key].default == default and type(sig[key].default) is type(default), (name, key)
        for key in CALIBRATED_BUDGET_PARAMS.get(name, ()):
            assert key in args
        for key in TASK_PARAM_DEFAULTS.get(name, {}):
            assert key in METHOD_PARAMS[name]
    assert METHOD_PARAMS["flexprefill"]["min_budget"] == 512 and METHOD_PARAMS["quest"]["share_pages"] is False


def test_combined_names():
    assert split_method("vertical_slash+quest") == ("vertical_slash", "quest")
    assert split_method("snapkv") == (None, "snapkv") and split_method("dense") == (None, None)
    with pytest.raises(KeyError):
        split_method("quest+snapkv")
    with pytest.raises(KeyError):
        split_method("vertical_slash+block_sparse")


def base(model: str) -> dict:
    return {"samples": 2, "shard_size": 2, "prompt_mode": "direct", "max_new_tokens": 2,
            "models": {"tiny": {"path": model, "dtype": "float32", "device": "cpu"}},
            "tasks": ["ruler_niah"], "lengths": [1024], "methods": {"dense": {}}}


CASES = [
    ("unknown hyperparameter", {"quest": {"ratios": [2], "params": {"page_sise": 8}}},
     ["methods.quest.params.page_sise"]),
    ("budget knob as param", {"snapkv": {"ratios": [2], "params": {"token_capacity": 200}}},
     ["methods.snapkv.params.token_capacity", "compression ratio"]),
    ("wrong type", {"quest": {"ratios": [2], "params": {"share_pages": "yes"}}}, ["methods.quest.params.share_pages"]),
    ("combined unknown hyperparameter", {"vertical_slash+quest": {"ratios": [[2, 4]],
                                                                   "params": {"quest": {"pages": 4}}}},
     ["methods.vertical_slash+quest.params.quest.pages"]),
    ("combined needs pairs", {"vertical_slash+quest": {"ratios": [2]}}, ["methods.vertical_slash+quest.ratios[0]"]),
    ("two decode methods", {"snapkv+quest": {"ratios": [[2, 2]]}}, ["methods.snapkv+quest"]),
    ("paper table lacks length", {"vertical_slash": {"ratios": [2], "calibrate": False}},
     ["methods.vertical_slash.calibrate", "length 1024"]),
    ("calibrate on a method without it", {"quest": {"ratios": [2], "calibrate": True}}, ["methods.quest.calibrate"]),
    ("snapkv budget below forced tokens", {"snapkv": {"ratios": [10]}}, ["methods.snapkv.ratios[0]", "capacity 102"]),
]


@pytest.mark.parametrize("name, methods, needles", CASES, ids=[c[0] for c in CASES])
def test_invalid_method_config_names_the_key(name, methods, needles, tiny_model):
    from workflow_scripts.config import ConfigError, Study

    cfg = base(str(tiny_model))
    cfg["methods"].update(methods)
    with pytest.raises(ConfigError) as err:
        Study(cfg)
    for needle in needles:
        assert needle in str(err.value), str(err.value)


def test_unknown_hyperparameter_stops_snakemake_before_any_job(workflow, tiny_model):
    cfg = base(str(tiny_model))
    cfg["methods"]["vertical_slash"] = {"ratios": [2], "params": {"last_qq": 128}}
    workflow.write_config(cfg)
    proc = workflow.run(check=False)               # a real run: nothing may start
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Invalid configuration" in out
    assert "methods.vertical_slash.params.last_qq" in out
    assert not workflow.path("results").exists() and "Building DAG" not in out


def test_cell_params_and_calibration_plan(tiny_model):
    from workflow_scripts.config import Study, fmt_ratio, wildcard_patterns

    cfg = base(str(tiny_model))
    cfg["tasks"] = ["ruler_niah", "ruler_vt"]
    cfg["methods"].update({"vertical_slash": {"ratios": [2, 4]}, "quest": {"ratios": [2]},
                           "vertical_slash+quest": {"ratios": [[2, 4], [3, 4]]},
                           "flexprefill": {"ratios": [2], "params": {"min_budget": 256}},
                           "block_sparse+snapkv": {"ratios": [[2, 2]]}})
    study = Study(cfg)
    assert fmt_ratio([10, 7.5]) == "10+7.5" and set(study.ratios["vertical_slash+quest"]) == {"2+4", "3+4"}
    import re

    assert re.fullmatch(wildcard_patterns(study)["ratio"], "10+7.5")
    p = study.cell_params("tiny", "ruler_niah", 1024, "vertical_slash+quest", "2+4", 0)
    assert p["ratio"] == [2.0, 4.0] and p["prefill_method"] == "vertical_slash" and p["decode_ratio"] == 4.0
    assert p["nominal_length"] == 1024
    # task-dependent paper default: V-S estimates with 512 queries on NIAH, 256 elsewhere
    assert p["method_params"]["vertical_slash"]["last_q"] == 512 and p["method_params"]["quest"]["page_size"] == 16
    assert study.cell_params("tiny", "ruler_vt", 1024, "vertical_slash", "2", 0)["method_params"][
        "vertical_slash"]["last_q"] == 256
    # the combined cell shares the standalone method's calibration (same hyperparameters per task)
    assert p["calibration"] == study.calibration_path("tiny", 1024, "vertical_slash", "2")
    assert study.calibration_path("tiny", 1024, "quest", "2") is None
    assert study.calibration_path("tiny", 1024, "block_sparse+snapkv", "2+2") is None
    targets = study.calibration_targets()
    assert len(targets) == 2            # one per calibrated method: V-S (2, 3, 4; shared with the combined cells), FlexPrefill
    spec = study.calibration_params("tiny", 1024, "flexprefill", targets[0].split("params=")[1][:8])
    assert spec["params_by_task"]["ruler_vt"]["min_budget"] == 256 and spec["tasks"] == ["ruler_niah", "ruler_vt"]
    assert spec["ratios"] == [2.0]
    vs = study.calibration_params("tiny", 1024, "vertical_slash", targets[1].split("params=")[1][:8])
    assert vs["ratios"] == [2.0, 3.0, 4.0]
    # cells carry the calibration's identity: equal for the ratios of one calibration, changed with its settings
    ident = study.cell_params("tiny", "ruler_niah", 1024, "vertical_slash", "4", 0)["calibration_identity"]
    assert ident == p["calibration_identity"] and ident is not None
    assert study.cell_params("tiny", "ruler_niah", 1024, "quest", "2", 0)["calibration_identity"] is None
    other = Study({**cfg, "calibration": {"samples": 3}})
    assert other.cell_params("tiny", "ruler_niah", 1024, "vertical_slash", "4", 0)["calibration_identity"] != ident
    dspec = study.calibration_data_params("tiny", "ruler_niah", 1024, "direct")
    assert dspec["first_sample"] == 10**6 and dspec["samples"] == 2
