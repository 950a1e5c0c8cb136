"""The ``metajax`` command line: ``metajax list``, ``run``, ``sweep`` and ``report``."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path
from types import ModuleType

from metajax._src.experiment.config import (
    ConfigError,
    apply_overrides,
    config_from_dict,
    describe_fields,
)

ENV_EXPERIMENTS = "METAJAX_EXPERIMENTS"
WORKER_GRACE_SECONDS = 30.0  # --processes: how long the others may run on after one failed


def experiment_dirs() -> list[Path]:
    """Where experiments are looked up, in order: ``$METAJAX_EXPERIMENTS``, ``./experiments``,
    and the experiments that ship with metajax (the ``metajax.experiments`` package: the
    repository's ``experiments/`` folder)."""
    dirs = []
    if os.environ.get(ENV_EXPERIMENTS):
        dirs += [Path(p) for p in os.environ[ENV_EXPERIMENTS].split(os.pathsep) if p]
    dirs.append(Path.cwd() / "experiments")
    dirs.append(_shipped_experiments())
    seen, unique = set(), []
    for d in dirs:
        if d.is_dir() and d.resolve() not in seen:
            seen.add(d.resolve())
            unique.append(d)
    return unique


def _shipped_experiments() -> Path:
    """The folder of the ``metajax.experiments`` package (installed or editable), else the
    source checkout's ``experiments/``."""
    spec = importlib.util.find_spec("metajax.experiments")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(__file__).resolve().parent.parent / "experiments"


def available_experiments() -> dict[str, Path]:
    """``{name: path}`` of every experiment module found (first directory wins)."""
    found: dict[str, Path] = {}
    for d in experiment_dirs():
        for path in sorted(d.glob("*.py")):
            if not path.name.startswith("_"):
                found.setdefault(path.stem, path)
    return found


def load_experiment(name: str) -> ModuleType:
    """Imports an experiment by name (from :func:`experiment_dirs`) or by path to a ``.py`` file.

    The module must define a frozen dataclass ``Config`` and ``main(config, out_dir)``.
    """
    path = Path(name)
    if not (path.suffix == ".py" and path.is_file()):
        known = available_experiments()
        if name not in known:
            raise SystemExit(f"Unknown experiment {name!r}. Available: "
                             f"{', '.join(sorted(known)) or '(none found)'}; or give a path to "
                             f"a .py file. Searched: {', '.join(map(str, experiment_dirs()))}.")
        path = known[name]
    module_name = f"metajax_experiment_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses resolve annotations through sys.modules
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    if not (dataclasses.is_dataclass(getattr(module, "Config", None)) and
            callable(getattr(module, "main", None))):
        raise SystemExit(f"{path} is not a metajax experiment: it needs a dataclass `Config` "
                         "and a function `main(config, out_dir)`.")
    return module


def _cmd_list(args) -> int:
    broken = []
    for name, path in sorted(available_experiments().items()):
        try:
            module = load_experiment(str(path))
        except (Exception, SystemExit) as err:  # one broken file must not hide the others
            broken.append(f"{path}: {type(err).__name__}: {err}".splitlines()[0])
            continue
        doc = (module.__doc__ or "").strip().splitlines()
        print(f"{name:24s} {doc[0] if doc else ''}")
        if args.verbose:
            print(describe_fields(module.Config))
    for line in broken:
        print(f"metajax list: skipped {line}", file=sys.stderr)
    return 0


def _prepare_run_dir(args, module, name: str):
    """Returns ``(config, out_dir)`` for a new run or for ``--resume DIR``.

    Raises:
        ConfigError: a bad config, directory or stored run (one line for the CLI).
        RunLockedError: another live process writes to the directory.
    """
    from metajax._src.experiment.run_lock import RunLock

    if args.resume:
        out = Path(args.resume)
        stored_path = out / "config.json"
        if not stored_path.is_file():
            raise ConfigError(f"--resume {out}: no config.json there; is it a metajax run "
                              "directory?")
        if args.set or args.out:
            raise ConfigError("--resume continues a run with its own config.json: --set and "
                              "--out cannot be combined with it.")
        if args.process_id is None:
            RunLock(out).check_free()
        try:
            stored = json.loads(stored_path.read_text())
            values = stored["config"]
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"--resume {out}: {stored_path.name} is not valid JSON ({err}).") \
                from None
        except (KeyError, TypeError):
            raise ConfigError(f"--resume {out}: {stored_path.name} has no \"config\" object; "
                              "is it a metajax run directory?") from None
        if stored.get("experiment") != name:
            raise ConfigError(f"--resume {out}: that run is experiment "
                              f"{stored.get('experiment')!r}, not {name!r}.")
        if not isinstance(values, dict):
            raise ConfigError(f"--resume {out}: the \"config\" of {stored_path.name} is not an "
                              "object.")
        try:
            return config_from_dict(module.Config, values), out
        except TypeError as err:
            raise ConfigError(f"--resume {out}: {stored_path.name} does not fit "
                              f"{name}'s Config ({err}).") from None
    config = apply_overrides(module.Config(), args.set or [])
    out = Path(args.out) if args.out else Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: that is a file, not a directory.")
    if out.is_dir():
        RunLock(out).check_free()
    earlier = sorted(p.name for p in out.glob("*") if p.name in RUN_FILES) if out.is_dir() else []
    if earlier and not getattr(args, "overwrite", False):
        hint = (f"continue it with `metajax run {name} --resume {out}`, "
                if "checkpoints" in earlier else "")
        raise ConfigError(f"--out {out} already holds a run ({', '.join(earlier)}): {hint}"
                          "choose another --out, or pass --overwrite to replace it.")
    for item in earlier:  # --overwrite: the earlier run's own files only
        path = out / item
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
        _write_run_config(out, name, config)
    except OSError as err:
        raise ConfigError(f"--out {out}: cannot write there ({err.strerror or err}).") from None
    return config, out


