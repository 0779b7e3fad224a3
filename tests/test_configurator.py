"""configurator.py: config files and --key=value overrides checked against the typed dataclasses.

Proves that files and overrides apply in argv order (the last one wins); that values parse as Python literals (ints
become floats where a float is declared, bare words stay strings, bools/None/lists parse) and nothing else is
coerced; that each key lands in the dataclass that declares it and the defaults passed in are left untouched; that
every mistake (unknown key, with a suggestion; wrong type, naming key, value and expected type; a missing config file;
a config file that raises; a value that a dataclass's __post_init__ rejects) is a one-line ConfigError; and that every
file in config/ loads against TrainConfig + GPTConfig. Pure Python, no training.
"""

import dataclasses
from pathlib import Path

import pytest

from configurator import ConfigError, configure, parse_value
from model import GPTConfig
from train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted((ROOT / "config").glob("*.py"))


@dataclasses.dataclass
class Knobs:
    """A stand-in config with the types TrainConfig and GPTConfig do not declare (optional values, lists)."""

    name: str = "x"
    layers: list[int] = dataclasses.field(default_factory=lambda: [1])
    limit: int | None = 3
    scale: float = 1.0


def both(argv: list[str]) -> tuple[TrainConfig, GPTConfig]:
    cfg, model_cfg = configure(argv, TrainConfig(), GPTConfig())
    return cfg, model_cfg


def config_file(tmp_path: Path, text: str, name: str = "cfg.py") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def one_line_error(argv: list[str], *defaults: object) -> str:
    with pytest.raises(ConfigError) as e:
        configure(argv, *(defaults or (TrainConfig(), GPTConfig())))
    message = str(e.value)
    assert "\n" not in message
    return message


# --- order and routing ------------------------------------------------------------------------------------------------


def test_files_and_overrides_apply_in_order(tmp_path: Path) -> None:
    first = config_file(tmp_path, "batch_size = 8\nn_layer = 3\nlearning_rate = 1e-3\n", "first.py")
    second = config_file(tmp_path, "batch_size = 16\n", "second.py")

    cfg, model_cfg = both([first, second, "--learning_rate=2e-3"])
    assert (cfg.batch_size, cfg.learning_rate, model_cfg.n_layer) == (16, 2e-3, 3)
    # an override before a file is overridden by that file
    cfg, _ = both(["--batch_size=4", first])
    assert cfg.batch_size == 8
    cfg, _ = both([first, "--batch_size=4", "--batch_size=5"])
    assert cfg.batch_size == 5


def test_keys_go_to_the_dataclass_that_declares_them() -> None:
    train_defaults, model_defaults = TrainConfig(), GPTConfig(bias=False)
    cfg, model_cfg = configure(["--n_layer=2", "--batch_size=3", "--dropout=0.1"], train_defaults, model_defaults)
    assert isinstance(cfg, TrainConfig) and isinstance(model_cfg, GPTConfig)
    assert (cfg.batch_size, model_cfg.n_layer, model_cfg.dropout) == (3, 2, 0.1)
    assert not hasattr(cfg, "n_layer") and not hasattr(model_cfg, "batch_size")
    # the defaults given to configure are not mutated, and a default set by the caller survives
    assert (train_defaults.batch_size, model_defaults.n_layer) == (12, 12)
    assert model_cfg.bias is False
    # everything not named keeps its default
    assert dataclasses.replace(cfg, batch_size=12) == TrainConfig()
    assert dataclasses.replace(model_cfg, n_layer=12, dropout=0.0) == GPTConfig(bias=False)


def test_config_file_skips_imports_functions_and_private_names(tmp_path: Path) -> None:
    path = config_file(
        tmp_path, "import math\n_side = 4\ndef helper():\n    return 1\nbatch_size = int(math.sqrt(16))\n"
    )
    cfg, _ = both([path])
    assert cfg.batch_size == 4


# --- parsing and types ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, value",
    [
        ("3", 3),
        ("1e-3", 0.001),
        ("True", True),
        ("False", False),
        ("None", None),
        ("[2, 4]", [2, 4]),
        ("'quoted'", "quoted"),
        ("gpt2", "gpt2"),
        ("out/run-1", "out/run-1"),
        ("", ""),
    ],
)
def test_parse_value(raw: str, value: object) -> None:
    parsed = parse_value(raw)
    assert parsed == value and type(parsed) is type(value)


def test_int_becomes_float_where_a_float_is_declared() -> None:
    cfg, model_cfg = both(["--learning_rate=1", "--dropout=0"])
    assert cfg.learning_rate == 1.0 and type(cfg.learning_rate) is float
    assert model_cfg.dropout == 0.0 and type(model_cfg.dropout) is float


