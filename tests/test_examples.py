"""The examples a user copies: the custom verifier's rules, the checked-in own-data files (as make_data.py writes
them, with the columns docs/own-data.md lists), and the preflight of a verifier that does not import."""

import json
import os

import pytest

from cluster.runner import check_verifier
from examples.my_verifier import verify
from switchpoint.config import ConfigError, load_config
from tests.conftest import REPO

OWN = os.path.join(REPO, "configs", "example_own_data.yaml")


@pytest.mark.parametrize(
    "completion, reference, score",
    [
        (" 3+4=7. Answer: 7", "7", 1.0),
        ("Answer: 07", "7", 1.0),
        ("Answer: 7.0", "7", 1.0),
        ("Answer: 6", "7", 0.0),
        ("Answer: 7. Check: Answer: 7.0", "7", 1.0),  # the same answer twice
        ("Answer: 1 ... Answer: 7", "7", 0.0),  # a hedge scores 0
        ("no answer here", "7", 0.0),
        ("Answer: 7", "seven", 0.0),
        ("Answer: " + "9" * 5000, "7", 0.0),
    ],
)
def test_my_verifier(completion, reference, score):
    assert verify(completion, reference) == score


def test_the_own_data_files_have_the_documented_columns():
    cfg = load_config(OWN)
    cols = cfg.data.columns
    expected = {
        cfg.data.sft_train_path: ({cols.prompt, cols.response}, 48),
        cfg.data.sft_val_path: ({cols.prompt, cols.response}, 16),
        cfg.data.rl_path: ({cols.prompt, cols.response, cols.answer}, 32),
        cfg.data.eval_path: ({cols.prompt, cols.answer}, 16),
    }
    for path, (keys, n) in expected.items():
        rows = [json.loads(line) for line in open(os.path.join(REPO, path))]
        assert len(rows) == n and all(set(r) == keys for r in rows), path
    assert cfg.verifier.kind == "examples.my_verifier:verify"


def test_a_custom_verifier_that_does_not_import_stops_before_ray(monkeypatch):
    monkeypatch.chdir(REPO)
    check_verifier(load_config(OWN))
    with pytest.raises(
        ConfigError, match=r"config key 'verifier.kind'.*cannot import module 'examples.my_verifer'"
    ):
        check_verifier(load_config(OWN, ["verifier.kind=examples.my_verifer:verify"]))
    with pytest.raises(ConfigError, match=r"has no attribute 'verfy'"):
        check_verifier(load_config(OWN, ["verifier.kind=examples.my_verifier:verfy"]))