# what a run writes into its directory (``--overwrite`` removes exactly these)
RUN_FILES = frozenset({"config.json", "metrics.jsonl", "summary.json", "checkpoints",
                       "tensorboard", "learning_curve.png", "loss_curves.png", "tasks.png",
                       "accuracy_vs_time.png"})


def _remove_run_files(out: Path) -> None:
    """Removes what a run writes into ``out`` (and ``out`` itself if that leaves it empty)."""
    for path in out.glob("*"):
        if path.name in RUN_FILES:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    with contextlib.suppress(OSError):
        out.rmdir()


# the config fields that set how many tasks (or examples) one training step holds
BATCH_FIELDS = ("meta_batch", "batch", "n_tasks", "pretrain_batch", "batch_size")


def _memory_message(err, config) -> str:
    """A too-large training step, in the config's own field names."""
    from metajax._src.experiment.memory import GIB

    field = next((f for f in BATCH_FIELDS
                  if getattr(config, f, None) == err.tasks_per_step), "meta_batch")
    return (f"{field}: the training step needs about {err.needed / GIB:.3g} GiB (XLA's "
            f"estimate for {field} = {err.tasks_per_step}), more than the "
            f"{err.available / GIB:.3g} GiB of memory available; lower {field} (nothing "
            "was trained).")


def _write_run_config(out: Path, name: str, config) -> None:
    """``out/config.json`` as ``--resume`` reads it."""
    from metajax._src.experiment.run_io import write_json_atomic

    write_json_atomic(out / "config.json", {"experiment": name, "config": config})


def _cpu_workers(n: int) -> tuple[dict, list[int]]:
    """The environment of ``n`` CPU worker processes and this process's cores (a warning
    when ``n`` exceeds them)."""
    cores = sorted(os.sched_getaffinity(0))
    if n > len(cores):
        print(f"warning: {n} processes share {len(cores)} cores; one process per core is the "
              f"point.", file=sys.stderr)
    return dict(os.environ, JAX_PLATFORMS="cpu"), cores


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch_processes(args, module, name: str) -> int:
    """``metajax run --processes N``: the run directory, then N worker processes of this
    command (one per CPU core, see :func:`metajax.distributed.init_process`); returns their
    exit code."""
    from metajax._src.experiment.run_lock import RunLock, RunLockedError

    n = args.processes
    if getattr(module, "PROCESSES", True) is False:
        print(f"metajax run {name}: --processes {n}: this experiment runs in one process (its "
              "training step samples its own tasks, which are not split between processes); "
              f"to fill the cores, run separate runs side by side with `metajax sweep {name} "
              f"--grid ... --processes {n}`.", file=sys.stderr)
        return 2
    try:
        config, out = _prepare_run_dir(args, module, name)
    except (ConfigError, RunLockedError) as err:
        print(f"metajax run {args.experiment}: {err}", file=sys.stderr)
        return 2
    meta_batch = getattr(config, "meta_batch", None)
    if isinstance(meta_batch, int) and meta_batch % n:
        print(f"metajax run {name}: --processes {n} splits each meta-batch between the "
              f"processes; meta_batch ({meta_batch}) must be a multiple of {n}.", file=sys.stderr)
        return 2
    print(f"metajax run {name} -> {out}" + (" (resuming)" if args.resume else "")
          + f", {n} processes on {len(os.sched_getaffinity(0))} cores", file=sys.stderr)
    try:
        with RunLock(out):
            return _run_workers(args, name, out, n)
    except RunLockedError as err:
        print(f"metajax run {name}: {err}", file=sys.stderr)
        return 2


