"""The `farm` command: run, status, export, report, init, simulate, the role processes
(control, work, propose) and the metrics exporter."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import os
import re
import signal
import sys
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

from farm.config import (
    CONFIG_NAME,
    EXPORTER_ADDRESS,
    ROLE_PORT_OFFSETS,
    MergeConfig,
    ProposerKind,
    Schedule,
    TargetConfig,
    load_config,
)
from farm.errors import ConfigError, FarmError
from farm.store import VOLATILE_ENV, Store, check_durable, default_url, open_store

if TYPE_CHECKING:
    from farm.campaign import RunOptions
    from farm.metrics import RoleMetrics
    from farm.simulate import SimModel
    from proposer.base import Proposer


def _duration(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smh]?)", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r}: use seconds, or a number with s, m or h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="farm", description="An experiment farm for autoresearch campaigns on Ray."
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log what every role does")
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("target", nargs="?", default=".", type=Path, help="the target git repo")
        sp.add_argument("--store", help="store URL (default: sqlite in <target>/.farm/)")
        sp.add_argument("--campaign", help="campaign name (default: farm.toml's, else 'default')")

    def writes(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--volatile-store",
            action="store_true",
            help="run on a Redis store without AOF, whose restart loses writes "
            f"({VOLATILE_ENV}=1 in scripts)",
        )

    run = sub.add_parser("run", help="run a campaign (local Ray, or $RAY_ADDRESS's cluster)")
    common(run)
    writes(run)
    run.add_argument("--slots", type=int, default=0, help="concurrent trials")
    run.add_argument(
        "--proposer", choices=list(map(str, ProposerKind)), help="overrides [proposer] kind"
    )
    run.add_argument("--max-candidates", type=int, help="stop after this many candidates")
    run.add_argument(
        "--time-limit",
        type=_duration,
        help="stop starting candidates after this long: seconds, or with s, m or h (90m, 2h)",
    )
    run.add_argument("--ray-address", help="attach to this Ray cluster instead of a local one")
    run.add_argument("--progress-every", type=_duration, default=15.0, help="status line period")
    run.add_argument(
        "--metrics-address", help="serve Prometheus metrics at host:port (overrides [metrics])"
    )
    run.add_argument(
        "--repair-refs",
        action="store_true",
        help="first point farm's branches back where the store says (after a mismatch error)",
    )
    run.add_argument(
        "--restart",
        action="store_true",
        help="start the campaign afresh at HEAD, as NAME-<HEAD's sha> (the old one stays as it is)",
    )
    run.add_argument(
        "--discard-kept",
        action="store_true",
        help="with --repair-refs: move the best branch back over the commits it holds past "
        "the store's incumbent, without asking (they are listed)",
    )

    def role_metrics(sp: argparse.ArgumentParser, offset: int) -> None:
        sp.add_argument(
            "--metrics-address",
            help="serve this role's metrics at host:port (default: [metrics] address's host, "
            f"its port + {offset})",
        )

    control = sub.add_parser("control", help="run only the merge controller (a role process)")
    common(control)
    role_metrics(control, ROLE_PORT_OFFSETS["control"])
    writes(control)
    control.add_argument("--slots", type=int, help="total slots of all dispatchers, if known")
    control.add_argument("--idle-exit", type=_duration, help="exit after idling this long")

    work = sub.add_parser("work", help="run only a dispatcher of trials (a role process)")
    common(work)
    role_metrics(work, ROLE_PORT_OFFSETS["work"])
    writes(work)
    work.add_argument("--slots", type=int, default=0, help="concurrent trials of this process")
    work.add_argument("--ray-address", help="attach to this Ray cluster instead of a local one")
    work.add_argument("--lease", type=_duration, default=30.0, help="claim lease (renewed)")
    work.add_argument("--idle-exit", type=_duration, help="exit after idling this long")
    work.add_argument("--wait", type=_duration, default=600.0, help="wait this long for control")

    propose = sub.add_parser("propose", help="run only the proposer (a role process)")
    common(propose)
    role_metrics(propose, ROLE_PORT_OFFSETS["propose"])
    writes(propose)
    propose.add_argument(
        "--proposer", choices=list(map(str, ProposerKind)), help="overrides [proposer] kind"
    )
    propose.add_argument("--max-candidates", type=int, help="stop after this many candidates")
    propose.add_argument("--wait", type=_duration, default=600.0, help="wait this long for control")

    status = sub.add_parser("status", help="where a campaign stands")
    common(status)
    status.add_argument("--last", type=int, default=10, help="how many decisions to list")

    export = sub.add_parser("export", help="export the ledger")
    common(export)
    export.add_argument("--tsv", action="store_true", required=True, help="results.tsv format")
    export.add_argument("-o", "--output", type=Path, help="write here instead of stdout")

    report = sub.add_parser(
        "report", help="compare proposers; with --out, write progress.png and report.md"
    )
    common(report)
    report.add_argument(
        "--by",
        choices=["proposer", "strategy", "batch"],
        default="proposer",
        help="one row per proposer (and strategy, model), per strategy, or per batch size",
    )
    report.add_argument("--out", type=Path, help="write progress.png and report.md here")

    exporter = sub.add_parser(
        "exporter", help="serve the metrics of every campaign of a store (long-lived)"
    )
    exporter.add_argument("--store", required=True, help="store URL, e.g. redis://host:6379/0")
    exporter.add_argument(
        "--address", default=EXPORTER_ADDRESS, help=f"host:port (default {EXPORTER_ADDRESS})"
    )

    _init_parser(sub)
    _simulate_parser(sub)
    return p


def _numbers(text: str, low: int) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use whole numbers, e.g. 1,16,64") from None
    if min(values) < low:
        raise argparse.ArgumentTypeError(f"{text!r}: every value must be >= {low}")
    return values


def _ints(text: str) -> list[int]:
    return _numbers(text, 1)


def _counts(text: str) -> list[int]:
    return _numbers(text, 0)


def _fleet(text: str) -> tuple[tuple[str, int, float], ...]:
    """`4090:12,h100:4:-1` → (("4090", 12, 0.0), ("h100", 4, -1.0))."""
    fleet = []
    for part in _words(text):
        name, _, rest = part.partition(":")
        slots, _, offset = rest.partition(":")
        try:
            fleet.append((name, int(slots), float(offset or 0)))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{part!r}: write class:slots[:offset], e.g. h100:4:-1"
            ) from None
        if not name or fleet[-1][1] < 1:
            raise argparse.ArgumentTypeError(f"{part!r}: a class name and 1 or more slots")
    return tuple(fleet)


def _shares(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use shares, e.g. 0,0.25") from None
    if not all(0 <= v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every share must be in [0, 1)")
    return values


def _words(text: str) -> list[str]:
    return [w.strip() for w in text.split(",") if w.strip()]


_STOPPED: list[int] = []  # the signals that asked this process to stop


def _sigterm(signum: int, frame: object) -> None:
    # Kubernetes and `ray job stop` send SIGTERM: stop as cleanly as on Ctrl-C.
    _STOPPED.append(signum)
    raise KeyboardInterrupt


def _on_sigterm_stop() -> None:
    """Make SIGTERM stop like Ctrl-C (and note either). Again after ray.init, which installs
    its own handler in the driver (it exits at once, and Ray's core prints `*** SIGTERM
    received ***`)."""
    signal.signal(signal.SIGTERM, _sigterm)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _sigterm)


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # `farm status | head`: the reader has gone. Nothing more to say, not even at exit,
        # when Python would flush stdout into the closed pipe again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a process killed by SIGPIPE


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    _on_sigterm_stop()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.cmd == "init":
            return _init(args)
        if args.cmd == "simulate":
            return _simulate(args)
        if args.cmd == "exporter":
            return _exporter(args)
        # Absolute now: inside a Ray job, ray.init() moves the working directory.
        args.target = args.target.resolve()
        cfg = _config(args)
        store = open_store(args.store or cfg.store.url or default_url(args.target))
        try:
            if args.cmd in ("run", "control", "work", "propose"):  # the roles that write
                said = check_durable(store, volatile_ok=args.volatile_store)
                if said:
                    print(f"farm: note: {said}", flush=True)
            if args.cmd == "run":
                return _run(args, cfg, store)
            if args.cmd in ("control", "work", "propose"):
                return _role(args, cfg, store)
            if args.cmd == "status":
                return _status(args, cfg, store)
            if args.cmd == "report":
                return _report(args, cfg, store)
            return _export(args, cfg, store)
        finally:
            store.close()
    except FarmError as e:
        print(f"farm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception:
        # The stop's KeyboardInterrupt lands at any bytecode, and inside a library's cleanup
        # it can come out as another error (shutil.rmtree stopped between closing a
        # descriptor and noting it closes it again: EBADF). The stop was asked for, and the
        # trials were given back on the way out: no traceback.
        if _STOPPED:
            return 130
        raise


def _config(args: argparse.Namespace) -> TargetConfig:
    cfg = load_config(args.target)
    if args.campaign:
        cfg.campaign = args.campaign
    if getattr(args, "proposer", None):
        cfg.proposer = dataclasses.replace(cfg.proposer, kind=ProposerKind(args.proposer))
    if getattr(args, "metrics_address", None):
        cfg.metrics = dataclasses.replace(cfg.metrics, enabled=True, address=args.metrics_address)
        try:
            cfg.metrics.host_port()
        except ConfigError as e:
            raise ConfigError(f"--metrics-address: {e}") from None
    if (getattr(args, "slots", 0) or 0) < 0:
        raise ConfigError("--slots must be >= 0")
    return cfg


def _run(args: argparse.Namespace, cfg: TargetConfig, store: Store) -> int:
    from farm.campaign import RunOptions
    from farm.roles import Driving

    opts = RunOptions(
        slots=args.slots,
        max_candidates=args.max_candidates,
        time_limit_s=args.time_limit,
        progress_every_s=args.progress_every,
        ray_address=args.ray_address,
    )
    if args.discard_kept and not args.repair_refs:
        raise ConfigError("--discard-kept: only with --repair-refs (it says what they discard)")
    proposer = _proposer(args, cfg)
    if args.restart and store.get_campaign(cfg.campaign) is not None:
        from farm.campaign import restart_name

        old, cfg.campaign = cfg.campaign, restart_name(args.target, cfg.campaign)
        print(
            f"farm: --restart: campaign {cfg.campaign} at HEAD; {old} and its ledger stay as "
            f"they are (later commands: --campaign {cfg.campaign})"
        )
    local = not (opts.ray_address or os.environ.get("RAY_ADDRESS"))
    _starting_ray(cfg, opts.ray_address)
    with Driving(store, cfg.campaign, role="farm run"):
        return _drive(args, cfg, store, opts, proposer, local=local)


def _drive(
    args: argparse.Namespace,
    cfg: TargetConfig,
    store: Store,
    opts: RunOptions,
    proposer: Proposer,
    *,
    local: bool,
) -> int:
    import ray

    from farm.campaign import check, init_ray, repair_refs, run
    from farm.dispatch import check_feasible
    from farm.gitops import Repo

    start = check(args.target, cfg, store, check_command=local, out=sys.stdout, proposer=proposer)
    started = init_ray(cfg, opts, out=sys.stdout)
    _on_sigterm_stop()
    try:
        check_feasible(cfg)  # a refused run stores no campaign: the cluster's refusal first
        start.create(store)
        if args.repair_refs:
            ask = input if sys.stdin.isatty() and sys.stdout.isatty() else None
            moved = repair_refs(
                store, Repo(args.target), cfg.campaign, discard=args.discard_kept, ask=ask
            )
            for line in moved or ["none: every farm branch is where the store says"]:
                print(f"farm: repaired {line}")
        return run(store=store, repo=Repo(args.target), cfg=cfg, proposer=proposer, opts=opts)
    finally:
        if started:
            ray.shutdown()


def _role(args: argparse.Namespace, cfg: TargetConfig, store: Store) -> int:
    from farm.metrics import RoleMetrics, serve

    metrics = RoleMetrics(campaign=cfg.campaign, role=args.cmd)
    address = args.metrics_address or cfg.metrics.role_address(args.cmd)
    server = None
    if cfg.metrics.enabled or args.metrics_address:
        server = serve(address, metrics.registry, out=sys.stdout, what=f"farm {args.cmd}")
    try:
        return _serve_role(args, cfg, metrics.instrument(store), metrics)
    finally:
        if server is not None:
            server.close()


def _serve_role(
    args: argparse.Namespace, cfg: TargetConfig, store: Store, metrics: RoleMetrics
) -> int:
    from farm import roles
    from farm.campaign import prepare

    if args.cmd == "control":
        from farm.gitops import Repo

        with roles.Driving(store, cfg.campaign, role="farm control"):
            prepare(args.target, cfg, store, check_command=False, out=sys.stdout)
            return roles.serve_control(
                store=store,
                repo=Repo(args.target),
                cfg=cfg,
                slots=args.slots,
                idle_exit_s=args.idle_exit,
                out=sys.stdout,
            )
    if args.cmd == "propose":
        proposer = _proposer(args, cfg)  # a missing key is said now, not after the wait
        roles.wait_for_campaign(store, cfg.campaign, out=sys.stdout, timeout_s=args.wait)
        return roles.serve_propose(
            store=store,
            cfg=cfg,
            proposer=metrics.measure(proposer),
            max_candidates=args.max_candidates,
            out=sys.stdout,
        )
    roles.wait_for_campaign(store, cfg.campaign, out=sys.stdout, timeout_s=args.wait)
    import ray

    from farm.campaign import RunOptions, init_ray
    from farm.dispatch import check_feasible
    from farm.gitops import Repo

    _starting_ray(cfg, args.ray_address)
    started = init_ray(
        cfg, RunOptions(slots=args.slots, ray_address=args.ray_address), out=sys.stdout
    )
    _on_sigterm_stop()
    try:
        return roles.serve_work(
            store=store,
            repo=Repo(args.target),
            cfg=cfg,
            slots=args.slots or check_feasible(cfg),
            lease_s=args.lease,
            idle_exit_s=args.idle_exit,
            out=sys.stdout,
            metrics=metrics,
        )
    finally:
        if started:
            ray.shutdown()


def _exporter(args: argparse.Namespace) -> int:
    import threading

    from farm.exporter import run_exporter

    # No retries: a scrape during an outage answers farm_ledger_up 0 at once, within
    # Prometheus's scrape timeout, and the next scrape tries again.
    store = open_store(args.store, retries=0)
    try:
        return run_exporter(
            store=store, address=args.address, out=sys.stdout, stop=threading.Event()
        )
    finally:
        store.close()


def _starting_ray(cfg: TargetConfig, address: str | None) -> None:
    """Said at once: connecting to Ray, or starting it, takes seconds before farm can talk."""
    address = address or os.environ.get("RAY_ADDRESS")
    where = f"connecting to the Ray cluster at {address}" if address else "starting a local Ray"
    print(f"farm: campaign {cfg.campaign}: {where} …", flush=True)


def _proposer(args: argparse.Namespace, cfg: TargetConfig) -> Proposer:
    from proposer.registry import make_proposer

    try:
        return make_proposer(cfg.proposer, target=args.target)
    except ConfigError as e:
        raise ConfigError(f"{args.target / CONFIG_NAME}: {e}") from None


def _status(args: argparse.Namespace, cfg: TargetConfig, store: Store) -> int:
    from farm.progress import baseline_noise, short_screens, snapshot, status_report

    _known_campaign(cfg, store)
    snap = snapshot(store, cfg.campaign, last=args.last)
    print(
        status_report(
            snap,
            baseline=baseline_noise(store, cfg.campaign),
            screens=short_screens(store, cfg.campaign),
        )
    )
    spend = _spend_line(store, cfg)
    if spend:
        print(spend)
    return 0


def _spend_line(store: Store, cfg: TargetConfig) -> str:
    """`farm status`'s LLM line: spend, calls and tokens against the campaign's cap; ""
    before the first paid call."""
    import textwrap

    from farm.progress import WIDTH
    from farm.report import spend_text
    from farm.store.stats import llm_spend
    from proposer.base import usd

    camp = store.get_campaign(cfg.campaign)
    cap = (camp.config if camp else {}).get("proposer", {}).get("spend_cap_usd")
    llm = llm_spend(store.stats(cfg.campaign))
    if not (llm.calls or llm.in_flight):
        return ""
    of = f" (cap {usd(float(cap))})" if cap else ""
    text = f"LLM{of}: {spend_text(llm)}"
    return textwrap.fill(text, WIDTH, initial_indent="  ", subsequent_indent="    ")


def _known_campaign(cfg: TargetConfig, store: Store) -> None:
    if store.get_campaign(cfg.campaign) is None:
        known = ", ".join(c.id for c in store.list_campaigns()) or "none"
        raise FarmError(f"no campaign {cfg.campaign!r} in {store.url} (campaigns: {known})")


def _report(args: argparse.Namespace, cfg: TargetConfig, store: Store) -> int:
    from farm.report import proposer_table

    _known_campaign(cfg, store)
    if args.out is None:
        print(proposer_table(store, cfg.campaign, by=args.by))
        return 0
    from farm.plots import progress_png
    from farm.progress import full_history
    from farm.report import report_markdown

    args.out.mkdir(parents=True, exist_ok=True)
    png = progress_png(
        full_history(store, cfg.campaign),
        args.out / "progress.png",
        metric=cfg.metric,
        titles={c.id: c.title for c in store.list_candidates(cfg.campaign)},
        campaign=cfg.campaign,
    )
    md = args.out / "report.md"
    md.write_text(report_markdown(store, cfg.campaign, image=png.name))
    print(f"wrote {png} and {md}")
    return 0


def _export(args: argparse.Namespace, cfg: TargetConfig, store: Store) -> int:
    from farm.report import export_tsv

    _known_campaign(cfg, store)
    text = export_tsv(store, cfg.campaign)
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _simulate_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sim = sub.add_parser(
        "simulate",
        help="a farm on a virtual clock: utilisation, time to target, batch tuning",
        description="The real controller, merge rule and proposer scheduling on a virtual "
        "clock, with modelled trials, failures, node loss and LLM latency, against a "
        "synthetic target; each setting is compared with a one-slot sequential loop. The "
        "rule is the target's: [merge] and [proposer] scheduling from --config, else "
        "./farm.toml, else farm's defaults; a flag overrides what it names. Comma-separated "
        "values sweep a setting. The first line printed says what the model ran with.",
    )
    sim.add_argument(
        "--config",
        type=Path,
        help="a target's farm.toml (or its directory) to simulate (default: ./farm.toml if "
        "there, else farm's defaults)",
    )
    sim.add_argument(
        "--slots",
        type=_ints,
        help="e.g. 16 or 1,16,1000 (default: [resources] slots, else 1,4,16,64)",
    )
    sim.add_argument("--schedule", type=_words, help="backlog and/or rounds ([proposer] schedule)")
    sim.add_argument("--batch-size", type=_ints, help="drafts per call ([proposer] batch_size)")
    sim.add_argument("--backlog", type=_counts, help="candidates kept ready ([proposer] backlog)")
    sim.add_argument(
        "--merge",
        type=_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a [merge] key, e.g. paired=true or confirm=2,4 (values sweep); repeatable",
    )
    sim.add_argument("--max-rebases", type=_counts, help="[merge] max_rebases to try, e.g. 0,1")
    sim.add_argument(
        "--screen-fraction",
        type=_shares,
        help="short screens ([merge] screen_budget_s) this share of a trial long, e.g. 0,0.25",
    )
    sim.add_argument(
        "--trial",
        type=_duration,
        help="median trial duration; your trials' own where [merge] sets seconds (preflight_s, "
        "screen_budget_s)",
    )
    sim.add_argument("--llm", type=_duration, help="median proposer call latency")
    sim.add_argument("--crash-rate", type=float, help="share of candidates crashing")
    sim.add_argument("--node-loss", type=float, help="node losses per node-hour")
    sim.add_argument("--node-slots", type=int, help="with --node-loss: slots per node")
    sim.add_argument("--constants", type=int, help="knobs of the synthetic target")
    sim.add_argument("--noise", type=float, help="its seed noise σ")
    sim.add_argument(
        "--target", type=float, help="stop at this share of the starting loss (0: never)"
    )
    sim.add_argument(
        "--fleet",
        type=_fleet,
        default=(),
        help="a mixed fleet instead of --slots: class:slots[:offset],… (offset: what the "
        "class adds to the metric, e.g. 4090:12,h100:4:-1)",
    )
    sim.add_argument(
        "--blind",
        action="store_true",
        help="with --fleet: trials do not report their class (to see what judging by class buys)",
    )
    sim.add_argument(
        "--anywhere",
        action="store_true",
        help="with --fleet: re-runs take any free slot, not one of the class their reference "
        "ran on (to see what placing them buys)",
    )
    sim.add_argument(
        "--late",
        type=_shares,
        help="with short screens: share of knobs whose benefit they cannot see (their bias), "
        "e.g. 0,0.5",
    )
    sim.add_argument(
        "--rho",
        type=_shares,
        help="with [merge] paired: share of the seed noise a screen has in common with its "
        "reference's run of the same seed (examples/eclip: 0.76-0.98 for small changes)",
    )
    sim.add_argument("--seeds", type=int, default=3, help="runs per setting (medians shown)")
    sim.add_argument(
        "--no-sequential",
        action="store_true",
        help="skip the one-slot comparison (it is the slow part for very large targets)",
    )
    sim.add_argument("--max-candidates", type=int, help="per run")
    sim.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at once, each in a process of its own (default 1; the results are the same)",
    )
    sim.add_argument(
        "--decisions",
        action="store_true",
        help="print every decision of every run, beside the true loss it was made on",
    )


def _setting(text: str) -> tuple[str, list[object]]:
    """`confirm=2,4` → ("confirm", [2, 4]); each value read as a TOML value, else a string."""
    key, sep, values = text.partition("=")
    if not sep or not key.strip() or not values.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: write KEY=VALUE, e.g. paired=true")
    return key.strip(), [_toml_value(v) for v in _words(values)]


def _toml_value(text: str) -> object:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _simulated(args: argparse.Namespace) -> tuple[TargetConfig, str]:
    """The target whose rule is simulated, and where it was read: --config (a farm.toml or
    its directory), else ./farm.toml, else farm's defaults."""
    from farm.simulate import default_config

    path = args.config
    if path is None:
        if not Path(CONFIG_NAME).is_file():
            return default_config(), (
                "farm's defaults for a target that reads FARM_BUDGET_S, as the synthetic one "
                "does (no farm.toml here)"
            )
        path = Path(CONFIG_NAME)
    if path.is_dir():
        return load_config(path), str(path / CONFIG_NAME)
    if path.name != CONFIG_NAME:
        raise ConfigError(f"--config {path}: give a target directory or its {CONFIG_NAME}")
    return load_config(path.parent), str(path)


def _merge_sweep(
    args: argparse.Namespace, merge: MergeConfig, *, trial_s: float
) -> list[MergeConfig]:
    """Every [merge] the flags ask for: the target's, with each value of each key they
    name (every combination, when they name several values)."""
    from farm.simulate import merge_with

    axes: dict[str, list[object]] = {}
    named = [*args.merge]
    if args.max_rebases is not None:
        named.append(("max_rebases", args.max_rebases))
    if args.screen_fraction is not None:
        named.append(("screen_budget_s", [f * trial_s for f in args.screen_fraction]))
    for key, values in named:
        if key in axes:
            raise ConfigError(f"[merge] {key} is given twice: give its values once, e.g. {key}=1,2")
        axes[key] = values
    return [
        merge_with(
            merge, dict(zip(axes, combo, strict=True)), trial_s=trial_s, source="farm simulate"
        )
        for combo in itertools.product(*axes.values())
    ]


def _merge_flags(args: argparse.Namespace) -> list[str]:
    """The flags that override the target's [merge]."""
    return [f"--merge {k}" for k, _ in args.merge] + [
        flag
        for flag, value in (
            ("--max-rebases", args.max_rebases),
            ("--screen-fraction", args.screen_fraction),
        )
        if value is not None
    ]


def _shown(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()  # as TOML writes it
    return f"{value:g}" if isinstance(value, float) else str(value)


def _check_simulated(args: argparse.Namespace, models: list[SimModel]) -> None:
    """Refuse a flag that would change nothing, and a model that cannot run."""

    def refuse(flag: str, why: str) -> None:
        raise ConfigError(f"{flag}: {why}")

    if (args.blind or args.anywhere) and not args.fleet:
        refuse("--blind" if args.blind else "--anywhere", "only with --fleet (one class of slots)")
    if args.node_slots is not None and not any(m.node_loss_per_h for m in models):
        refuse("--node-slots", "nodes matter only when they are lost: add --node-loss")
    if args.late is not None and not any(m.screen_fraction for m in models):
        refuse(
            "--late",
            "it biases short screens, and none run: set [merge] screen_budget_s, or "
            "--screen-fraction",
        )
    if args.rho is not None and not any(m.merge.paired for m in models):
        refuse(
            "--rho",
            "only a paired screen shares a seed with another run: set [merge] paired = true, "
            "or --merge paired=true",
        )
    for m in models:
        for key in ("screen_budget_s", "preflight_s"):
            if getattr(m.merge, key) >= m.trial_s:
                refuse(
                    f"[merge] {key} = {getattr(m.merge, key):g}",
                    f"not shorter than a simulated trial ({m.trial_s:g} s): lower it, or "
                    "raise --trial to your trials' length",
                )


def _simulated_models(args: argparse.Namespace, cfg: TargetConfig) -> list[SimModel]:
    """A model per setting the flags sweep: the target's rule, on the cluster, trials and
    synthetic target the flags describe (the model's defaults where they say nothing)."""
    from farm.simulate import SimModel, model_of

    given = {
        name: value
        for name, value in (
            ("trial_s", args.trial),
            ("llm_s", args.llm),
            ("crash_rate", args.crash_rate),
            ("node_loss_per_h", args.node_loss),
            ("node_slots", args.node_slots),
            ("constants", args.constants),
            ("noise", args.noise),
            ("target", args.target),
            ("max_candidates", args.max_candidates),
        )
        if value is not None
    }
    base = model_of(
        cfg, SimModel(fleet=args.fleet, blind=args.blind, anywhere=args.anywhere, **given)
    )
    merges = _merge_sweep(args, cfg.merge, trial_s=base.trial_s)
    if args.fleet:
        slot_counts = [sum(n for _, n, _ in args.fleet)]
    else:
        slot_counts = args.slots or (
            [cfg.resources.slots] if cfg.resources.slots else [1, 4, 16, 64]
        )
    bad = [s for s in args.schedule or () if s not in set(Schedule)]
    if bad:
        raise ConfigError(f'--schedule {bad[0]!r}: use "backlog", "rounds" or both')
    models = [
        dataclasses.replace(
            base,
            slots=slots,
            schedule=schedule,
            batch_size=batch,
            backlog=backlog,
            merge=merge,
            late=late,
            rho=rho,
        )
        for slots in slot_counts
        for schedule in args.schedule or [base.schedule]
        for batch in args.batch_size or [base.batch_size]
        for backlog in args.backlog or [base.backlog]
        for merge in merges
        for late in args.late or [base.late]
        for rho in args.rho or [base.rho]
    ]
    _check_simulated(args, models)
    return models


def _simulate(args: argparse.Namespace) -> int:
    from farm.sweep import cells, summary, sweep, table

    cfg, source = _simulated(args)
    models = _simulated_models(args, cfg)
    m = models[0]
    print(
        f"farm simulate: trials {m.trial_s:g} s (lognormal σ {m.trial_jitter:g}), "
        f"{m.crash_rate:.0%} crash; LLM calls {m.llm_s:g} s; node loss {m.node_loss_per_h:g}"
        f"/node-h ({m.node_slots} slots a node); "
        + (f"target {m.target:.0%} of the starting loss" if m.target else "no target")
        + f" ({m.constants} knobs, noise σ {m.noise:g}); {args.seeds} seed(s), medians"
        + (
            "; fleet " + ", ".join(f"{c}: {n} slots, {o:+g}" for c, n, o in args.fleet)
            if args.fleet
            else ""
        )
    )
    overridden = _merge_flags(args)
    print(
        f"[merge] from {source}"
        + (f", overridden by {', '.join(overridden)}" if overridden else "")
        + ": "
        + " ".join(
            f"{f.name}={','.join(dict.fromkeys(_shown(getattr(x.merge, f.name)) for x in models))}"
            for f in dataclasses.fields(m.merge)
        )
    )
    if m.batch_size is None or m.backlog is None:
        print(
            "[proposer] batch_size and backlog sized from the slots, the LLM's latency and "
            "the trials' length where not given (farm.propose.feed_sizes): the table says "
            "what they came to"
        )
    print(table([]), flush=True)
    results = sweep(
        models,
        seeds=args.seeds,
        compare=not args.no_sequential,
        jobs=args.jobs,
        on_row=lambda rows: print("| " + " | ".join(cells(rows)) + " |", flush=True),
    )
    print("\nWhat the controller decided, per row of the table and seed:")
    for i, rows in enumerate(results, 1):
        for row in rows:
            print(f"- row {i}, seed {row.farm.model.seed}: {summary(row.farm)}")
            for said in row.farm.notices:
                print(f"    said: {said}")
            if args.decisions:
                for d in row.farm.decided:
                    print(f"    {d.describe()}")
    return 0


def _init_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    init = sub.add_parser(
        "init",
        help="look at a repo, run its command once, write a commented farm.toml",
        description="Reads program*.md, the README and the imports to find the editable and "
        "protected files and the command, runs the command once in the sandbox to find the "
        "metric and time it, and writes farm.toml with a warning for every guess.",
    )
    init.add_argument("target", nargs="?", default=".", type=Path)
    init.add_argument(
        "--no-probe", action="store_true", help="do not run the command (nothing is checked)"
    )
    init.add_argument(
        "--probe-budget",
        type=_duration,
        default=300.0,
        help="time limit of the probe run: seconds, or with s, m or h (default 300)",
    )
    init.add_argument("--command", help="the command that runs one trial, if not found")
    init.add_argument("--metric", help="the summary line to optimise, if not the likeliest")
    init.add_argument("--direction", choices=["minimize", "maximize"], help="if not guessed")


def _init(args: argparse.Namespace) -> int:
    from farm.init import init_target
    from farm.records import Direction

    init_target(
        args.target,
        probe=not args.no_probe,
        probe_budget_s=args.probe_budget,
        command=args.command,
        metric=args.metric,
        direction=Direction(args.direction) if args.direction else None,
        ask=input if sys.stdin.isatty() and sys.stdout.isatty() else None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
