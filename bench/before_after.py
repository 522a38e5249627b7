"""The writer of this checkout against the writer of an earlier commit, in one run.

    python bench/before_after.py --backend all --events 20000 --pairs 5
    python bench/before_after.py --commit c5a8329 --backend sqlite --phases
    python bench/before_after.py --pipeline --backend postgresql --processes 1 --pairs 5

Both sides write the same events (``bench/writer.py``'s multi-turn chats, generated once
and handed to both as JSON) with ``BatchWriter.write`` in batches of ``--batch``, on one
connection, into fresh daily tables created before the clock starts: each side's own
``bench/writer.py`` ``run_writer``, run in a process of its own with its own ``mes``
package (the earlier commit's taken out of git with ``git archive``, laid out as its
``pyproject.toml`` maps the folders). The sides alternate (before, after, after, before,
...) so that a machine that gets busier or quieter during the run weighs on both alike.

Prints, per backend, each side's median events per second over ``--pairs`` runs and the
ratio after ÷ before, and with ``--phases`` one instrumented run per side that splits
the time into planning (Python) and statements (the database). The default commit is
the last before request transcripts (``tests/legacy.py``): what the trust issue's
writer is compared with.

With ``--pipeline`` each run is instead one side's own ``bench/pipeline.py``
``end_to_end``: a producer records the events into a ``redis-server`` of the run's own and
``--processes`` ``mes worker`` processes write them, the clock running from the first
record to the last committed event. In either mode a run's process, and the workers it
starts, get the side's package by ``PYTHONPATH`` (from a working folder without a ``mes``
of its own, this checkout off the path), so the producer and the workers are the side's. Prints the median events per second of each side,
the ratio, and the workers' CPU per event (µs, medians): what a slower side spends.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from typing import Any

import orjson

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _configure_logging() -> Any:
    """The side's ``configure_logging``, where its layout keeps it."""
    try:
        from mes.log import configure_logging
    except ImportError:  # before the redesign: mes.core.log
        from mes.core.log import configure_logging  # type: ignore[no-redef]
    return configure_logging


def _enter_side(bench: str, events_file: str) -> list[Any]:
    """In a side's subprocess, whose ``PYTHONPATH`` holds the side's package: this
    checkout's folder off the path (its ``mes/`` would shadow that package), the side's
    ``bench/`` on it, logging quiet; returns the events."""
    import logging

    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != ROOT]
    sys.path.insert(0, bench)
    _configure_logging()(level=logging.ERROR)
    with open(events_file, "rb") as f:
        events: list[Any] = orjson.loads(f.read())
    return events


def _target(writer: Any, backend: str, db: str, folder: str) -> Any:
    return writer.Target(
        backend, f"root:@tcp(127.0.0.1:3306)/{db}", f"postgres://postgres@127.0.0.1:5432/{db}", folder
    )


def one(bench: str, backend: str, events_file: str, batch: int, phases: bool, db: str) -> None:
    """One side, one writer run: prints its figures as JSON."""
    events = _enter_side(bench, events_file)
    import writer  # this side's bench/writer.py

    with tempfile.TemporaryDirectory() as folder:
        target = _target(writer, backend, db, folder)
        try:
            if phases:
                seconds, spent = writer.run_phases(target, events, batch)
                out: dict[str, Any] = {"seconds": seconds, "spent": spent}
            else:
                seconds, rows, storage = writer.run_writer(target, events, batch)
                storage.close()
                out = {"seconds": seconds, "rows": rows}
        finally:
            target.reset()
    print(json.dumps(out))


def one_pipeline(
    bench: str, backend: str, events_file: str, warm: int, processes: int, batch: int, db: str
) -> None:
    """One side, one end-to-end run; the workers it starts inherit its ``PYTHONPATH``."""
    events = _enter_side(bench, events_file)
    import pipeline  # this side's bench/pipeline.py
    import writer

    folder = tempfile.mkdtemp(prefix="mes-bench-ba-")
    redis = pipeline.Redis(folder)
    target = _target(writer, backend, db, folder)
    try:
        seconds, spent = pipeline.end_to_end(
            target, redis, writer.make_events(warm, seed=8), events, processes, folder, batch
        )
    finally:
        target.reset()
        redis.stop()
        shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps({"seconds": seconds, "spent": spent}))