def _run_workers(args, name: str, out: Path, n: int) -> int:
    """Starts the N worker processes of ``metajax run --processes N`` and waits for them."""
    import signal
    import subprocess

    env, _ = _cpu_workers(n)
    command = [sys.executable, "-m", "metajax.cli", "run", args.experiment, "--resume", str(out),
               "--processes", str(n), "--coordinator", f"localhost:{_free_port()}"]
    if args.no_progress:
        command.append("--no-progress")
    if args.tensorboard:
        command.append("--tensorboard")
    workers = []
    for i in range(n):  # process 0 talks to the terminal; the others log to files
        log = None if i == 0 else open(out / f"process-{i}.log", "w")  # noqa: SIM115
        workers.append((subprocess.Popen(command + ["--process-id", str(i)], env=env,
                                         stdout=subprocess.DEVNULL if i else None,
                                         stderr=log), log))
    # Ctrl-C reaches the workers (same process group): they stop at the same step and
    # process 0 writes the checkpoint. Here it only must not kill the launcher.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        codes = _wait_workers([w for w, _ in workers], WORKER_GRACE_SECONDS)
    finally:
        signal.signal(signal.SIGINT, previous)
        for _, log in workers:
            if log is not None:
                log.close()
    for i, code in enumerate(codes):
        if i == 0 and code >= 0:  # process 0 has said why, on this terminal
            continue
        if code != 0 and not code == codes[0] == 130:  # 130: all stopped by Ctrl-C
            how = (f"was killed by {signal.Signals(-code).name}" if code < 0
                   else f"exited with {code}")
            log = "" if i == 0 else f"; see {out / f'process-{i}.log'}"
            print(f"metajax run {name}: process {i} {how}{log}", file=sys.stderr)
    code = codes[0] or next((c for c in codes if c != 0), 0)
    return 1 if code < 0 else code


def _nan_hint(config) -> str:
    """What to change after a non-finite loss, in this experiment's own config fields."""
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    tips = [f"--set {k}={v / 3:.3g}" for k, v in fields.items()
            if k in ("inner_lr", "outer_lr", "lr") and isinstance(v, float) and v > 0]
    clip = fields.get("clip_grad_norm")
    if isinstance(clip, (int, float)):
        tips.append(f"--set clip_grad_norm={clip / 3 if clip > 0 else 1.0:.3g}")
    if not tips:
        return "Try smaller learning rates."
    return "Try a new run with " + " or ".join(tips) + "."


def _kept_checkpoints(out: Path) -> str:
    """Which checkpoints a stopped run leaves, per training phase."""
    phases = []
    for phase in sorted((out / "checkpoints").glob("*")):
        steps = sorted(int(p.stem.split("-")[1]) for p in phase.glob("ckpt-*.msgpack"))
        if steps:
            phases.append(f"{phase.name} at step {steps[-1]}")
    if not phases:
        return "No checkpoint had been written yet."
    return "The checkpoints are intact: " + ", ".join(phases) + "."


WORKER_ORPHAN_GRACE_SECONDS = 120.0

# how a collective says that its peer process is gone (Gloo over TCP, the coordination service)
LOST_PEER = ("gloo", "connection reset", "connection closed", "connection refused",
             "broken pipe", "heartbeat", "coordination service")


def _lost_a_process(err: BaseException) -> bool:
    """Whether ``err`` is a collective failing because another process died (JAX raises
    it as a ``JaxRuntimeError`` or, from a collective, a ``ValueError``)."""
    text = str(err).lower()
    return isinstance(err, (RuntimeError, ValueError)) and any(w in text for w in LOST_PEER)


def _first_line(err: BaseException) -> str:
    """The first line of ``err``'s message, at most 160 characters."""
    line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return line if len(line) <= 160 else line[:157] + "..."