def test_bool_none_list_and_str_values() -> None:
    cfg, model_cfg = both(["--compile=False", "--bias=True", "--dataset=shakespeare_char", "--init_from=gpt2"])
    assert cfg.compile is False and model_cfg.bias is True
    assert (cfg.dataset, cfg.init_from) == ("shakespeare_char", "gpt2")

    (knobs,) = configure(["--limit=None", "--layers=[2, 4]", "--name=run-7", "--scale=2"], Knobs())
    assert knobs == Knobs(name="run-7", layers=[2, 4], limit=None, scale=2.0)
    (knobs,) = configure(["--limit=5", "--layers=[]"], Knobs())
    assert (knobs.limit, knobs.layers) == (5, [])


@pytest.mark.parametrize(
    "arg, key, value, expected",
    [
        ("--batch_size=abc", "batch_size", "'abc'", "int"),
        ("--batch_size=2.5", "batch_size", "2.5", "int"),
        ("--batch_size=True", "batch_size", "True", "int"),  # a bool is not an int here
        ("--learning_rate=fast", "learning_rate", "'fast'", "float"),
        ("--compile=1", "compile", "1", "bool"),
    ],
)
def test_wrong_type_names_key_value_and_expected_type(arg: str, key: str, value: str, expected: str) -> None:
    message = one_line_error([arg])
    assert message.startswith(f"{key} = {value} ")
    assert message.endswith(f"expected {expected}")


def test_wrong_type_in_a_list_or_optional() -> None:
    assert "expected a list of int" in one_line_error(["--layers=[1, 'a']"], Knobs())
    assert "expected a list of int" in one_line_error(["--layers=a"], Knobs())
    assert "expected int or None" in one_line_error(["--limit=high"], Knobs())


def test_one_item_is_a_list_of_one() -> None:
    (knobs,) = configure(["--layers=3"], Knobs())
    assert knobs.layers == [3]


def test_wrong_type_in_a_config_file_names_the_file(tmp_path: Path) -> None:
    path = config_file(tmp_path, "n_layer = '12'\n")
    message = one_line_error([path])
    assert "n_layer = '12'" in message and path in message and "expected int" in message


# --- mistakes ---------------------------------------------------------------------------------------------------------


def test_unknown_key_suggests_the_closest(tmp_path: Path) -> None:
    message = one_line_error(["--n_layers=2"])
    assert "'n_layers'" in message and "did you mean 'n_layer'?" in message
    message = one_line_error([config_file(tmp_path, "learnig_rate = 1e-3\n")])
    assert "'learnig_rate'" in message and "did you mean 'learning_rate'?" in message
    assert "did you mean" not in one_line_error(["--zzzz=1"])


def test_argument_without_value() -> None:
    assert "--key=value" in one_line_error(["--compile"])


def test_missing_config_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.py")
    message = one_line_error([missing])
    assert missing in message and "not found" in message


def test_config_file_that_raises(tmp_path: Path) -> None:
    path = config_file(tmp_path, "batch_size = 4\nn_layer = 1 / 0\n")
    message = one_line_error([path])
    assert path in message and "ZeroDivisionError" in message


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--n_embd=30", "--n_head=4"], "n_embd = 30 must be divisible by n_head = 4"),
        (["--dropout=1.5"], "dropout = 1.5"),
        (["--n_layer=0"], "n_layer = 0 must be a positive integer"),
        (["--batch_size=0"], "batch_size = 0 must be a positive integer"),
        (["--dtype=float64"], "dtype = 'float64' must be one of"),
        (["--nonfinite=ignore"], "nonfinite = 'ignore' must be one of stop, skip"),
        (["--init_from=/no/such/dir"], "init_from = '/no/such/dir'"),
    ],
)
def test_post_init_checks_surface_as_config_errors(argv: list[str], words: str) -> None:
    assert words in one_line_error(argv)


def test_post_init_sees_the_combined_values() -> None:
    # n_embd=30 alone fails against the default n_head=12; with n_head=5 from a later argument it is valid
    _, model_cfg = both(["--n_embd=30", "--n_head=5"])
    assert (model_cfg.n_embd, model_cfg.n_head) == (30, 5)


# --- the shipped configs ----------------------------------------------------------------------------------------------


def test_config_dir_is_not_empty() -> None:
    assert len(CONFIG_FILES) >= 5


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_every_config_file_loads(path: Path) -> None:
    cfg, model_cfg = configure([str(path)], TrainConfig(), GPTConfig(bias=False))
    assert isinstance(cfg, TrainConfig) and isinstance(model_cfg, GPTConfig)
    # each file changes something, so it was read (not silently skipped)
    assert cfg != TrainConfig() or model_cfg != GPTConfig(bias=False)


def test_string_setting_that_looks_like_a_number_stays_a_string(tmp_path: Path) -> None:
    cfg, _ = both(["--out_dir=1e-3", "--wandb_run_name=2024", "--dataset=[1]"])
    assert (cfg.out_dir, cfg.wandb_run_name, cfg.dataset) == ("1e-3", "2024", "[1]")
    # in a config file a value is Python: a list where a string belongs is still an error
    assert one_line_error([config_file(tmp_path, "dataset = [1]\n")]).endswith("expected str")