def checkout(commit: str, into: str) -> tuple[str, str]:
    """The earlier commit's ``mes`` package and ``bench`` folder under ``into``."""
    import io
    import pathlib
    import tarfile

    from tests.legacy import checkout as legacy_checkout

    site = legacy_checkout(commit, pathlib.Path(into))
    archive = subprocess.run(
        ["git", "-C", ROOT, "archive", "--format=tar", commit, "bench"], check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(os.path.join(into, "old"), filter="data")
    return str(site), os.path.join(into, "old", "bench")


def run_side(side: tuple[str, str], mode: str, backend: str, *rest: object) -> Any:
    """One run of ``mode`` (``_one``, ``_pipeline``) in a subprocess on ``side``'s package
    (``PYTHONPATH``; none: this checkout's install), from a folder with no ``mes/``."""
    site, bench = side
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if site:
        env["PYTHONPATH"] = site
    argv = [sys.executable, os.path.abspath(__file__), mode, bench, backend, *map(str, rest)]
    with tempfile.TemporaryDirectory() as cwd:
        done = subprocess.run(
            [*argv, f"mes_bench_ba_{os.getpid()}"], capture_output=True, text=True, cwd=cwd, env=env
        )
    if done.returncode != 0:
        raise SystemExit(f"{backend}: a run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def planning_share(spent: dict[str, float], total: float) -> tuple[float, float]:
    plan = sum(v for k, v in spent.items() if k.startswith("plan "))
    statements = sum(v for k, v in spent.items() if k.startswith(("insert ", "upsert ", "read ")))
    return plan / total, statements / total


def pipeline_pairs(
    backend: str, before: tuple[str, str], after: tuple[str, str], events_file: str, args: argparse.Namespace
) -> None:
    runs: dict[str, list[Any]] = {"before": [], "after": []}
    for n in range(args.pairs):
        order = [("before", before), ("after", after)]
        for name, side in order if n % 2 == 0 else order[::-1]:
            runs[name].append(
                run_side(side, "_pipeline", backend, events_file, args.warm, args.processes, args.batch)
            )
    rate = {k: args.events / statistics.median(r["seconds"] for r in v) for k, v in runs.items()}
    cpu = {
        k: statistics.median(r["spent"]["workers"] for r in v) / args.events * 1e6 for k, v in runs.items()
    }
    seconds = {k: " ".join(f"{r['seconds']:.2f}" for r in v) for k, v in runs.items()}
    print(f"{backend:10s}  {args.processes} worker(s)  end to end: before {rate['before']:8,.0f} events/s   "
          f"after {rate['after']:8,.0f} events/s   after ÷ before {rate['after'] / rate['before']:.2f}")  # fmt: skip
    print(f"{'':10s}  workers' CPU per event: before {cpu['before']:.0f} µs   after {cpu['after']:.0f} µs   "
          f"(runs, s: before {seconds['before']}; after {seconds['after']})")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_one":
        bench, backend, events_file, batch, phases, db = argv[1:7]
        one(bench, backend, events_file, int(batch), phases == "1", db)
        return 0
    if argv and argv[0] == "_pipeline":
        bench, backend, events_file, warm, processes, batch, db = argv[1:8]
        one_pipeline(bench, backend, events_file, int(warm), int(processes), int(batch), db)
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--commit", default=None, help="the earlier commit (default: tests/legacy.py's)")
    parser.add_argument("--after", default=None, help="a later commit instead of this checkout")
    parser.add_argument("--backend", default="all", choices=["all", "mysql", "postgresql", "sqlite"])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--phases", action="store_true", help="and one instrumented run per side")
    parser.add_argument("--pipeline", action="store_true", help="end to end (bench/pipeline.py) instead")
    parser.add_argument("--processes", type=int, default=1, help="with --pipeline: mes worker processes")
    parser.add_argument(
        "--warm", type=int, default=1000, help="with --pipeline: events written off the clock"
    )
    args = parser.parse_args(argv)
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import writer

    from tests.legacy import BEFORE_TRANSCRIPTS

    commit = args.commit or BEFORE_TRANSCRIPTS
    backends = ["mysql", "postgresql", "sqlite"] if args.backend == "all" else [args.backend]
    with tempfile.TemporaryDirectory() as folder:
        before = checkout(commit, os.path.join(folder, "before"))
        after = (
            checkout(args.after, os.path.join(folder, "after"))
            if args.after
            else ("", os.path.join(ROOT, "bench"))
        )
        events_file = os.path.join(folder, "events.json")
        with open(events_file, "wb") as f:
            f.write(orjson.dumps(writer.make_events(args.events)))
        head = subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        after_name = args.after or f"this checkout ({head.stdout.strip()})"
        print(f"before: {commit}   after: {after_name}   "
              f"{args.events} events, batches of {args.batch}, {args.pairs} pairs")  # fmt: skip
        if args.pipeline:
            for backend in backends:
                pipeline_pairs(backend, before, after, events_file, args)
            return 0
        for backend in backends:
            times: dict[str, list[float]] = {"before": [], "after": []}
            for n in range(args.pairs):
                order = [("before", before), ("after", after)]
                for name, side in order if n % 2 == 0 else order[::-1]:
                    times[name].append(run_side(side, "_one", backend, events_file, args.batch, 0)["seconds"])
            rate = {k: args.events / statistics.median(v) for k, v in times.items()}
            print(f"{backend:10s}  before {rate['before']:8,.0f} events/s   after {rate['after']:8,.0f} events/s   "
                  f"after ÷ before {rate['after'] / rate['before']:.2f}   "
                  f"(runs, s: before {' '.join(f'{t:.2f}' for t in times['before'])}; "
                  f"after {' '.join(f'{t:.2f}' for t in times['after'])})")  # fmt: skip
            if args.phases:
                for name, side in (("before", before), ("after", after)):
                    r = run_side(side, "_one", backend, events_file, args.batch, 1)
                    plan, statements = planning_share(r["spent"], r["seconds"])
                    print(f"{'':10s}  {name}: planning {plan:.0%} of the writer's time, statements and reads "
                          f"{statements:.0%} ({r['seconds']:.2f} s instrumented)")  # fmt: skip
                    steps = sorted(r["spent"].items(), key=lambda kv: -kv[1])
                    print(f"{'':14s}" + ", ".join(f"{k} {v:.2f} s" for k, v in steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