def _stop_with_launcher() -> None:
    """A worker of ``--processes`` stops when its launcher dies (e.g. ``kill -9``): it gets a
    Ctrl-C (so process 0 checkpoints where the workers stop), and exits for good if it has
    not stopped ``WORKER_ORPHAN_GRACE_SECONDS`` later. Without this the workers ran on as
    orphans, beside a ``--resume`` of the same directory."""
    import signal
    import threading

    launcher = os.getppid()

    def watch():
        while os.getppid() == launcher:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(WORKER_ORPHAN_GRACE_SECONDS)
        os._exit(130)

    threading.Thread(target=watch, daemon=True, name="metajax-launcher-watch").start()


def _wait_workers(workers, grace: float) -> list[int]:
    """Exit codes of ``workers``; once one fails, the others get ``grace`` seconds (they may
    be waiting for it in a collective) before they are killed."""
    deadline = None
    while True:
        codes = [w.poll() for w in workers]
        if all(c is not None for c in codes):
            return codes
        if deadline is None and any(c not in (None, 0) for c in codes):
            deadline = time.monotonic() + grace
        if deadline is not None and time.monotonic() > deadline:
            for w in workers:
                if w.poll() is None:
                    w.kill()
            return [w.wait() for w in workers]
        time.sleep(0.2)


