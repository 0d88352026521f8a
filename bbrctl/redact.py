"""Which values look secret, and how they are replaced before anything is written.

Contract (pure functions, no I/O, stdlib only):

* :func:`redact` returns a deep copy of plain data (dicts, lists, strings, numbers) in
  which every secret-looking value is :data:`REDACTED`; the input is not modified.
  Applying it twice gives the same result as once.
* A **key** looks secret when one of its words (split at ``_ - .`` and camelCase) is a
  password/token/secret/credential word, ends in one (``PGPASSWORD``, ``GH_PAT``), or
  the words pair as ``api key``, ``access key``, ``private key``, ... The value under
  such a key is replaced whole (every scalar leaf, if it is a dict or a list).
* In any **string** (setup lines, override strings, error messages), these are replaced:
  shell assignments of secret-looking names (``export WANDB_API_KEY=...``,
  ``HF_TOKEN=... cmd``, fish's ``set -gx NAME VALUE``); command-line flags with
  secret-looking names (``--token X``, ``--password=X``); ``wandb login KEY``; the
  password of a URL (``https://user:PASS@host``) and a token used as a URL's user
  (``https://ghp_xxx@github.com``); ``Authorization: Bearer X``-style credentials; and
  tokens whose own shape gives them away (GitHub ``ghp_``/``github_pat_``, GitLab
  ``glpat-``, Hugging Face ``hf_``, ``sk-...`` API keys, Slack ``xox?-``, AWS
  ``AKIA...``).
* Everything else is returned unchanged (tests check every shipped config).

What is *not* caught: a bare secret with no telling name or shape (``echo abc123``).
Secrets belong in the environment (``WANDB_API_KEY``), which bbrctl never writes.

Callers: the run directory writer (config.yaml, job.json), the sweep manifest
(sweep.json, launch records included), train.log / results.json errors, and the W&B
sinks (config, overrides, command-line arguments). The SLURM batch script is the one
file that keeps the real ``launcher.setup`` lines: it has to run them.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

REDACTED = "<redacted>"

# Words that make a key (or a shell variable, or a flag) secret on their own.
_SECRET_WORDS = {"password", "passwd", "passphrase", "secret", "token", "apikey", "credential",
                 "credentials", "auth", "authorization", "pat", "dsn", "privatekey", "accesskey", "secretkey",
                 "sessiontoken", "cookie"}
# A word ending in one of these is secret too (PGPASSWORD, GITHUBTOKEN, MYAPIKEY).
_SECRET_SUFFIXES = ("password", "passwd", "token", "secret", "apikey", "accesskey", "privatekey")
# Pairs "<first> key" that name a secret (api_key, ACCESS_KEY, signingKey).
_KEY_PREFIXES = {"api", "access", "private", "secret", "signing", "encryption", "client", "master", "license",
                 "account", "service"}

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SPLIT = re.compile(r"[^A-Za-z0-9]+")


def key_words(name: str) -> list[str]:
    """``"wandbApiKey"`` / ``"WANDB_API_KEY"`` / ``"wandb.api-key"`` -> ["wandb", "api", "key"]."""
    return [w.lower() for w in _SPLIT.split(_CAMEL.sub("_", str(name))) if w]


def is_secret_key(name: Any) -> bool:
    """True when a config key, variable or flag name says its value is a secret."""
    if not isinstance(name, str):
        return False
    words = key_words(name)
    for i, w in enumerate(words):
        if w in _SECRET_WORDS or w.endswith(_SECRET_SUFFIXES):
            return True
        if w == "key" and i > 0 and words[i - 1] in _KEY_PREFIXES:
            return True
    return False


# A shell word: quoted, or a run of characters that end neither the word nor an enclosing
# YAML/Hydra list (so `["export K=v"]` keeps its `"]`). Backslash escapes are kept whole.
_WORD = r"""(?:"(?:\\.|[^"\\])*"|'[^']*'|(?:\\.|[^\s;&|'"`\[\]{}(),\\])+)"""
_ASSIGN = re.compile(r"(?P<pre>(?:^|(?<=[\s;&|(`\[\"']))(?:export\s+|declare\s+-x\s+|local\s+|readonly\s+)?)"
                     r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>" + _WORD + ")")
_FISH_SET = re.compile(r"(?P<pre>\bset\s+(?:-[A-Za-z]+\s+)*)(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s+(?P<value>" + _WORD + ")")
_FLAG = re.compile(r"(?P<pre>(?:^|(?<=[\s\[\"']))--?(?P<name>[A-Za-z][A-Za-z0-9_-]*)(?:=|\s+))(?P<value>" + _WORD + ")")
_WANDB_LOGIN = re.compile(r"(?P<pre>\bwandb\s+login(?:\s+--?[A-Za-z-]+)*\s+)(?P<value>[^\s'\"`;&|\])}]+)")
_URL_PASSWORD = re.compile(r"(?P<pre>\b[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@'\"]*:)(?P<value>[^/\s@'\"]+)(?=@)")
# A token as a URL's user (https://TOKEN@host): 12+ characters with a digit; "git@" stays.
_URL_TOKEN_USER = re.compile(r"(?P<pre>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<value>(?=[A-Za-z_-]*[0-9])[A-Za-z0-9_\-]{12,})(?=@)")
# HTTP credentials (curl -H "Authorization: Bearer ..."): at least 12 characters with a
# digit, so that prose ("basic configuration") is left alone.
_BEARER = re.compile(r"(?P<pre>\b(?:Bearer|Basic|bearer|basic)\s+)(?P<value>(?=[A-Za-z._~+/=-]*[0-9])[A-Za-z0-9._~+/=-]{12,})")
_SHAPES = re.compile(
    r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|glpat-[A-Za-z0-9_-]{20,}|hf_[A-Za-z0-9]{20,}"
    r"|sk-[A-Za-z0-9_-]{20,}|xox[abprs]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16})\b")


