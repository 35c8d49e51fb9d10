"""Configuration: TOML file + `QT_<SECTION>_<KEY>` environment overrides -> frozen objects.

Every key is declared once, below, as a dataclass field with its type, default and bounds.
Unknown keys and bad values raise `ConfigError`, whose message names the key, what was
expected and what was given; the CLI turns it into exit code 2. The effective config is
logged at start and stored with each run (`Config.to_dict`).
"""

from __future__ import annotations

import json
import math
import os
import tomllib
import typing
from dataclasses import MISSING, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from qtraderd.core.config_env import check_unknown, env_overrides, named_by_plugins
from qtraderd.core.config_exchange import EXCHANGE_URLS, check_exchange
from qtraderd.core.config_values import ConfigError, coerce


def _spec(default: Any = MISSING, *, lo: float | None = None, hi: float | None = None,
          choices: tuple[str, ...] | None = None, positive: bool = False,
          items: tuple[str, ...] | None = None, default_factory: Any = MISSING,
          help: str = "") -> Any:
    """A config key: default, bounds (numbers, and each value of a QUOTE table), choices
    (a string) or items (each element of a non-empty list)."""
    meta = {"lo": lo, "hi": hi, "choices": choices, "positive": positive, "items": items,
            "help": help}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


# Model families qtraderd can train (qtraderd.training: trees.FAMILIES + nets_train.FAMILIES;
# the config cannot import the training package, tests/core/test_config.py keeps them equal).
MODEL_FAMILIES = ("xgboost", "lightgbm", "nhits", "patchtst")
# No real amount of any quote currency comes near this; 1e30 is a typo, not a setting.
MAX_AMOUNT = 1e12


