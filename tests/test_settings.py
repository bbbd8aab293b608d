import pytest
import yaml

from voxseg.errors import NotFoundError, SettingsError
from voxseg.training.settings import Settings, load_settings, settings_from_dict


def test_defaults_are_nnunets():
    s = Settings()
    t = s.training
    assert (t.epochs, t.iterations_per_epoch, t.val_iterations, t.learning_rate(False), t.momentum, t.weight_decay) == (
        1000,
        250,
        50,
        1e-2,
        0.99,
        3e-5,
    )
    assert t.learning_rate(fine_tuning=True) == 1e-3 and t.warmup_epochs == 0 and t.freeze_encoder_epochs == 0
    assert t.nesterov and t.poly_exponent == 0.9 and t.grad_clip == 12 and t.checkpoint_every is None
    assert s.sampling.oversample_foreground == 0.33
    assert s.augmentation.rotation_p == 0.2 and s.augmentation.mirror_p == 0.5


def test_file_then_overrides_take_precedence(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump({"training": {"epochs": 20, "lr": 0.1}, "loss": {"class_weights": "inverse_frequency"}}))
    s = load_settings(f, ["training.epochs=5", "sampling.oversample_foreground=0.5", "loss.class_weights=[1, 2, 3]"])
    assert s.training.epochs == 5 and s.training.lr == 0.1
    assert s.sampling.oversample_foreground == 0.5
    assert s.loss.class_weights == [1.0, 2.0, 3.0]


def test_int_accepted_for_float_and_null_for_optional():
    s = load_settings(None, ["training.lr=1", "training.batch_size=null", "training.early_stopping_patience=10"])
    assert s.training.lr == 1.0 and isinstance(s.training.lr, float)
    assert s.training.batch_size is None and s.training.early_stopping_patience == 10


@pytest.mark.parametrize(
    "override, phrase",
    [
        ("training.epoch=5", "did you mean 'epochs'"),
        ("trainig.epochs=5", "did you mean 'training'"),
        ("sampling.oversample_foregroud=0.5", "did you mean 'oversample_foreground'"),
        ("training.epochs=ten", "training.epochs must be int"),
        ("training.precision=fp8", "training.precision"),
        ("sampling.oversample_foreground=2", "sampling.oversample_foreground"),
        ("augmentation.preset=heavy", "augmentation.preset"),
        ("training.epochs", "not key=value"),
    ],
)
def test_errors_name_the_key_and_suggest(override, phrase):
    with pytest.raises(SettingsError, match=phrase.replace("(", r"\(").replace(")", r"\)")):
        load_settings(None, [override])


def test_heads_and_presets():
    s = settings_from_dict(
        {
            "heads": [{"name": "edge", "target": "boundary", "loss": "bce", "weight": 0.5}],
            "augmentation": {"preset": "none", "mirror_p": 0.3},
        }
    )
    assert s.heads[0].name == "edge" and s.heads[0].weight == 0.5
    assert s.augmentation.rotation_p == 0.0 and s.augmentation.mirror_p == 0.3
    with pytest.raises(SettingsError, match="unique"):
        settings_from_dict({"heads": [{"name": "a", "target": "foreground"}, {"name": "a", "target": "boundary"}]})


def test_yaml_round_trip_and_digest(tmp_path):
    s = load_settings(None, ["training.epochs=3", "loss.class_weights=sqrt_inverse_frequency"])
    f = tmp_path / "settings.yaml"
    f.write_text(s.to_yaml())
    again = load_settings(f)
    assert again == s and again.digest() == s.digest()
    assert load_settings(None, ["training.epochs=4"]).digest() != s.digest()


def test_missing_or_bad_file(tmp_path):
    with pytest.raises(NotFoundError, match="not found"):
        load_settings(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: [1, 2\n")
    with pytest.raises(SettingsError, match="invalid YAML"):
        load_settings(bad)


def test_on_off_stay_strings_only_true_false_are_booleans(tmp_path):
    s = load_settings(None, ["training.compile=on", "training.final_validation=false"])
    assert s.training.compile == "on" and s.training.final_validation is False
    f = tmp_path / "s.yaml"
    f.write_text("training:\n  compile: off\n  final_validation: true\n")
    s = load_settings(f)
    assert s.training.compile == "off" and s.training.final_validation is True
