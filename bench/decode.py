"""What checking an event costs a worker: the contract's models next to the TypedDicts.

    python bench/decode.py --events 3000 --repeat 7

On the same realistic multi-turn events (``bench/writer.py``'s), serialized as a
producer sends them, µs per event, median of ``--repeat`` passes:

* **json**: ``orjson.loads`` alone (the floor: the worker needs the dict);
* **models**: pydantic validation with the models of ``mes.schemas.events`` (a model object
  per message and choice, thrown away);
* **typeddicts**: the same rules as the TypedDicts of ``mes.schemas.check``, which the
  worker uses;
* **decode_event**: what the worker runs per event (size and NUL checks, json, typeddicts).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson
from pydantic import TypeAdapter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import writer as wbench

from mes.schemas import decode_event
from mes.schemas.check import EVENT_CHECK
from mes.schemas.events import Event


def per_event(fn: Callable[[], Any], n: int, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) / n * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)
    raw = [orjson.dumps(ev) for ev in wbench.make_events(args.events)]
    dicts = [orjson.loads(r) for r in raw]
    models = TypeAdapter(Event)
    n = len(raw)

    def each(fn: Callable[[Any], Any], items: list[Any]) -> Callable[[], None]:
        def run() -> None:
            for item in items:
                fn(item)  # the result dropped at once, as the worker drops the check's

        return run

    figures = {
        "json": per_event(each(orjson.loads, raw), n, args.repeat),
        "models": per_event(each(models.validate_python, dicts), n, args.repeat),
        "typeddicts": per_event(each(EVENT_CHECK.validate_python, dicts), n, args.repeat),
        "decode_event": per_event(each(decode_event, raw), n, args.repeat),
    }
    size = statistics.fmean(map(len, raw))
    print(f"{n} events, {size:.0f} bytes each on average; µs per event, median of {args.repeat}")
    for name, us in figures.items():
        print(f"{name:<14}{us:>8.1f}")
    print(f"typeddicts / models: {figures['typeddicts'] / figures['models']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
