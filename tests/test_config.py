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


def test_finetune_shakespeare_is_nanogpts_finetune_config():
    from common.schedule import learning_rate
    model, train = get_preset("finetune-shakespeare")
    # config/finetune_shakespeare.py
    assert (train.batch_size, train.grad_accum, train.max_iters, train.lr, train.decay_lr) == (1, 32, 20, 3e-5, False)
    assert (train.eval_interval, train.eval_iters, model.block_size) == (5, 40, 1024)
    # nanoGPT train.py's defaults for the rest
    assert (train.beta1, train.beta2, train.weight_decay, train.grad_clip, model.dropout) == (0.9, 0.95, 0.1, 1.0, 0.0)
    assert {learning_rate(step, train) for step in range(train.max_iters)} == {3e-5}
    # GPT-2 small's shape when no --init-from gives one
    assert (model.n_layer, model.n_head, model.n_embd, model.bias, model.gelu_approximate) == (12, 12, 768, True, True)


def test_cpu_finetune_is_the_same_run_on_shorter_rows_and_fewer_micro_batches():
    model, train = get_preset("finetune-shakespeare")
    cpu_model, cpu_train = get_preset("finetune-shakespeare-cpu")
    assert (cpu_model.block_size, cpu_train.grad_accum, cpu_train.eval_iters) == (256, 4, 4)
    assert cpu_model == GPTConfig(**{**vars(model), "block_size": 256})
    assert cpu_train == TrainConfig(**{**vars(train), "grad_accum": 4, "eval_iters": 4})
    # tiny through --set, as the tests run it without --init-from
    tiny, _ = apply_overrides(cpu_model, cpu_train, {"n_layer": "1", "n_head": "2", "n_embd": "16", "block_size": "16"})
    assert (tiny.n_layer, tiny.n_embd, tiny.block_size) == (1, 16, 16)


@pytest.mark.parametrize("kwargs, words", [
    ({"n_embd": 100, "n_head": 3}, "divisible"),
    ({"n_layer": 0}, "positive"),
    ({"dropout": 1.0}, "dropout"),
    ({"layer_norm_eps": 0.0}, "layer_norm_eps must be positive"),
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


@pytest.mark.parametrize("field", ["lr", "min_lr", "weight_decay", "grad_clip", "eps", "beta1", "beta2"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_floats_are_refused_by_name(field, value):
    with pytest.raises(UserError, match=f"^{field} must be a finite number, got {value.lstrip('-')}|"
                                        f"^{field} must be a finite number, got -inf"):
        apply_overrides(*get_preset("tiny"), {field: value})


@pytest.mark.parametrize("field", ["dropout", "layer_norm_eps"])
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_model_floats_are_refused(field, value):
    with pytest.raises(UserError, match=f"{field} must be a finite number, got {value}"):
        apply_overrides(*get_preset("tiny"), {field: value})


def test_gelu_form_and_epsilon_default_to_the_spec_and_old_configs_still_load():
    from dataclasses import asdict

    from common.spec import GELU_APPROXIMATE, LAYER_NORM_EPS
    for name in ("tiny", "cpu-baby", "shakespeare-char"):
        model, _ = get_preset(name)
        assert (model.gelu_approximate, model.layer_norm_eps) == (GELU_APPROXIMATE, LAYER_NORM_EPS) == (False, 1e-5)
    # config.json and checkpoint metadata written before the fields existed
    saved = {k: v for k, v in asdict(GPTConfig()).items() if k not in ("gelu_approximate", "layer_norm_eps")}
    assert GPTConfig(**saved) == GPTConfig()
    model, _ = apply_overrides(*get_preset("tiny"), {"gelu_approximate": "true", "layer_norm_eps": "1e-6"})
    assert model.gelu_approximate is True and model.layer_norm_eps == 1e-6


@pytest.mark.parametrize("overrides, words", [
    ({"grad_accum": "0"}, "grad_accum must be a positive integer, got 0"),
    ({"decay_lr": "maybe"}, "decay_lr takes true or false"),
    ({"n_layer": "1e400"}, "n_layer takes a int"),  # overflows int(float(...)), once a traceback
    ({"seed": str(2**32)}, "seed must be in"),
    ({"max_iters": str(2**32 + 1)}, "max_iters at most"),
])
def test_out_of_range_integers_are_one_line_errors(overrides, words):
    with pytest.raises(UserError, match=words):
        apply_overrides(*get_preset("tiny"), overrides)