def _cmd_run(args) -> int:
    from metajax._src.experiment.checkpoint import CheckpointError
    from metajax._src.experiment.memory import MemoryEstimateError
    from metajax._src.experiment.run_lock import RunLock, RunLockedError
    from metajax._src.experiment.training import Interrupted, NonFiniteLoss

    if args.processes < 1:
        print(f"metajax run: --processes must be >= 1; got {args.processes}.", file=sys.stderr)
        return 2
    module = load_experiment(args.experiment)
    name = Path(args.experiment).stem
    worker = args.process_id is not None
    if args.processes > 1 and not worker:
        return _launch_processes(args, module, name)
    if worker:  # first, before JAX creates its backend
        from metajax._src.distributed.processes import init_process

        _stop_with_launcher()
        init_process(args.process_id, args.processes, coordinator=args.coordinator)
    try:
        config, out = _prepare_run_dir(args, module, name)
    except (ConfigError, RunLockedError) as err:
        print(f"metajax run {args.experiment}: {err}", file=sys.stderr)
        return 2
    if not worker:
        print(f"metajax run {name} -> {out}" + (" (resuming)" if args.resume else ""),
              file=sys.stderr)
    processes = f" --processes {args.processes}" if worker else ""
    mirror = contextlib.nullcontext()
    if args.tensorboard and not args.process_id:
        from metajax._src.experiment.tensorboard import MetricsMirror

        mirror = MetricsMirror(out)
    lock = contextlib.nullcontext() if worker else RunLock(out)
    try:
        with lock, mirror:
            summary = module.main(config, out, progress=not args.no_progress)
    except RunLockedError as err:
        print(f"metajax run {name}: {err}", file=sys.stderr)
        return 2
    except Interrupted as err:
        if not args.process_id:
            print(f"\n{err} Continue with: metajax run {name} --resume {out}{processes}",
                  file=sys.stderr)
        return 130
    except NonFiniteLoss as err:
        print(f"metajax run {name}: non-finite meta-training loss at step {err.step} "
              f"({err.value}). {err.kept} {_nan_hint(config)}", file=sys.stderr)
        return 1
    except FloatingPointError as err:
        print(f"metajax run {name}: {err}", file=sys.stderr)
        return 1
    except CheckpointError as err:
        print(f"metajax run {name}: {err}", file=sys.stderr)
        return 2
    except MemoryEstimateError as err:
        if not args.resume:  # no step ran: the directory holds nothing worth keeping
            _remove_run_files(out)
        print(f"metajax run {name}: {_memory_message(err, config)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (compiling, evaluating, ...)
        if not args.process_id:
            print(f"\nmetajax run {name}: interrupted. {_kept_checkpoints(out)} Continue with: "
                  f"metajax run {name} --resume {out}{processes}", file=sys.stderr)
        return 130
    except FileNotFoundError as err:
        hint = (" Point --set data_root=DIR (or METAJAX_DATA) at the folder holding the data."
                if hasattr(config, "data_root") else "")
        print(f"metajax run {name}: {err}{hint}", file=sys.stderr)
        return 2
    except OSError as err:  # disk full, a read-only or vanished output folder, ...
        where = f" ({err.filename})" if err.filename else ""
        print(f"metajax run {name}: stopped by a file error: {err.strerror or err}{where}. "
              f"{_kept_checkpoints(out)} Free space or fix the folder, then: metajax run "
              f"{name} --resume {out}{processes}", file=sys.stderr)
        return 1
    except Exception as err:
        if not (worker and _lost_a_process(err)) or args.process_id:
            raise  # unexpected; or a worker's log, which keeps its traceback
        print(f"metajax run {name}: stopped: another process of --processes "
              f"{args.processes} is gone ({_first_line(err)}). {_kept_checkpoints(out)} "
              f"Continue with: metajax run {name} --resume {out}{processes}", file=sys.stderr)
        return 1
    if args.process_id:  # not process 0: the same results, printed by process 0
        return 0
    if isinstance(summary, dict) and "results" in summary:
        from metajax._src.experiment.comparison import format_table

        print("\n" + summary.get("caption", f"Held-out query {summary.get('metric', 'loss')} "
              f"(mean ± 95% CI over {summary.get('num_test_tasks', '?')} tasks):"))
        print(format_table(summary))
        if isinstance(summary.get("paired"), dict) and summary["paired"]:
            from metajax.experiment import format_paired

            print("\nThe learned optimizer against each baseline, task by task: final loss "
                  "learned - baseline (mean ± 95% CI), log10(learned / baseline), and the "
                  "share of tasks where the learned optimizer ends lower:")
            print(format_paired(summary))
        cross = summary.get("cross_domain")
        if isinstance(cross, dict) and "results" in cross:
            from metajax._src.experiment.cross_domain import format_retained

            name = cross.get("dataset", {}).get("name", "other domain")
            print(f"\nCross-domain ({name}) query {cross.get('metric', 'loss')} (mean ± 95% CI "
                  f"over {cross.get('num_test_tasks', '?')} tasks):")
            print(format_table(cross))
            print(format_retained(cross))
    elif summary is not None:
        print(json.dumps(summary, indent=2, default=str))
    print(f"\nOutputs in {out}", file=sys.stderr)
    return 0


def _parse_grid(module, items: list[str]) -> dict[str, tuple]:
    from metajax._src.experiment.config import field_types, parse_value

    types = field_types(module.Config)
    grid = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or key not in types or key == "seed":
            raise ConfigError(f"--grid {item!r}: expected KEY=V1,V2,... with KEY a config field "
                              f"other than seed (use --seeds).\nValid keys:\n"
                              f"{describe_fields(module.Config)}")
        if key in grid:
            raise ConfigError(f"--grid {item!r}: {key} is given twice; list all its values in "
                              "one --grid KEY=V1,V2,...")
        parts = [v.strip() for v in text.split(",")]
        if not text.strip() or any(not v for v in parts):
            raise ConfigError(f"--grid {item!r}: expected KEY=V1,V2,... with no empty value.")
        try:
            values = tuple(parse_value(v, types[key]) for v in parts)
        except ValueError as err:
            raise ConfigError(f"--grid {item!r}: {err}") from None
        repeated = sorted({str(v) for i, v in enumerate(values) if v in values[:i]})
        if repeated:
            raise ConfigError(f"--grid {item!r}: {key} repeats {', '.join(repeated)}; each "
                              "configuration once (use --seeds for repetitions).")
        grid[key] = values
    return grid


def _cmd_sweep(args) -> int:
    import dataclasses

    from metajax._src.experiment.run_io import write_json_atomic
    from metajax._src.experiment.sweep import (
        format_sweep_table,
        grid_combinations,
        sweep_table,
        vmapped_sweep,
    )

    module = load_experiment(args.experiment)
    name = Path(args.experiment).stem
    try:
        config = apply_overrides(module.Config(), args.set or [])
        grid = _parse_grid(module, args.grid or [])
    except ConfigError as err:
        print(f"metajax sweep {name}: {err}", file=sys.stderr)
        return 2
    if args.seeds < 1:
        print(f"metajax sweep {name}: --seeds must be >= 1; got {args.seeds}.", file=sys.stderr)
        return 2
    seeds = [config.seed + i for i in range(args.seeds)]
    combos = grid_combinations(grid, seeds)
    eval_steps = (0, *getattr(config, "eval_steps", (1, 5, 10)))
    sweepable = set(getattr(module, "SWEEPABLE", ()))
    vmapped = (not args.sequential and hasattr(module, "sweep_problem")
               and set(grid) <= sweepable)
    if args.processes < 1 or (vmapped and args.processes > 1):
        print(f"metajax sweep {name}: --processes N runs N combinations side by side, each "
              f"as a run of its own; " + ("N must be >= 1." if args.processes < 1 else
              "this sweep is one vmapped program (faster): drop --processes, or add "
              "--sequential."), file=sys.stderr)
        return 2
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else Path("runs") / f"sweep-{name}-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "config.json", {"experiment": name, "config": config,
                                            "grid": grid, "seeds": seeds})
    metric = "query loss"  # a sequential sweep's runs name their own
    how = ("one vmapped program" if vmapped else "sequential runs" if args.processes == 1
           else f"separate runs, {args.processes} at a time, one process per core")
    print(f"metajax sweep {name}: {len(combos)} runs ({how}) -> {out}", file=sys.stderr)
    if vmapped:
        result = vmapped_sweep(module.sweep_problem(config), combos, eval_steps=eval_steps,
                               steps_per_call=getattr(config, "steps_per_call", 500),
                               progress=not args.no_progress)
        rows = sweep_table(combos, result["per_task"], metric="loss", eval_steps=eval_steps)
        extra = {"mode": "vmapped", "seconds": result["seconds"],
                 "compile_seconds": result["compile_seconds"]}
    elif args.processes > 1:
        t0 = time.perf_counter()
        configs = [dataclasses.replace(config, **combo) for combo in combos]
        per_run, code = _sweep_in_processes(args.experiment, name, configs, out / "runs",
                                            args.processes)
        if code:
            return code
        extra = {"mode": "sequential", "processes": args.processes,
                 "seconds": time.perf_counter() - t0}
    else:
        per_run = []
        t0 = time.perf_counter()
        for i, combo in enumerate(combos):
            run_config = dataclasses.replace(config, **combo)
            summary = module.main(run_config, out / "runs" / f"run{i:03d}",
                                  progress=not args.no_progress)
            per_run.append(summary)
        extra = {"mode": "sequential", "seconds": time.perf_counter() - t0}
    if not vmapped:  # the runs' own columns and metric
        eval_steps, metric = _result_columns(per_run), _metric_of(per_run)
        rows = _rows_from_summaries(combos, per_run, eval_steps)
    write_json_atomic(out / "sweep.json", {"rows": rows, **extra})
    table = format_sweep_table(rows, eval_steps=eval_steps)
    (out / "sweep.md").write_text(table + "\n")
    _plot_sweep(rows, eval_steps, out / "sweep.png", metric=metric)
    print(table)
    print(f"\n{extra['mode']} sweep took {extra['seconds']:.1f} s; outputs in {out}",
          file=sys.stderr)
    return 0


