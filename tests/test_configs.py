"""Every config composes into the schema; Hydra's silent failure modes are caught."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import experiments
from experiments.run import ConfigError, resolve

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
EXPS = sorted(p.stem for p in (CONFIGS / "exp").glob("*.yaml"))
NORMS = sorted(p.stem for p in (CONFIGS / "norm").glob("*.yaml"))
SWEEPS = sorted(p.stem for p in (CONFIGS / "sweep").glob("*.yaml"))


def _compose(*overrides: str, hydra: bool = False):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


SCALES = ("paper", "small", "tiny")


def test_every_experiment_file_is_an_implemented_package_and_vice_versa():
    assert experiments.available() == EXPS
    for exp in EXPS:  # each has its three scales
        assert sorted(p.stem for p in (CONFIGS / "exp" / exp).glob("*.yaml")) == sorted(SCALES)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("exp", EXPS)
def test_experiment_composes_at_top_level(exp, scale):
    cfg = _compose(f"+exp={exp}", f"scale={scale}")
    # Without `# @package _global_` everything would silently nest under `exp`.
    assert "exp" not in cfg
    assert cfg.name == exp
    conf, resolved, module = resolve(cfg)
    assert module.__name__ == f"experiments.{exp}"
    assert isinstance(conf.data, module.DataConfig)
    assert isinstance(conf.model, module.ModelConfig)
    assert resolved["train"]["seed"] == resolved["seed"]
    assert resolved["train"]["optim"] == resolved["optim"]
    assert conf.scale == scale


def test_scale_deltas_apply_and_user_overrides_win():
    paper, _, _ = resolve(_compose("+exp=pmnist"))
    tiny, _, _ = resolve(_compose("+exp=pmnist", "scale=tiny"))
    mine, _, _ = resolve(_compose("+exp=pmnist", "scale=tiny", "train.steps=7"))
    assert (paper.train.epochs, paper.model.hidden) == (60, [1000, 1000])
    assert (tiny.train.steps, tiny.model.hidden) == (40, [64])
    assert mine.train.steps == 7


def test_unknown_scale_and_unimplemented_experiment_are_named(monkeypatch):
    from experiments.run import precheck

    with pytest.raises(ConfigError, match="scale=huge"):
        precheck(["+exp=pmnist", "scale=huge"])
    # A paper experiment without a package (the paper's convolutional-network remark, say).
    monkeypatch.setattr(experiments, "PAPER_EXPERIMENTS", (*experiments.PAPER_EXPERIMENTS, "cnn"))
    with pytest.raises(experiments.UnknownExperimentError, match="'cnn' is not implemented yet"):
        precheck(["+exp=cnn"])
    with pytest.raises(experiments.UnknownExperimentError, match="unknown experiment 'nope'"):
        precheck(["+exp=pmnist,nope"])


def test_experiment_files_open_with_package_and_run_comment():
    for exp in EXPS:
        lines = (CONFIGS / "exp" / f"{exp}.yaml").read_text().splitlines()
        assert lines[0] == "# @package _global_", exp
        header = "\n".join(line for line in lines if line.startswith("#"))
        for what in ("python -m experiments.run", "Expected", "Runtime"):
            assert what in header, f"{exp}.yaml header lacks {what!r}"


@pytest.mark.parametrize("norm", NORMS)
def test_every_normaliser_composes(norm):
    conf, _, _ = resolve(_compose("+exp=pmnist", f"norm={norm}"))
    spec = OmegaConf.load(CONFIGS / "norm" / f"{norm}.yaml")
    assert conf.norm.name == spec.name  # e.g. batch_everywhere: name batch, placement everywhere
    assert conf.norm.placement == spec.get("placement", "paper")


def test_overrides_reach_the_dataclasses():
    conf, _, _ = resolve(
        _compose("+exp=pmnist", "seed=7", "optim.learning_rate=0.01", "data.batch_size=4")
    )
    assert (conf.seed, conf.train.seed) == (7, 7)
    assert conf.train.optim.learning_rate == 0.01
    assert conf.data.batch_size == 4


@pytest.mark.parametrize(
    "override, message",
    [
        ("+typo=1", "typo"),
        ("+data.batch_sz=4", "batch_sz"),
        ("+model.hiden=[10]", "hiden"),
        ("data.batch_size=abc", "batch_size"),
        ("data.batch_size=0", "data.batch_size=0"),
        ("optim.schedule=warp", "optim.schedule='warp'"),
        ("norm.placement=nowhere", "norm.placement='nowhere'"),
        ("train.select_mode=best", "select_mode"),
    ],
)
def test_mistyped_keys_and_types_are_rejected(override, message):
    with pytest.raises(ConfigError, match=message):
        resolve(_compose("+exp=pmnist", override))


def test_hydra_rejects_unknown_keys_without_plus():
    with pytest.raises(Exception, match="batch_sz"):
        _compose("+exp=pmnist", "data.batch_sz=4")


def test_unknown_experiment_lists_known_ones():
    with pytest.raises(experiments.UnknownExperimentError, match="pmnist"):
        experiments.load("nope")
    with pytest.raises(experiments.UnknownExperimentError, match="no experiment chosen"):
        resolve(_compose())


@pytest.mark.parametrize("sweep", SWEEPS)
def test_sweep_files_define_grids(sweep):
    # The paper sweep brings its own experiment (a `paper=` option); the others need one.
    cfg = _compose(*([] if sweep == "paper" else ["+exp=pmnist"]), f"+sweep={sweep}", hydra=True)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    assert params, sweep
    for key in params:  # every swept key exists in the config, or is a config group (paper=)
        assert OmegaConf.select(cfg, key) is not None or (CONFIGS / key).is_dir(), key


def test_sweep_job_directories_stay_short_and_unique():
    from experiments.run import SUBDIR_CHARS, short_name

    long_a = ",".join(f"data.option_{i}=/a/very/long/path/{i}" for i in range(20))
    long_b = long_a.replace("option_19", "option_XX")
    assert short_name("norm=layer,seed=1") == "norm=layer,seed=1"
    assert len(short_name(long_a)) == SUBDIR_CHARS and "/" not in short_name(long_a)
    assert short_name(long_a) != short_name(long_b)
    cfg = _compose("+exp=pmnist", hydra=True)
    assert "short_name" in OmegaConf.to_container(cfg.hydra.sweep)["subdir"]
