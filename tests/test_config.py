"""breastmri/config.py: defaults + YAML + overrides, unknown keys named, numbers typed."""

import pytest

from breastmri.config import DEFAULTS, ConfigError, config_hash, load_config


def test_defaults_without_file():
    assert load_config() == DEFAULTS


def test_yaml_holds_only_differences(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 3\n")
    cfg = load_config(path)
    assert cfg["train"]["epochs"] == 3 and cfg["train"]["batch_size"] == DEFAULTS["train"]["batch_size"]


@pytest.mark.parametrize("text, key", [("trian:\n  epochs: 3\n", "trian"), ("model:\n  nme: unet\n", "model.nme")])
def test_unknown_key_is_named(tmp_path, text, key):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=key):
        load_config(path)


def test_overrides_are_typed_like_their_defaults():
    cfg = load_config(overrides=["train.learning_rate=1e-4", "train.epochs=2", "train.patch_size=null"])
    assert cfg["train"]["learning_rate"] == 1e-4 and isinstance(cfg["train"]["learning_rate"], float)
    assert cfg["train"]["epochs"] == 2 and cfg["train"]["patch_size"] is None
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(overrides=["train.epochs=many"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(overrides=["epochs"])


def test_hash_changes_with_settings():
    assert config_hash(load_config()) != config_hash(load_config(overrides=["seed=1"]))
    assert config_hash(load_config(), ["preprocess"]) == config_hash(load_config(overrides=["seed=1"]), ["preprocess"])


def test_a_saved_run_config_keeps_the_behaviour_of_keys_added_after_it(tmp_path):
    """A run saved before model.context.projection existed had no projection channel: it must load without one,
    while a fresh config (and a saved one that names the key) follows what it says."""
    from breastmri.config import load_run_config, save_config

    cfg = load_config()
    assert cfg["model"]["context"]["projection"] == "guarded"              # today's default
    old = load_config()
    del old["model"]["context"]["projection"]
    del old["train"]["noise2noise_register"]
    save_config(old, tmp_path / "old.yaml")
    assert load_run_config(tmp_path / "old.yaml")["model"]["context"]["projection"] is False
    assert load_run_config(tmp_path / "old.yaml")["train"]["noise2noise_register"] is False  # trained unregistered
    save_config(cfg, tmp_path / "new.yaml")
    assert load_run_config(tmp_path / "new.yaml")["model"]["context"]["projection"] == "guarded"
    assert load_config(tmp_path / "old.yaml")["model"]["context"]["projection"] == "guarded"  # a user's partial YAML
    # --resume / --eval-only without --config read the run's own config the same way, overrides on top
    import main

    (tmp_path / "run").mkdir()
    save_config(old, tmp_path / "run" / "config.yaml")
    args = main.parse_args(["--run-dir", str(tmp_path / "run"), "--resume", "--set", "train.epochs=3"])
    resumed = main.resolve_config(args)
    assert resumed["model"]["context"]["projection"] is False and resumed["train"]["epochs"] == 3
