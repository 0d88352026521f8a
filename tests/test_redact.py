"""bbrctl.redact: what counts as a secret, and that nothing else changes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import assume, given
from hypothesis import strategies as st

from bbrctl.redact import REDACTED, is_secret_key, redact, redact_override, redact_overrides, redact_text

SECRET = st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz0123456789_-", min_size=12, max_size=48)


@pytest.mark.parametrize("name", ["WANDB_API_KEY", "api_key", "apiKey", "HF_TOKEN", "GITHUB_TOKEN", "PGPASSWORD",
                                  "password", "db.password", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID",
                                  "client_secret", "GH_PAT", "SENTRY_DSN", "auth", "MLFLOW_TRACKING_PASSWORD",
                                  "private-key", "signingKey", "credentials"])
def test_secret_looking_names(name):
    assert is_secret_key(name)


@pytest.mark.parametrize("name", ["PWD", "PATH", "HOME", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "key", "keys",
                                  "author", "tokenizer", "max_iter", "weights_backbone", "name", "monkey", "patch",
                                  "sweep", "setup", "passes", "sectors"])
def test_ordinary_names(name):
    assert not is_secret_key(name)


@pytest.mark.parametrize("line,kept", [
    ("export WANDB_API_KEY={s}", "export WANDB_API_KEY="),
    ("export HF_TOKEN=\"{s}\" && echo hi", "&& echo hi"),
    ("export A=1 MY_SECRET={s} B=3", "B=3"),
    ("PGPASSWORD={s} psql -h db", "psql -h db"),
    ("set -gx OPENAI_API_KEY {s}", "set -gx OPENAI_API_KEY"),
    ("git clone https://user:{s}@github.com/a/b.git", "https://user:"),
    ("pip install git+https://1{s}@github.com/a/b", "@github.com/a/b"),
    ("wandb login {s}", "wandb login"),
    ("wandb login --relogin {s}", "--relogin"),
    ("huggingface-cli login --token {s}", "--token"),
    ("tool --password={s} --verbose", "--verbose"),
    ("curl -H 'Authorization: Bearer 1{s}' https://x", "https://x"),
])
@given(secret=SECRET)
def test_secrets_in_setup_lines_are_replaced(line, kept, secret):
    assume(secret not in line and secret not in REDACTED)
    out = redact_text(line.format(s=secret))
    assert secret not in out and REDACTED in out and kept in out
    assert redact_text(out) == out  # idempotent


@given(secret=st.sampled_from(["ghp_" + "a1" * 12, "github_pat_" + "B2_" * 9, "hf_" + "x9" * 15,
                               "sk-ant-" + "q" * 30, "xoxb-1234-5678-abcdefgh", "AKIA" + "ABCDEFGHIJ234567",
                               "glpat-" + "z" * 20]),
       before=st.sampled_from(["echo ", "", "run --opt "]))
def test_tokens_recognised_by_their_shape(secret, before):
    out = redact_text(f"{before}{secret} done")
    assert secret not in out and out.endswith(" done")


@pytest.mark.parametrize("line", ["module load cuda/12.1", "source ~/venvs/bbrctl/bin/activate", "cd $PWD",
                                  "export OMP_NUM_THREADS=4", "export PATH=$HOME/bin:$PATH",
                                  "git clone https://github.com/a/b.git", "ssh://git@github.com/a/b",
                                  "conda activate detection", "basic configuration of everything",
                                  "loss=focal_eiou gamma=0.5", "echo token counts are fine",
                                  "python -m bbrctl train --run-dir /runs/x"])
def test_ordinary_lines_are_unchanged(line):
    assert redact_text(line) == line


def test_redact_replaces_whole_values_under_secret_keys_and_copies():
    cfg = {"launcher": {"setup": ["module load x", "export WANDB_API_KEY=abc123secret"], "name": "slurm"},
           "db": {"password": "hunter2", "credentials": {"user": "me", "n": 7}, "token": None},
           "seed": 0, "flag": True}
    before = json.loads(json.dumps(cfg))
    out = redact(cfg)
    assert cfg == before  # not modified
    assert out["launcher"]["setup"] == ["module load x", f"export WANDB_API_KEY={REDACTED}"]
    assert out["db"] == {"password": REDACTED, "credentials": {"user": REDACTED, "n": REDACTED}, "token": None}
    assert out["seed"] == 0 and out["flag"] is True and out["launcher"]["name"] == "slurm"
    assert redact(out) == out


def test_overrides():
    assert redact_override("+wandb.api_key=abc") == f"+wandb.api_key={REDACTED}"
    assert redact_override("loss=eiou") == "loss=eiou"
    assert redact_override('launcher.setup=["export HF_TOKEN=abc","module load x"]') == \
        f'launcher.setup=["export HF_TOKEN={REDACTED}","module load x"]'
    assert redact_overrides(["a=1", "db.password=x"]) == ["a=1", f"db.password={REDACTED}"]


@given(st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                              st.text(max_size=30)),
                    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=12), kids, max_size=4),
                    max_leaves=20))
def test_redact_is_idempotent_and_keeps_the_shape(obj):
    once = redact(obj)
    assert redact(once) == once
    assert type(once) is type(obj) or isinstance(obj, tuple)


def test_every_shipped_config_file_is_left_unchanged():
    conf = Path(__file__).resolve().parent.parent / "conf"
    files = sorted(conf.rglob("*.yaml"))
    assert len(files) > 30
    for f in files:
        data = yaml.safe_load(f.read_text())
        assert redact(data) == data, f
