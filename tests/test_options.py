"""util/options.py: the run, train and evaluate commands hand their whole parsed options to the
library as one dataclass; every field must come from the command line."""

from __future__ import annotations

import dataclasses

import pytest

from skippipe.cli import build_parser
from skippipe.runtime.launch.prepare import RunOptions
from skippipe.train.study import EvalOptions, StudyOptions
from skippipe.util.options import options_from


@pytest.mark.parametrize(
    "argv, cls",
    [
        (["run", "0", "6", "ca-partial", "2", "--fail", "node=3,iteration=1,how=crash"], RunOptions),
        (["train", "settings/tiny.toml", "--variant", "random", "--iterations", "3"], StudyOptions),
        (["evaluate", "runs/x", "--sweep", "--omit-stages", "2"], EvalOptions),
    ],
)
def test_every_option_field_is_a_parsed_argument(argv, cls):
    args = build_parser(argv).parse_args(argv)
    opts = options_from(cls, args)
    for field in dataclasses.fields(cls):
        assert hasattr(args, field.name), f"{cls.__name__}.{field.name} is not an option"
        assert getattr(opts, field.name) == getattr(args, field.name)