def _quoted_like(value: str) -> str:
    """REDACTED in the quotes the original value had (so the line stays valid shell)."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[0] + REDACTED + value[0]
    return REDACTED


def _named(m: re.Match) -> str:
    if not is_secret_key(m.group("name")):
        return m.group(0)
    return m.group(0)[: m.start("value") - m.start(0)] + _quoted_like(m.group("value"))


def _always(m: re.Match) -> str:
    return m.group("pre") + REDACTED


def redact_text(text: str) -> str:
    """``text`` with every secret-looking part replaced by :data:`REDACTED` (see module doc)."""
    if not isinstance(text, str) or not text:
        return text
    out = _ASSIGN.sub(_named, text)
    out = _FISH_SET.sub(_named, out)
    out = _FLAG.sub(_named, out)
    out = _WANDB_LOGIN.sub(lambda m: m.group(0) if m.group("value") == REDACTED else _always(m), out)
    out = _URL_PASSWORD.sub(_always, out)
    out = _URL_TOKEN_USER.sub(_always, out)
    out = _BEARER.sub(_always, out)
    return _SHAPES.sub(REDACTED, out)


def _redact_all(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _redact_all(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact_all(v) for v in value]
    if isinstance(value, bool) or value is None or value == "":
        return value
    return REDACTED


def redact(obj: Any) -> Any:
    """A copy of ``obj`` with secret-looking values replaced (see module doc)."""
    if isinstance(obj, dict):
        return {k: (_redact_all(v) if is_secret_key(k) else redact(v)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    if isinstance(obj, str):
        return redact_text(obj)
    return obj


_OVERRIDE = re.compile(r"^(?P<key>[+~]{0,2}[A-Za-z_][A-Za-z0-9_.\-/@]*)=(?P<value>.*)$", re.DOTALL)


def redact_override(override: str) -> str:
    """One Hydra override (``key=value``): the whole value when the key is secret-looking,
    else the secret-looking parts of the value."""
    if not isinstance(override, str):
        return override
    m = _OVERRIDE.match(override)
    if m and is_secret_key(m.group("key").split(".")[-1]) and m.group("value") not in ("", "null"):
        return f"{m.group('key')}={REDACTED}"
    return redact_text(override)


def redact_overrides(overrides: Iterable[str]) -> list[str]:
    return [redact_override(o) for o in overrides]


# --------------------------------------------------------------------------- launcher.setup, withheld

# launcher.setup lines (module loads, `export TOKEN=...`, here-docs) are not part of the
# experiment and patterns will always miss some secret in them: every file but the SLURM
# batch script, every W&B record and every echo gets this one line in their place, a
# shell comment saying how many lines there were and a hash of them (to tell two setups
# apart, never to recover one).
_WITHHELD = re.compile(r"# \d+ launcher\.setup line\(s\) withheld, sha256 [0-9a-f]{12}")
_SETUP_OVERRIDE = re.compile(r"^[+~]{0,2}launcher\.setup(?:[.\[=]|$)")


def setup_digest(lines: Any) -> str:
    """The one line that stands for ``lines`` wherever they are withheld (idempotent)."""
    import hashlib

    items = lines if isinstance(lines, (list, tuple)) else [lines]
    if len(items) == 1 and isinstance(items[0], str) and _WITHHELD.fullmatch(items[0]):
        return items[0]
    h = hashlib.sha256("\n".join(map(str, items)).encode("utf-8", "backslashreplace")).hexdigest()[:12]
    return f"# {len(items)} launcher.setup line(s) withheld, sha256 {h}"


def withhold_setup(obj: Any) -> Any:
    """A copy of ``obj`` where every ``launcher: {setup: [...]}`` holds only its digest line
    (a list of one shell comment, so the config stays schema-valid; an empty list stays)
    and every override string ``launcher.setup=...`` (job.json, sweep.json, argv) too."""
    if isinstance(obj, str):
        return withhold_override(obj)
    if isinstance(obj, dict):
        out = {k: withhold_setup(v) for k, v in obj.items()}
        launcher = out.get("launcher")
        if isinstance(launcher, dict) and launcher.get("setup"):
            out["launcher"] = {**launcher, "setup": [setup_digest(launcher["setup"])]}
        return out
    if isinstance(obj, (list, tuple)):
        return [withhold_setup(v) for v in obj]
    return obj


def withhold_override(override: Any) -> Any:
    """``launcher.setup=...`` (any form: +, ++, ~, .N, [N]) as ``launcher.setup=<digest>``."""
    if not isinstance(override, str) or not _SETUP_OVERRIDE.match(override):
        return override
    key, _, value = override.partition("=")
    if not value or value.startswith("<withheld"):
        return override
    import hashlib

    return f"{key}=<withheld, sha256 {hashlib.sha256(value.encode('utf-8', 'backslashreplace')).hexdigest()[:12]}>"


def public(obj: Any) -> Any:
    """What may be written anywhere but the batch script: setup withheld, secrets redacted."""
    return redact(withhold_setup(obj))


def public_overrides(overrides: Iterable[str]) -> list[str]:
    """Override strings (a recorded command line) as :func:`public` writes them."""
    return [redact_override(withhold_override(o)) for o in overrides]
