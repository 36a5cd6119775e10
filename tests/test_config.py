import pytest

from vitpose_scale.config import ConfigError, load_config

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(p.relative_to(ROOT / "configs").as_posix()
                                        for p in (ROOT / "configs").rglob("*.yaml")))
def test_shipped_configs_load_and_survive_the_saved_round_trip(name, tmp_path):
    """A run writes its resolved config.yaml; loading that file gives the same config back.
    (Grids and parameter counts of every config: tests/test_model.py.)"""
    cfg = load_config(ROOT / "configs" / name)
    cfg.save(tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_dotted_overrides_are_typed():
    cfg = load_config(ROOT / "configs" / "demo.yaml", ["model.depth=2", "optim.lr=1e-3", "model.image_size=[256,192]"])
    assert cfg.model.depth == 2 and cfg.optim.lr == 1e-3 and cfg.model.image_size == [256, 192]


@pytest.mark.parametrize("override,message", [
    ("model.dpeth=4", "unknown key model.dpeth"),
    ("trian.epochs=3", "unknown key trian"),
    ("model.depth=four", "model.depth: got 'four' (str), expected an int"),
    ("model.activation_checkpointing=3", "model.activation_checkpointing: got 3 (int), expected true or false"),
    ("model.image_size=[250,192]", "model.image_size: height 250 is not compatible with the patch grid"),
    ("model.num_heads=5", "model.num_heads: 5 does not divide model.embed_dim 96"),
    ("model.num_heads=0", "model.num_heads: got 0, expected"),  # not a ZeroDivisionError
    ("mae.decoder_heads=0", "mae.decoder_heads: got 0, expected"),
    ("model.attention=flash", "model.attention: got 'flash', expected one of ['plain', 'sdpa', 'triton']"),
    ("parallel.zero_stage=5", "parallel.zero_stage: got 5, expected one of [0, 1, 2, 3]"),
    ("parallel.grad_accum=5", "train.batch_size: 16 is not divisible by parallel.grad_accum 5"),
    ("model.preset=XL", "model.preset: got 'XL'"),
    ("depth", "expected key=value"),
])
def test_bad_configs_name_key_value_and_expectation(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "configs" / "demo.yaml", [override])
    assert message in str(err.value)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("configs/nope.yaml")


def test_saved_config_reloads_equal(tmp_path):
    from vitpose_scale.config import load_config

    cfg = load_config(ROOT / "configs" / "vitpose_g_576x432.yaml",
                      ["train.output_dir=2024", "optim.lr=1e-3", "parallel.offload_optimizer=cpu"])
    cfg.save(tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg and again.train.output_dir == "2024"


@pytest.mark.parametrize("key, says", [("use_udp", "always uses UDP"), ("dark", "eval.decode chooses")])
def test_a_removed_key_is_named_with_what_replaced_it(tmp_path, key, says):
    from vitpose_scale.config import ConfigError, load_config

    path = tmp_path / "old.yaml"
    path.write_text(f"model: {{preset: tiny}}\neval:\n  {key}: false\n")
    with pytest.raises(ConfigError, match=f"eval.{key}: removed .*{says}.*delete the line"):
        load_config(path)
