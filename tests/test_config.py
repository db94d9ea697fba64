"""Config validation, presets and command-line overrides."""
import pytest

from common.config import GPTConfig, TrainConfig, apply_overrides, get_preset
from common.errors import UserError


def test_cpu_baby_is_nanogpts_cpu_setting():
    model, train = get_preset("cpu-baby")
    assert (model.n_layer, model.n_head, model.n_embd, model.block_size) == (4, 4, 128, 64)
    assert (model.dropout, model.bias) == (0.0, False)
    assert (train.batch_size, train.max_iters, train.lr, train.min_lr, train.warmup_iters) == (12, 2000, 1e-3, 1e-4, 100)
    assert (train.beta2, train.weight_decay, train.grad_clip, train.eps) == (0.99, 0.1, 1.0, 1e-8)


def test_auto_preset_depends_on_the_device():
    assert get_preset("auto", accelerator=True) == get_preset("shakespeare-char")
    assert get_preset("auto", accelerator=False) == get_preset("cpu-baby")
    model, train = get_preset("shakespeare-char")
    assert (model.n_layer, model.n_embd, model.block_size, model.dropout, train.batch_size) == (6, 384, 256, 0.2, 64)


@pytest.mark.parametrize("kwargs, words", [
    ({"n_embd": 100, "n_head": 3}, "divisible"),
    ({"n_layer": 0}, "positive"),
    ({"dropout": 1.0}, "dropout"),
])
def test_bad_model_configs_say_why(kwargs, words):
    with pytest.raises(UserError, match=words):
        GPTConfig(**kwargs)


@pytest.mark.parametrize("kwargs, words", [
    ({"lr": 1e-4, "min_lr": 1e-3}, "min_lr"),
    ({"dtype": "float16"}, "float32 or bfloat16"),
    ({"warmup_iters": 300, "lr_decay_iters": 200}, "lr_decay_iters"),
    ({"batch_size": 0}, "batch_size"),
])
def test_bad_train_configs_say_why(kwargs, words):
    with pytest.raises(UserError, match=words):
        TrainConfig(**kwargs)


def test_overrides_parse_types_and_follow_max_iters():
    model, train = apply_overrides(*get_preset("cpu-baby"),
                                   {"n_layer": "2", "bias": "true", "lr": "3e-4", "min_lr": "3e-5",
                                    "max_iters": "500", "compile": "off"})
    assert model.n_layer == 2 and model.bias is True
    assert train.lr == 3e-4 and train.max_iters == 500 and train.compile is False
    assert train.lr_decay_iters == 500  # the cosine ends where the shortened run ends


def test_unknown_override_and_bad_values_are_one_line_errors():
    with pytest.raises(UserError, match="unknown config field 'n_layers'"):
        apply_overrides(*get_preset("tiny"), {"n_layers": "3"})
    with pytest.raises(UserError, match="n_layer takes a int"):
        apply_overrides(*get_preset("tiny"), {"n_layer": "three"})
    with pytest.raises(UserError, match="unknown preset"):
        get_preset("huge")