def _sweep_in_processes(experiment: str, name: str, configs: list, runs: Path, n: int
                        ) -> tuple[list[dict], int]:
    """Runs ``configs`` as ``metajax run`` processes, ``n`` at a time, each pinned to a core
    of its own (so XLA gives it one thread). Returns their summaries in order, and 0; or
    ``([], code)`` once a run failed (the running ones finish) or Ctrl-C stopped them."""
    import signal
    import subprocess

    env, cores = _cpu_workers(n)
    pending = list(enumerate(configs))
    running: dict[int, tuple] = {}  # slot -> (index, process, log)
    codes: dict[int, int] = {}
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the runs checkpoint
    try:
        while pending or running:
            stop = any(c != 0 for c in codes.values())
            for slot in range(n):
                if slot in running or not pending or stop:
                    continue
                i, run_config = pending.pop(0)
                run_dir = runs / f"run{i:03d}"
                run_dir.mkdir(parents=True, exist_ok=True)
                _write_run_config(run_dir, name, run_config)
                log = open(run_dir / "run.log", "w")  # noqa: SIM115 - closed when it ends
                core = cores[slot % len(cores)]  # --pin-cpu: before JAX's backend exists
                process = subprocess.Popen(
                    [sys.executable, "-m", "metajax.cli", "run", experiment, "--resume",
                     str(run_dir), "--no-progress", "--pin-cpu", str(core)], env=env,
                    stdout=log, stderr=log)
                running[slot] = (i, process, log)
            for slot, (i, process, log) in list(running.items()):
                if process.poll() is not None:
                    log.close()
                    codes[i] = process.returncode
                    del running[slot]
            if stop and not running:
                break
            time.sleep(0.2)
    finally:
        signal.signal(signal.SIGINT, previous)
        for _, process, log in running.values():
            process.kill()
            log.close()
    failed = {i: c for i, c in codes.items() if c != 0}
    if failed:
        for i, c in sorted(failed.items()):
            what = "stopped by Ctrl-C" if c == 130 else f"exited with {c}"
            print(f"metajax sweep {name}: run {i} {what}; see {runs / f'run{i:03d}' / 'run.log'}"
                  + (f" (continue it with `metajax run {name} --resume "
                     f"{runs / f'run{i:03d}'}`)" if c == 130 else ""), file=sys.stderr)
        return [], 130 if all(c == 130 for c in failed.values()) else 1
    summaries = [json.loads((runs / f"run{i:03d}" / "summary.json").read_text())
                 for i in range(len(configs))]
    return summaries, 0


