"""Hub settings, read from the environment and `$UPSTREAM_HOME/config.toml`.

Precedence, highest first: environment variables, the config file, defaults.

Every setting, its environment variable and its default: docs/settings.md (a test keeps
that table true).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from upstream.errors import InvalidInput

MAX_PROMPT_CHARS = 32_000  # default limit on a request's total message characters

CONFIG_FILE = "config.toml"


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str = ""
    blob_dir: Path = field(default_factory=Path)
    host: str = "127.0.0.1"
    port: int = 8321
    # Loaded models kept in memory per process; 135M parameters in fp32 are ~0.5 GB each.
    model_cache_size: int = 2
    # A running job whose heartbeat is older than this is taken to have lost its worker.
    job_stale_after: float = 60.0  # seconds
    # A running job that reports progress after this long fails (and can run again).
    job_time_limit: float = 6 * 3600.0  # seconds
    # How often a running job's heartbeat is refreshed while it works.
    job_heartbeat_every: float = 10.0  # seconds
    # `upstream eval` hands its job to an idle worker on this host when one is up
    # (`upstream up`, `upstream worker`), whose models may be loaded already; false runs
    # it in the CLI's own process.
    hand_over_jobs: bool = True
    # Generation with bfloat16 matrix products on CPUs that have bfloat16 units (AMX,
    # AVX512-BF16): faster, and not token-identical to float32 (docs/benchmarks.md gives
    # the share of identical outputs and verdicts). Outputs are cached apart from float32
    # ones (the engine version says which). Off by default.
    bf16_products: bool = False
    # The longest prompt (in characters) a generation request may carry.
    max_prompt_chars: int = MAX_PROMPT_CHARS
    # Comma-separated folders the API may import models from (absolute paths); empty: the
    # API imports bundled models only. The CLI on the hub's machine imports from anywhere.
    import_dirs: str = ""
    # The largest request body the API reads, in MiB (a bigger one answers 413 unread).
    max_request_mb: float = 16.0
    # Comma-separated Host names the API answers (others get 400); empty: the loopback
    # names and the `host` it binds to.
    allowed_hosts: str = ""
    # Writes (POST, PUT, DELETE) one token, and one client address, may send per minute;
    # more answer 429 with Retry-After. 0 turns the limit off.
    write_rate_per_minute: int = 120
    # /v1 serving: whether a request without a token may chat (off: a token is needed).
    anonymous_serving: bool = False
    # Rows one served model decodes together, and requests that may wait to join them;
    # one more answers 503.
    serve_batch_size: int = 32
    serve_max_waiting: int = 64
    # The longest a served request may take, in seconds (then 504, its row stopped).
    serve_timeout: float = 300.0
    # Tokens generated when a request does not say max_tokens.
    serve_max_tokens: int = 256
    # Whether traces keep the input messages and the output (off: settings, usage and
    # latency only, and negative feedback cannot become a runnable report).
    trace_prompts: bool = True
    # Days a trace is kept (0: for ever); older ones are deleted, their feedback with them
    # unless it filed a report.
    trace_retention_days: int = 30
    # Minutes the feedback token of a response stays valid.
    feedback_token_minutes: int = 60
    # Hours a web sign-in lasts (never past its token's expiry).
    web_session_hours: int = 12
    # A new report this close (cosine distance of embeddings) to an open report of the
    # same model is linked to it as a likely duplicate.
    duplicate_distance: float = 0.2
    # `upstream up` embeds reports in a child process of its own, where its request
    # threads cannot hold up the model's steps (upstream.embeddings); false: in the server.
    embed_apart: bool = True
    # Confirmations from distinct people (not the reporter) that confirm a report.
    confirmations_needed: int = 3
    # Tokens generated per case when a contribution is checked (the guard suite has its
    # own length); 128 lets a broken model show itself without a slow run.
    check_max_new_tokens: int = 128
    # A contributed adapter's limits: LoRA rank, and adapter_model.safetensors in MiB.
    adapter_max_rank: int = 64
    adapter_max_mb: float = 256.0
    # A contributed training dataset's limits: JSONL size in MiB, and examples.
    dataset_max_mb: float = 10.0
    dataset_max_examples: int = 10_000
    # The merge policy a contribution's checks are judged by (see docs/contributions.md):
    # at least this many claimed cases fixed,
    policy_min_fixed: int = 1
    # no suite where broken > fixed with McNemar p below this,
    policy_regression_p: float = 0.05
    # no held-out pass rate below the base's by more than this (absolute),
    policy_heldout_margin: float = 0.05
    # and no suite whose pass rate may have fallen by more than this (absolute): the lower
    # 95 % bound of the paired change must stay above -margin (a suite too small to
    # resolve it: the observed change, one net broken case at most; `stats.allowance`).
    # At 0.10 the 60-case guard lets 2 broken cases through, its measured noise floor.
    policy_margin: float = 0.10
    # Per-model overrides of the four policy_* values: {"model": {"min_fixed": 2, ...}},
    # written in config.toml as [policy.MODEL] tables.
    policy: dict[str, Any] = field(default_factory=dict)

    @property
    def host_names(self) -> list[str]:
        """The Host names the API answers: `allowed_hosts`, else loopback and `host`."""
        given = [h.strip() for h in self.allowed_hosts.split(",") if h.strip()]
        if given:
            return given
        return sorted({"127.0.0.1", "localhost", "::1", "[::1]", self.host})

    @property
    def import_roots(self) -> list[Path]:
        """`import_dirs` as resolved folders."""
        return [Path(d.strip()).resolve() for d in self.import_dirs.split(",") if d.strip()]

    @property
    def work_dir(self) -> Path:
        """Scratch space: materialised revisions, temporary conversions."""
        return self.home / "work"

    @classmethod
    def load(cls, home: str | Path | None = None, **overrides: Any) -> Settings:
        """Settings for the hub at `home` (or $UPSTREAM_HOME, or ./.upstream)."""
        home_path = Path(home or os.environ.get("UPSTREAM_HOME") or ".upstream").absolute()
        values: dict[str, Any] = {}
        config_path = home_path / CONFIG_FILE
        if config_path.exists():
            try:
                values.update(tomllib.loads(config_path.read_text("utf-8")))
            except tomllib.TOMLDecodeError as e:
                raise InvalidInput(f"{config_path}: not valid TOML: {e}") from e
        known = {f.name: f for f in fields(cls) if f.name != "home"}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise InvalidInput(
                f"{config_path}: unknown setting(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(known))}"
            )
        for name in known:
            env = os.environ.get(f"UPSTREAM_{name.upper()}")
            if env is not None:
                values[name] = env
        values.update({k: v for k, v in overrides.items() if v is not None})
        for name, value in list(values.items()):
            values[name] = _coerce(name, known[name].type, value)
        values.setdefault("database_url", f"sqlite:///{home_path / 'upstream.db'}")
        stale = values.get("job_stale_after", cls.job_stale_after)
        beat = values.get("job_heartbeat_every", cls.job_heartbeat_every)
        if stale <= 2 * beat:
            raise InvalidInput(
                f"job_stale_after={stale} must exceed twice job_heartbeat_every={beat}, "
                "or live jobs would be taken for dead"
            )
        values.setdefault("blob_dir", home_path / "blobs")
        return cls(home=home_path, **values)


@dataclass(frozen=True)
class Policy:
    """When a contribution passes (defaults in settings, per-model overrides allowed)."""

    min_fixed: int  # claimed cases (or, with no claim, suite cases) it must fix
    regression_p: float  # a suite with broken > fixed at McNemar p below this fails it
    heldout_margin: float  # held-out pass rate may fall at most this far below the base's
    # pass rate a suite may lose: the lower 95 % bound of cand − base must stay above −margin
    margin: float = 0.10

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def policy_for(settings: Settings, model: str) -> Policy:
    """The merge policy of `model`: the hub's policy_* settings, then [policy.MODEL]."""
    values: dict[str, Any] = {
        "min_fixed": settings.policy_min_fixed,
        "regression_p": settings.policy_regression_p,
        "heldout_margin": settings.policy_heldout_margin,
        "margin": settings.policy_margin,
    }
    overrides = settings.policy.get(model, {})
    if not isinstance(overrides, dict):
        raise InvalidInput(f"[policy.{model}] in config.toml must be a table")
    unknown = sorted(set(overrides) - set(values))
    if unknown:
        raise InvalidInput(
            f"[policy.{model}]: unknown key(s) {', '.join(unknown)}; allowed: "
            f"{', '.join(sorted(values))}"
        )
    values.update(overrides)
    try:
        policy = Policy(
            min_fixed=int(values["min_fixed"]),
            regression_p=float(values["regression_p"]),
            heldout_margin=float(values["heldout_margin"]),
            margin=float(values["margin"]),
        )
    except (TypeError, ValueError) as e:
        raise InvalidInput(f"merge policy of {model}: {e}") from e
    if (
        policy.min_fixed < 0
        or not 0 < policy.regression_p < 1
        or policy.heldout_margin < 0
        or not 0 < policy.margin < 1
    ):
        raise InvalidInput(
            f"merge policy of {model}: min_fixed ≥ 0, 0 < regression_p < 1, "
            f"heldout_margin ≥ 0 and 0 < margin < 1 are allowed; got {policy.as_dict()}"
        )
    return policy


def _coerce(name: str, type_name: Any, value: Any) -> Any:
    """Turn a config or env value into the setting's type, or say which setting is wrong."""
    kind = str(type_name)
    if kind.startswith("dict"):
        if not isinstance(value, dict):
            raise InvalidInput(f"setting {name} must be a table in config.toml, not {value!r}")
        return value
    try:
        if kind == "bool":
            return _boolean(value)
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "Path":
            return Path(value).absolute()
        if isinstance(value, list):  # e.g. import_dirs = ["/srv/a", "/srv/b"] in config.toml
            return ",".join(str(v) for v in value)
        return str(value)
    except (TypeError, ValueError) as e:
        raise InvalidInput(f"setting {name}={value!r} is not a valid {kind}") from e


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{value!r}: use true or false")
