"""Every bad config is refused before work starts: one line naming the field, exit code 2."""

import dataclasses

import pytest

from metajax import cli
from metajax.experiment import ConfigError, Rule, Steps, validate_config

BAD = [  # (experiment, overrides, the start of the message after "metajax run NAME: ")
    ("sinusoid_maml", ["meta_batch=0"], "meta_batch: expected an int >= 1"),
    ("sinusoid_maml", ["meta_batch=100000000"], "meta_batch: expected an int >= 1 and <= 100000"),
    ("sinusoid_maml", ["inner_steps=0"], "inner_steps: expected an int >= 1"),
    ("sinusoid_maml", ["k_shot=0"], "k_shot: expected an int >= 1"),
    ("sinusoid_maml", ["steps_per_call=0"], "steps_per_call: expected an int >= 1"),
    ("sinusoid_maml", ["num_steps=0"], "num_steps: expected an int >= 1"),
    ("sinusoid_maml", ["num_steps=1000000000000000000000000000000"],
     "num_steps: expected an int >= 1 and <= 1e+09; got 1000000000000000000000000000000"),
    ("sinusoid_maml", ["outer_lr=-0.001"], "outer_lr: expected a float > 0; got -0.001"),
    ("sinusoid_maml", ["outer_lr=nan"], "outer_lr: expected a float > 0; got nan"),
    ("sinusoid_maml", ["inner_lr=-1"], "inner_lr: expected a float >= 0"),
    ("sinusoid_maml", ["eval_steps="], "eval_steps: expected at least one value"),
    ("sinusoid_maml", ["baseline_lrs=0,0.1"], "baseline_lrs: expected every value > 0; got 0.0"),
    ("sinusoid_maml", ["test_tasks=1"], "test_tasks: expected an int >= 2"),
    ("sinusoid_maml", ["activation=sigmoidx"],
     "activation: expected one of ('relu', 'tanh'); got 'sigmoidx'"),
    ("sinusoid_maml", ["plot_tasks=20", "test_tasks=10"],
     "plot_tasks: expected at most test_tasks (10); got 20"),
    ("omniglot_maml", ["n_way=1"], "n_way: expected an int >= 2"),
    ("omniglot_maml", ["n_way=5000"], "n_way: expected at most 1692 (the test classes of the "
                                      "'vinyals' split); got 5000"),
    ("omniglot_maml", ["k_shot=10", "n_query=15"],
     "n_query: expected k_shot + n_query <= 20 (the images of an Omniglot character)"),
    ("omniglot_maml", ["split=random"], "split: expected one of ('vinyals', 'maml')"),
    ("omniglot_maml", ["n_way=2", "cross_domain_way=5"], "cross_domain_way: expected at most "
                                                         "n_way = 2 (the classifier head"),
    ("fewshot_protonet", ["n_informative=64"], "n_informative: expected at most dim (32)"),
    ("gp_cnp", ["min_context=11"], "min_context: expected at most max_context (10); got 11"),
    ("gp_cnp", ["lengthscale=0.1,0.2,0.3"], "lengthscale: expected one value (fixed) or two"),
    ("gp_cnp", ["model=gp"], "model: expected one of ('cnp', 'np', 'anp'); got 'gp'"),
    ("lopt_quadratics", ["truncation=30"], "truncation: expected a divisor of num_steps (100)"),
    ("lopt_quadratics", ["horizons=1,0"], "horizons: expected every value >= 1"),
]


@pytest.mark.parametrize("experiment,overrides,message", BAD,
                         ids=[f"{e}:{' '.join(o)}" for e, o, _ in BAD])
def test_a_bad_config_is_one_line_and_exit_code_2(experiment, overrides, message, tmp_path,
                                                   capsys):
    out = tmp_path / "run"
    args = ["run", experiment, "--out", str(out), *sum((["--set", o] for o in overrides), [])]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"metajax run {experiment}: {message}"), err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()  # nothing written, nothing compiled


def test_sweep_refuses_a_bad_base_config_the_same_way(tmp_path, capsys):
    assert cli.main(["sweep", "sinusoid_maml", "--grid", "inner_lr=0.01,0.1", "--out",
                     str(tmp_path / "s"), "--set", "k_shot=0"]) == 2
    assert capsys.readouterr().err.startswith("metajax sweep sinusoid_maml: k_shot: expected")


def test_a_subclass_that_changes_a_default_keeps_the_rule():
    @dataclasses.dataclass(frozen=True)
    class Base:
        steps: Steps = 10

    @dataclasses.dataclass(frozen=True)
    class Child(Base):
        steps: int = 20  # a new default, annotated plainly

    assert validate_config(Child()).steps == 20
    with pytest.raises(ConfigError, match="steps: expected an int >= 1"):
        validate_config(Child(steps=0))


def test_rules_check_types_and_tuple_items():
    from typing import Annotated

    @dataclasses.dataclass(frozen=True)
    class C:
        n: int = 1
        widths: Annotated[tuple[int, ...], Rule(low=1)] = (4,)
        flag: bool = True

    with pytest.raises(ConfigError, match=r"n: expected an int; got 1\.5"):
        validate_config(C(n=1.5))
    with pytest.raises(ConfigError, match=r"n: expected an int; got True"):
        validate_config(C(n=True))
    with pytest.raises(ConfigError, match=r"widths: expected every value >= 1; got 0 in \(4, 0\)"):
        validate_config(C(widths=(4, 0)))
    with pytest.raises(ConfigError, match="widths: expected at least one value"):
        validate_config(C(widths=()))