def _result_columns(summaries) -> list[str]:
    """The table columns of a run's first method (adaptation steps, or an experiment's own
    columns such as the bandit settings)."""
    return list(next(iter(summaries[0]["results"].values())))


def _metric_of(summaries) -> str:
    metric = summaries[0].get("metric", "loss")
    return "query loss" if metric == "loss" else metric


def _rows_from_summaries(combos, summaries, eval_steps):
    """Sequential sweeps: pool the first method's per-seed summaries of each combination."""
    import numpy as np

    groups: dict[tuple, list[dict]] = {}
    for combo, summary in zip(combos, summaries, strict=True):
        key = tuple((k, v) for k, v in combo.items() if k != "seed")
        method = next(iter(summary["results"]))
        groups.setdefault(key, []).append(summary["results"][method])
    rows = []
    for key, results in groups.items():
        row = {**dict(key), "seeds": len(results)}
        for s in map(str, eval_steps):
            means = [r[s]["mean"] for r in results]
            ci = sum(r[s]["ci95"] ** 2 for r in results) ** 0.5 / len(results)
            row[s] = {"mean": float(np.mean(means)), "ci95": float(ci),
                      "n": int(sum(r[s]["n"] for r in results)),
                      "nonfinite": int(sum(r[s].get("nonfinite", 0) for r in results)),
                      "seed_sd": float(np.std(means, ddof=1)) if len(means) > 1 else 0.0}
        rows.append(row)
    return rows