@dataclass(frozen=True)
class FeedConfig:
    source: str = _spec("replay", choices=("replay", "binance"))
    symbols: tuple[str, ...] = _spec((), help="empty: every symbol in the store")
    interval: str = _spec("5m", choices=("1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "1d"))
    speed: float = _spec(math.inf, positive=True, help='"max" or a multiple of real time')
    start: str = _spec("", help="ISO date/time; empty: first stored bar")
    end: str = _spec("", help="ISO date/time; empty: last stored bar")
    exit_at_end: bool = _spec(True, help="stop the daemon when the replay data ends")




@dataclass(frozen=True)
class ReconcileConfig:
    """What a live start or reconnect does with a position qtraderd did not open."""

    unknown_positions: str = _spec("halt", choices=("halt", "adopt", "flatten"))


@dataclass(frozen=True)
class ExchangeConfig:
    """Where the Binance USD-M feed connects and how it behaves. `base_url` / `ws_url` are
    empty for testnet and production (each environment's hosts are fixed, see
    EXCHANGE_URLS; read `rest_url` / `stream_url`) and required for `custom`."""

    environment: str = _spec("testnet", choices=("testnet", "production", "custom"))
    allow_production: bool = _spec(False, help="required to use environment = production")
    base_url: str = _spec("", help="REST root (custom only), e.g. http://127.0.0.1:8765")
    ws_url: str = _spec("", help="WebSocket root (custom only), e.g. ws://127.0.0.1:8765")
    recv_window: int = _spec(5000, lo=1, hi=60_000, help="ms a signed request stays valid")
    margin_type: str = _spec("ISOLATED", choices=("ISOLATED", "CROSSED"),
                             help="set on every traded symbol at a live start")
    stream_timeout_s: float = _spec(30.0, positive=True, hi=3600.0,
                                    help="no frame on a stream connection this long: reconnect")
    close_deadline_s: float = _spec(5.0, positive=True, hi=3600.0,
                                    help="a closed kline later than this after its bar's "
                                         "close is fetched over REST instead")
    reconnect_min_s: float = _spec(0.25, positive=True, hi=600.0,
                                   help="first reconnect delay (doubling, with jitter)")
    reconnect_max_s: float = _spec(30.0, positive=True, hi=3600.0,
                                   help="longest reconnect delay")
    warmup_days: float = _spec(12.0, positive=True, hi=3650.0,
                               help="history backfilled over REST before the first live step")
    max_streams_per_connection: int = _spec(1024, lo=1, hi=1024,
                                            help="kline streams on one combined connection")
    planned_reconnect_h: float = _spec(23.5, positive=True, hi=23.99,
                                       help="hours after which a connection is replaced "
                                            "(overlapping; Binance cuts at 24 h)")
    working_type: str = _spec("MARK_PRICE", choices=("MARK_PRICE", "CONTRACT_PRICE"),
                              help="price that triggers live stops and take-profits")
    user_stream_keepalive_s: float = _spec(1800.0, positive=True, hi=3500.0,
                                          help="user stream listenKey keep-alive interval")

    @property
    def rest_url(self) -> str:
        """The REST root in effect (the environment's, or base_url for custom)."""
        return self.base_url.rstrip("/") if self.environment == "custom" else \
            EXCHANGE_URLS[self.environment][0]

    @property
    def stream_url(self) -> str:
        """The WebSocket root in effect (routed paths such as /market are appended)."""
        return self.ws_url.rstrip("/") if self.environment == "custom" else \
            EXCHANGE_URLS[self.environment][1]


@dataclass(frozen=True)
class AccountConfig:
    balances: dict[str, float] = _spec(
        default_factory=lambda: {"BTC": 1.0, "USDT": 10_000.0}, positive=True, hi=MAX_AMOUNT,
        help="starting paper balance per quote currency",
    )


@dataclass(frozen=True)
class CostsConfig:
    taker_fee_pct: float = _spec(0.05, lo=0.0, hi=5.0)
    maker_fee_pct: float = _spec(0.02, lo=-1.0, hi=5.0)
    slippage_bps: float = _spec(2.0, lo=0.0, hi=1000.0)


@dataclass(frozen=True)
class SizingConfig:
    # Margin per trade in the pair's quote currency: a number for every quote, or a table.
    # 0.025 BTC was the seed's $300 at January-2018 prices (the bundled demo data).
    margin: dict[str, float] = _spec(
        default_factory=lambda: {"BTC": 0.025, "USDT": 300.0}, positive=True, hi=MAX_AMOUNT,
        help="per trade, in the quote currency (number or {QUOTE = amount})",
    )
    leverage: float = _spec(3.0, positive=True, hi=125.0)
    take_profit_pct: float = _spec(1.6, positive=True, hi=100.0)
    stop_loss_pct: float = _spec(0.8, positive=True, hi=100.0)
    min_confidence: float = _spec(0.30, lo=0.0, hi=1.0,
                                  help="minimum probability of the chosen side to enter")
    min_edge_pct: float = _spec(0.0, lo=-100.0, hi=100.0,
                                help="minimum expected net return per trade after costs")
    allow_short: bool = _spec(True)


@dataclass(frozen=True)
class LabelsConfig:
    horizon_bars: int = _spec(48, lo=1, hi=10_000, help="time barrier")
    embargo_bars: int = _spec(48, lo=0, hi=100_000)


@dataclass(frozen=True)
class MonitorConfig:
    atr_dynamic: bool = _spec(False, help="TP/SL distances from ATR instead of fixed percent")
    tp_atr_mult: float = _spec(3.0, positive=True)
    sl_atr_mult: float = _spec(1.5, positive=True)
    trailing: bool = _spec(True)
    trailing_activation_pct: float = _spec(1.0, positive=True, hi=100.0)
    trailing_callback_pct: float = _spec(0.5, positive=True, hi=100.0)
    time_stop_bars: int = _spec(48, lo=0, hi=1_000_000, help="0 disables")


@dataclass(frozen=True)
class RiskConfig:
    max_order_notional_pct: float = _spec(25.0, positive=True,
                                          help="per order, % of the quote account's equity")
    max_order_notional: dict[str, float] = _spec(default_factory=dict, hi=MAX_AMOUNT,
                                                 help="absolute cap per quote currency")
    max_leverage: float = _spec(5.0, positive=True, hi=125.0)
    max_open_positions: int = _spec(5, lo=0, hi=10_000)
    max_symbol_exposure_pct: float = _spec(30.0, positive=True)
    max_total_exposure_pct: float = _spec(100.0, positive=True)
    daily_loss_pct: float = _spec(5.0, positive=True, hi=100.0)
    max_drawdown_pct: float = _spec(15.0, positive=True, hi=100.0)
    reduce_at: float = _spec(0.6, lo=0.0, hi=1.0,
                             help="fraction of a loss limit at which state becomes REDUCING")
    reduce_factor: float = _spec(0.5, lo=0.0, hi=1.0, help="size multiplier while REDUCING")
    max_rejections: int = _spec(5, lo=0, hi=10_000,
                                help="HALTED when this many orders are rejected by the venue "
                                     "within rejection_window_min; 0 disables")
    rejection_window_min: float = _spec(10.0, positive=True, hi=10_080.0,
                                        help="the window of max_rejections, in minutes")
    max_signal_age_s: float = _spec(60.0, positive=True, hi=86_400.0,
                                    help="live: no entry on a bar that closed longer ago")


@dataclass(frozen=True)
class PortfolioConfig:
    max_losing_streak: int = _spec(5, lo=0, hi=10_000, help="0 disables")
    expectancy_trades: int = _spec(20, lo=0, hi=100_000,
                                   help="pause when the mean of the last N trades is < 0")
    pause_bars: int = _spec(288, lo=0, hi=10_000_000, help="0: until resume-symbol")


@dataclass(frozen=True)
class RuntimeConfig:
    restart_intensity: int = _spec(5, lo=1, hi=1000)
    restart_period_s: float = _spec(60.0, positive=True)
    restart_backoff_s: float = _spec(0.1, lo=0.0, hi=60.0)
    restart_backoff_max_s: float = _spec(5.0, lo=0.0, hi=600.0)
    channel_capacity: int = _spec(64, lo=1, hi=100_000)
    shutdown_timeout_s: float = _spec(4.0, positive=True, hi=60.0)
    log_level: str = _spec("INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))


@dataclass(frozen=True)
class ControlConfig:
    """The control socket (`qtraderd ctl`). Its location is not a key: it is
    $RUNTIME_DIRECTORY/qtraderd.sock under systemd, else <state-dir>/qtraderd.sock."""

    group: str = _spec("", help="group allowed to use the socket (mode 0660); empty: only "
                       "the daemon's user and root (mode 0600)")
    max_request_bytes: int = _spec(65536, lo=256, hi=16 * 1024 * 1024)
    request_timeout_s: float = _spec(45.0, positive=True, hi=3600.0,
                                     help="deadline to receive, run and answer one request")
    max_connections: int = _spec(16, lo=1, hi=1024)


@dataclass(frozen=True)
class StoreConfig:
    flush_rows: int = _spec(20_000, lo=1, hi=10_000_000)
    flush_ms: float = _spec(250.0, positive=True)
    checkpoint_steps: int = _spec(256, lo=1, hi=1_000_000,
                                  help="most steps between two checkpoints at full replay "
                                       "speed (live: every step)")


@dataclass(frozen=True)
class TrainConfig:
    families: tuple[str, ...] = _spec(("xgboost", "lightgbm"), items=MODEL_FAMILIES)
    train_fraction: float = _spec(0.5, lo=0.05, hi=0.95,
                                  help="share of the stored span used to train; the rest "
                                       "is out-of-sample for the replay")
    valid_fraction: float = _spec(0.2, lo=0.05, hi=0.5,
                                  help="tail of the training span held out for metrics")
    n_estimators: int = _spec(200, lo=1, hi=100_000)
    max_depth: int = _spec(4, lo=1, hi=64)
    learning_rate: float = _spec(0.05, positive=True, hi=1.0)
    timeout_s: float = _spec(600.0, positive=True)


@dataclass(frozen=True)
class LearningConfig:
    enabled: bool = _spec(True, help="run the learner (retrains, gate, swaps)")
    mode: str = _spec("ENFORCED", choices=("ENFORCED", "ADVISORY"),
                      help="ADVISORY trains, evaluates and reports, never deploys")
    auto_deploy: bool = _spec(True, help="false: gate winners wait for `ctl promote`")
    families: tuple[str, ...] = _spec(MODEL_FAMILIES, items=MODEL_FAMILIES)
    eval_every_hours: float = _spec(1.0, positive=True, hi=24 * 365,
                                    help="trigger evaluation period, clock time")
    retrain_interval_hours: float = _spec(24.0, positive=True, hi=24 * 3650,
                                          help="time trigger: hours since the last deploy")
    min_winrate: float = _spec(0.50, lo=0.0, hi=1.0,
                               help="performance trigger: a model's recent hit rate below "
                                    "this, confirmed by a change detector")
    min_outcomes: int = _spec(50, lo=1, hi=1_000_000,
                              help="outcomes a model needs before its hit rate is judged")
    drift_psi: float = _spec(0.25, positive=True, help="drift trigger: PSI of a feature")
    drift_ks_p: float = _spec(0.001, positive=True, hi=1.0,
                              help="drift trigger: KS p-value of a feature")
    drift_min_features: int = _spec(3, lo=1, hi=1000,
                                    help="features that must drift to trigger")
    regime_sustain_hours: float = _spec(72.0, positive=True,
                                        help="regime trigger: new global regime held this long")
    min_retrain_gap_hours: float = _spec(6.0, lo=0.0, hi=24 * 3650,
                                         help="a family is not retrained more often than "
                                              "this (except by `ctl retrain`)")
    min_improvement_pct: float = _spec(5.0, lo=0.0, hi=1000.0,
                                       help="gate: deploy above this improvement")
    canary_threshold_pct: float = _spec(2.0, lo=0.0, hi=1000.0,
                                        help="gate: canary between this and min_improvement")
    significance: float = _spec(0.05, positive=True, hi=1.0,
                                help="gate: p-value a deploy needs (paired block bootstrap)")
    leakage_auc: float = _spec(0.65, lo=0.5, hi=1.0,
                               help="gate: evaluation AUC (one-vs-rest, per side) above "
                                    "this is a leakage alarm, never deployed")
    leakage_skill: float = _spec(0.15, positive=True, hi=1.0,
                                 help="gate: log-loss skill over the class prior above "
                                      "this is a leakage alarm, never deployed")
    canary_outcomes: int = _spec(50, lo=1, hi=1_000_000,
                                 help="live outcomes a canary needs before promote/retire")
    rollback_outcomes: int = _spec(50, lo=1, hi=1_000_000,
                                   help="first outcomes of a new champion checked for rollback")
    rollback_margin_pct: float = _spec(1.0, lo=0.0, hi=1000.0,
                                       help="roll back when the new champion's equity "
                                            "multiple is this much worse than the previous "
                                            "one's on the same bars")
    train_window_days: float = _spec(10.0, positive=True, help="sliding training window")
    eval_window_days: float = _spec(2.0, positive=True,
                                    help="held-out window the gate scores both models on")
    job_timeout_s: float = _spec(900.0, positive=True)
    retry_backoff_s: float = _spec(60.0, positive=True, help="first retry delay, doubling")
    nets_epochs: int = _spec(2, lo=1, hi=1000, help="training epochs of N-HiTS / PatchTST")
    replay_holds_clock: bool = _spec(True, help="in replay a job pauses the data so the new "
                                     "model arrives at the same bar every run")
    executor: str = _spec("local", choices=("local", "ray"),
                          help="where a job trains: local (in the job process) or ray (the "
                               "job drives a Ray cluster at ray_address)")
    ray_address: str = _spec("auto", help='Ray cluster: "auto", "HOST:PORT" or '
                                          '"ray://HOST:10001" (executor = "ray")')
    ray_cpus: dict[str, float] = _spec(default_factory=lambda: {"*": 1.0}, hi=1024.0,
                                       help="CPUs per training task: a number, or "
                                            "{family = n, \"*\" = n}")
    ray_gpus: dict[str, float] = _spec(default_factory=lambda: {"*": 0.0}, hi=64.0,
                                       help="GPUs per training task (e.g. {nhits = 1, "
                                            "patchtst = 1}); 0: CPU only")
    ray_max_retries: int = _spec(2, lo=0, hi=100,
                                 help="times Ray reruns a task whose worker died")
    fallback: str = _spec("local", choices=("local", "skip"),
                          help="the Ray cluster unreachable at submit: train locally, or "
                               "skip the job (it fails and is retried later)")


@dataclass(frozen=True)
class RLConfig:
    enabled: bool = _spec(True, help="scale sizes with the Q-learning agent")
    epsilon: float = _spec(0.1, lo=0.0, hi=1.0, help="exploration rate")
    alpha: float = _spec(0.1, positive=True, hi=1.0, help="learning rate")
    gamma: float = _spec(0.0, lo=0.0, hi=1.0, help="discount (0: each trade is an episode)")
    multipliers: tuple[float, ...] = _spec((0.5, 0.75, 1.0, 1.25, 1.5),
                                          help="actions: size multipliers")


@dataclass(frozen=True)
class PluginsConfig:
    """Plugins (plugins/README.md): `.py` files in `dir`, hot-reloaded when they change."""

    enabled: bool = _spec(True, help="load and watch the plugins directory")
    dir: str = _spec("plugins", help="plugins directory; relative paths are relative to the "
                     "working directory (`run --plugins-dir` overrides)")
    max_errors: int = _spec(5, lo=0, hi=1_000_000,
                            help="errors in a row before a plugin is disabled (0: never)")
    notify_queue: int = _spec(256, lo=1, hi=1_000_000,
                              help="events waiting for the notifiers; more are dropped")
    notify_timeout_s: float = _spec(5.0, positive=True, hi=600.0,
                                    help="deadline of one notifier call")
    settle_ms: float = _spec(200.0, lo=0.0, hi=60_000.0,
                             help="a changed file is loaded once its size and mtime held "
                                  "still this long")
    hook_timeout_ms: float = _spec(250.0, positive=True, hi=60_000.0,
                                   help="deadline of one filter, risk rule, setup or "
                                        "teardown call (then abandoned: an overrun)")
    max_overruns: int = _spec(3, lo=0, hi=1_000_000,
                              help="overruns in a row before a plugin is disabled (0: never)")
    load_timeout_s: float = _spec(10.0, positive=True, hi=600.0,
                                  help="deadline of importing a plugin file (then rejected)")
    settings: dict[str, dict[str, Any]] = _spec(
        default_factory=dict, help="per-plugin tables, [plugins.settings.NAME]")


@dataclass(frozen=True)
class Config:
    mode: str = _spec("paper", choices=("paper", "live"))
    seed: int = _spec(42, lo=0, hi=2**32 - 1)
    feed: FeedConfig = field(default_factory=FeedConfig)
    exchange: ExchangeConfig = field(default_factory=ExchangeConfig)
    reconcile: ReconcileConfig = field(default_factory=ReconcileConfig)
    account: AccountConfig = field(default_factory=AccountConfig)
    costs: CostsConfig = field(default_factory=CostsConfig)
    sizing: SizingConfig = field(default_factory=SizingConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    risk: RiskConfig = field(default_factory=RiskConfig)
    portfolio: PortfolioConfig = field(default_factory=PortfolioConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    learning: LearningConfig = field(default_factory=LearningConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    plugins: PluginsConfig = field(default_factory=PluginsConfig)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if hasattr(v, "__dataclass_fields__"):
                out[f.name] = {g.name: _plain(getattr(v, g.name)) for g in fields(v)}
            else:
                out[f.name] = _plain(v)
        return out


def _plain(v: Any) -> Any:
    if isinstance(v, float) and math.isinf(v):
        return "max"
    if isinstance(v, tuple):
        return list(v)
    return v


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return '"max"' if v == math.inf else repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON's escapes are a subset of TOML basic strings'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}"
                               for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def to_toml(cfg: Config | dict[str, Any], header: str) -> str:
    """The whole configuration as TOML (every key, `header` as comment lines) that `load`
    reads back to an equal Config: learner jobs' snapshot, walk-forward arms' configs.
    `cfg` may be `Config.to_dict()` after changes (a redacted copy, say)."""
    d = cfg if isinstance(cfg, dict) else cfg.to_dict()
    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"{k} = {_toml_value(v)}" for k, v in d.items() if not isinstance(v, dict)]
    for k, v in d.items():
        if isinstance(v, dict):
            lines += ["", f"[{k}]", *(f"{kk} = {_toml_value(vv)}" for kk, vv in v.items())]
    return "\n".join(lines) + "\n"


def per_quote(table: dict[str, float], quote: str, default: float = 0.0) -> float:
    """Look up a per-quote-currency amount; '*' is the catch-all of a plain number."""
    if quote in table:
        return table[quote]
    return table.get("*", default)


_SECTIONS = {f.name: f for f in fields(Config)
             if hasattr(f.default_factory, "__dataclass_fields__")}


# ----------------------------------------------------------------------------- loading


def _build(cls: type, data: dict[str, Any], prefix: str, from_env: dict[str, str]) -> Any:
    known = {f.name: f for f in fields(cls)}
    for key in data:
        if key not in known:
            hint = ", ".join(sorted(known))
            raise ConfigError(f"unknown config key '{prefix}{key}' (known keys here: {hint})")
    kwargs = {}
    for name, raw in data.items():
        f = known[name]
        full = f"{prefix}{name}"
        if full in _SECTION_KEYS:
            if not isinstance(raw, dict):
                raise ConfigError(f"config key '{full}': expected a table [{full}], got {raw!r}")
            kwargs[name] = _build(_SECTION_TYPES[full], raw, f"{full}.", from_env)
        else:
            kwargs[name] = coerce(full, f, raw, from_env.get(full))
    return cls(**kwargs)


_SECTION_TYPES: dict[str, type] = {
    name: typing.get_type_hints(Config)[name] for name in _SECTIONS
}
_SECTION_KEYS = set(_SECTION_TYPES)
_TOP = {f.name for f in fields(Config) if f.name not in _SECTION_KEYS}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k in _SECTION_KEYS:
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


def load(path: str | Path | None = None, env: typing.Mapping[str, str] | None = None) -> Config:
    """Read a TOML file (optional) and apply environment overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file {p}: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:  # TOML is UTF-8; a ValueError, not an OSError
            raise ConfigError(f"config file {p} is not UTF-8 text (TOML must be): byte "
                              f"{exc.object[exc.start]:#04x} at offset {exc.start}") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from exc
    env_data, from_env, unknown = env_overrides(os.environ if env is None else env, _TOP,
                                                _SECTION_TYPES)
    cfg = _build(Config, _merge(data, env_data), "", from_env)
    check_unknown(unknown, named_by_plugins(cfg.plugins.settings), _TOP, _SECTION_TYPES)
    _cross_check(cfg)
    return cfg


def _cross_check(cfg: Config) -> None:
    _check_feed_span(cfg.feed)
    check_exchange(cfg)
    if not cfg.account.balances:
        raise ConfigError("config key 'account.balances': expected at least one QUOTE = "
                          "amount > 0, got an empty table")
    s = cfg.sizing
    if s.take_profit_pct <= s.stop_loss_pct:
        raise ConfigError(
            f"config keys 'sizing.take_profit_pct' ({s.take_profit_pct}) and "
            f"'sizing.stop_loss_pct' ({s.stop_loss_pct}): take-profit must be larger than "
            "stop-loss (the triple-barrier label needs it)"
        )
    lc = cfg.learning
    if lc.canary_threshold_pct > lc.min_improvement_pct:
        raise ConfigError(
            f"config keys 'learning.canary_threshold_pct' ({lc.canary_threshold_pct}) and "
            f"'learning.min_improvement_pct' ({lc.min_improvement_pct}): the canary band "
            "must lie below the deploy threshold")
    for key in ("ray_cpus", "ray_gpus"):
        bad = sorted(k for k in getattr(lc, key) if k != "*" and k.lower() not in MODEL_FAMILIES)
        if bad:
            raise ConfigError(f"config key 'learning.{key}': expected model families "
                              f"({', '.join(MODEL_FAMILIES)}) or \"*\", got {bad}")
    if s.leverage > cfg.risk.max_leverage:
        raise ConfigError(
            f"config key 'sizing.leverage': expected <= risk.max_leverage "
            f"({cfg.risk.max_leverage}), got {s.leverage}"
        )


def parse_time(key: str, text: str) -> int | None:
    """feed.start / feed.end -> epoch ms (None when empty); naive times are UTC."""
    if not text:
        return None
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"config key '{key}': expected an ISO-8601 date/time like "
                          f"2024-01-31 or 2024-01-31T12:00Z, got {text!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def _check_feed_span(feed: FeedConfig) -> None:
    start, end = parse_time("feed.start", feed.start), parse_time("feed.end", feed.end)
    if start is not None and end is not None and end <= start:
        raise ConfigError(f"config keys 'feed.end' ({feed.end!r}) and 'feed.start' "
                          f"({feed.start!r}): the end must come after the start")


def with_changes(cfg: Config, **sections: dict[str, Any]) -> Config:
    """A copy of cfg with some section keys replaced (tests and the demo use this)."""
    out = cfg
    for name, changes in sections.items():
        if name in _SECTION_KEYS:
            out = replace(out, **{name: replace(getattr(out, name), **changes)})
        else:
            out = replace(out, **{name: changes})
    return out


# What a running daemon applies when it re-reads its config file (SIGHUP, `qtraderd ctl
# reload`; qtraderd/reload.py): a section name covers every key in it, or one
# "section.key". Every other key needs a restart because it shaped what was built at
# start: the feed and its symbols, the store, channels, paper accounts, costs (shared by
# broker, sizer and risk), the label barriers (sizing.take_profit_pct / stop_loss_pct and
# labels.*, which outcomes and training must agree on), which model families the learner
# keeps, the RL action space. A section that is applied live needs an actor (or the
# daemon) to adopt it in `reconfigure`; add it here when it does.
LIVE_KEYS: frozenset[str] = frozenset({
    "risk", "portfolio", "monitor", "train",
    "sizing.margin", "sizing.leverage", "sizing.min_confidence", "sizing.min_edge_pct",
    "sizing.allow_short",
    "learning.mode", "learning.auto_deploy", "learning.eval_every_hours",
    "learning.retrain_interval_hours", "learning.min_winrate", "learning.min_outcomes",
    "learning.drift_psi", "learning.drift_ks_p", "learning.drift_min_features",
    "learning.regime_sustain_hours", "learning.min_retrain_gap_hours",
    "learning.min_improvement_pct", "learning.canary_threshold_pct", "learning.significance",
    "learning.leakage_auc", "learning.leakage_skill",
    "learning.canary_outcomes", "learning.rollback_outcomes", "learning.rollback_margin_pct",
    "learning.train_window_days", "learning.eval_window_days", "learning.job_timeout_s",
    "learning.retry_backoff_s", "learning.nets_epochs",
    # read from the config file by each job process (the daemon never uses them)
    "learning.executor", "learning.ray_address", "learning.ray_cpus", "learning.ray_gpus",
    "learning.ray_max_retries", "learning.fallback",
    "rl.epsilon", "rl.alpha", "rl.gamma",
    "runtime.log_level", "runtime.restart_intensity", "runtime.restart_period_s",
    "runtime.restart_backoff_s", "runtime.restart_backoff_max_s", "runtime.shutdown_timeout_s",
    # PluginHost.reconfigure: a plugin whose settings table changed is reloaded
    "plugins.max_errors", "plugins.notify_timeout_s", "plugins.settle_ms", "plugins.settings",
    "plugins.hook_timeout_ms", "plugins.max_overruns", "plugins.load_timeout_s",
})


def validate(cfg: Config) -> None:
    """The checks across keys that `load` runs; raises ConfigError."""
    _cross_check(cfg)


INTERVAL_MS = {
    "1m": 60_000, "3m": 180_000, "5m": 300_000, "15m": 900_000, "30m": 1_800_000,
    "1h": 3_600_000, "2h": 7_200_000, "4h": 14_400_000, "1d": 86_400_000,
}

__all__ = [
    "EXCHANGE_URLS",
    "INTERVAL_MS",
    "LIVE_KEYS",
    "Config",
    "ConfigError",
    "load",
    "per_quote",
    "validate",
    "with_changes",
]