def _plot_sweep(rows, eval_steps, path, *, metric: str = "query loss"):
    from metajax._src.experiment.plots import _pyplot

    plt = _pyplot()
    last = str(eval_steps[-1])
    labels = [", ".join(f"{k}={v}" for k, v in r.items() if k not in {"seeds",
              *map(str, eval_steps)}) or "default" for r in rows]
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(rows)), 4))
    ax.bar(range(len(rows)), [r[last]["mean"] for r in rows],
           yerr=[r[last]["ci95"] for r in rows], capsize=4)
    ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=8)
    where = f"after {last} steps" if last.isdigit() else f"at {last}"
    ax.set_ylabel(f"{metric} {where} (mean ± 95% CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cmd_report(args) -> int:
    from metajax._src.experiment.report import comparison_table, load_run, plot_runs

    try:
        runs = [load_run(d) for d in args.runs]
    except (FileNotFoundError, ValueError) as err:
        print(f"metajax report: {err}", file=sys.stderr)
        return 2
    print(comparison_table(runs))  # the table first: a plot that cannot be written loses nothing
    if not args.no_plot:
        try:
            plot_runs(runs, args.plot)
        except OSError as err:
            print(f"metajax report: could not write the plot {args.plot} ({err.strerror or err})"
                  "; pass --plot PATH or --no-plot.", file=sys.stderr)
            return 1
        print(f"\nLearning curves: {args.plot}", file=sys.stderr)
    return 0


def _enable_compilation_cache() -> None:
    import jax

    cache = os.environ.get("METAJAX_COMPILATION_CACHE",
                           str(Path.home() / ".cache" / "metajax" / "jax"))
    if cache:
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def build_parser() -> argparse.ArgumentParser:
    """The ``metajax`` argument parser."""
    parser = argparse.ArgumentParser(prog="metajax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="list the available experiments")
    p_list.add_argument("-v", "--verbose", action="store_true", help="show config fields")
    p_list.set_defaults(func=_cmd_list)
    p_run = sub.add_parser("run", help="run an experiment")
    p_run.add_argument("experiment", help="experiment name (see `metajax list`) or a .py path")
    p_run.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a config field; repeatable")
    p_run.add_argument("--out", help="output directory (default: runs/NAME-TIMESTAMP)")
    p_run.add_argument("--resume", metavar="DIR",
                       help="continue the run in DIR from its newest checkpoint")
    p_run.add_argument("--overwrite", action="store_true",
                       help="replace an earlier run's files in --out (refused otherwise)")
    p_run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p_run.add_argument("--tensorboard", action="store_true",
                       help="also write metrics.jsonl's scalars as TensorBoard events in "
                            "OUT/tensorboard (no TensorBoard install needed to write them)")
    p_run.add_argument("--processes", type=int, default=1, metavar="N",
                       help="run as N single-threaded processes, one per CPU core, each "
                            "meta-batch split between them and evaluation shared out (CPU; "
                            "meta_batch a multiple of N); the fastest way to train conv nets "
                            "on a multi-core CPU")
    p_run.add_argument("--process-id", type=int, help=argparse.SUPPRESS)  # set by the launcher
    p_run.add_argument("--coordinator", help=argparse.SUPPRESS)
    p_run.add_argument("--pin-cpu", type=int, help=argparse.SUPPRESS)  # set by sweep
    p_run.set_defaults(func=_cmd_run)
    p_sweep = sub.add_parser("sweep", help="run a grid of configs x seeds; one program "
                                           "where the swept keys keep shapes fixed")
    p_sweep.add_argument("experiment", help="experiment name or .py path")
    p_sweep.add_argument("--grid", action="append", metavar="KEY=V1,V2,...",
                         help="values of one config field; repeatable")
    p_sweep.add_argument("--seeds", type=int, default=1, help="seeds per combination")
    p_sweep.add_argument("--set", action="append", metavar="KEY=VALUE",
                         help="override a config field; repeatable")
    p_sweep.add_argument("--out", help="output directory")
    p_sweep.add_argument("--sequential", action="store_true",
                         help="run every combination as its own run, even if vmappable")
    p_sweep.add_argument("--no-progress", action="store_true")
    p_sweep.add_argument("--processes", type=int, default=1, metavar="N",
                         help="run N combinations side by side, each a single-threaded "
                              "`metajax run` process pinned to a CPU core of its own "
                              "(sequential sweeps); logs in runs/runNNN/run.log")
    p_sweep.set_defaults(func=_cmd_sweep)
    p_report = sub.add_parser("report", help="compare finished runs: one table, one plot")
    p_report.add_argument("runs", nargs="+", metavar="DIR", help="run directories")
    p_report.add_argument("--plot", default="report.png", help="learning-curve PNG to write")
    p_report.add_argument("--no-plot", action="store_true", help="print the table only")
    p_report.set_defaults(func=_cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``metajax`` command."""
    args = build_parser().parse_args(argv)
    if getattr(args, "pin_cpu", None) is not None:  # one core: XLA gives it one thread
        os.sched_setaffinity(0, {args.pin_cpu})
    if args.command in ("run", "sweep"):
        _tune_cpu()
    if args.command == "run":
        _enable_compilation_cache()
    if getattr(args, "process_id", None) is not None:
        return _run_worker(args)
    return args.func(args)


def _tune_cpu() -> None:
    """``metajax.cpu.configure()`` before anything computes, unless JAX will run on an
    accelerator (``JAX_PLATFORMS`` names another platform, or a JAX plugin such as CUDA's is
    installed and ``JAX_PLATFORMS`` does not restrict JAX to the CPU)."""
    from importlib.metadata import entry_points

    platforms = os.environ.get("JAX_PLATFORMS", "").lower()
    if platforms and platforms != "cpu":
        return
    if not platforms and list(entry_points(group="jax_plugins")):
        return
    from metajax._src.cpu.configure import backend_started, configure

    if not backend_started():  # called in-process after JAX already ran (tests): leave it
        configure()


def _run_worker(args) -> int:
    """A ``--processes`` worker. It leaves at once when it fails: a normal exit would wait
    for the other processes in JAX's distributed shutdown, and they may be waiting for it."""
    import traceback

    try:
        code = args.func(args)
    except SystemExit as exit_:  # e.g. a bad --resume directory: its message, its code
        if exit_.code not in (None, 0) and not isinstance(exit_.code, int):
            print(exit_.code, file=sys.stderr)
        code = exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 2
    except KeyboardInterrupt:  # outside meta-training's Ctrl-C handling (e.g. evaluation)
        if args.process_id == 0:
            print("\nInterrupted.", file=sys.stderr)
        code = 130
    except BaseException:  # noqa: BLE001 - reported here, then the process leaves
        traceback.print_exc()
        code = 1
    if code:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
