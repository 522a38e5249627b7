"""What redaction costs per message, with the default detectors.

    python bench/redact.py --repeat 7

µs per message (median of ``--repeat`` passes over each set), ``Redactor().text``:

* **samples**: every text of ``tests/data/gateway_calls.jsonl`` (the shared samples; ``--samples``):
  short chat turns, Chinese, tool results, error messages;
* **writer**: the texts of ``bench/writer.py``'s events (its words, Chinese and emoji);
* **prose 1-2 KB**: English sentences without a digit, dash or colon (the floor: only
  the gates run);
* **en / zh / code, 1-2 KB**: chat messages made of sentences (code lines) with the
  digits, dashes, colons and capitals real text has (dates, versions, times, prices),
  but no personal data;
* **... + pii**: the same with one e-mail, mobile, card, identity number, IPv4 address
  and API key each, at random places;
* **event**: ``Redactor().event`` on ``bench/writer.py``'s events (each re-sends its
  history: every message of it is redacted again), per event.

``off`` is ``Redactor(())``: the call alone. Times are CPU time (``process_time``): the
machine may be shared. Compare the per-event figure with the writer's
cost per event (``bench/writer.py``: ~100 µs a message row) for the issue's target,
rows/s with redaction on ≥ 75 % of off.
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import writer as wbench

from mes.privacy.redact import Redactor

SAMPLES = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "gateway_calls.jsonl"
)
EN = [
    "Could you summarise the attached report in a few bullet points?",
    "The quarterly numbers look better than last year: revenue grew by 12 % in Q3.",
    "Here is the plan: first collect the data, then clean it, and finally train the model.",
    "I tried version 2.1.3 of the library, but the import still fails on Python 3.11.",
    "A well-known trick is to cache the results; it cut our latency from 840 ms to 95 ms.",
    "Please rewrite this paragraph so that it sounds more formal and less like an e-mail.",
    "The meeting moved to Tuesday, 15 March 2025, at 10:30 in room 4B.",
    "What are the trade-offs between PostgreSQL and MySQL for a write-heavy workload?",
    "Step 1: open the settings. Step 2: choose API keys. Step 3: create a new key.",
    "We compared GPT-4o and Claude 3.5 Sonnet on 1,200 tasks, and the results were close.",
    "Translate the following sentence into French, keeping the tone friendly.",
    "The order of 250 units ships next week and costs $3,480 in total.",
]
# Chinese punctuation is written in ASCII here (ruff's RUF001) and made full-width below
ZH = [
    "请帮我总结一下这份报告的主要内容,并列出三个关键风险点。",
    "我们今天讨论了这个模型的表现,结果显示它在大多数任务上都比较稳定。",
    "会议改到2025年3月15日上午10:30,在四楼的会议室。",
    "这个版本在长文本总结方面还有提升空间,第2版会重点改进。",
    "上个季度的收入增长了约12%,用户数达到了3万。",
    "请把这段话改写得更正式一些,适合发给客户。",
    "GPT-4o 和 Claude 3.5 在1200个任务上的结果非常接近。",
    "你好!我很好,谢谢你的询问。我今天能为你做些什么?",
]
ZH = [s.translate(str.maketrans(",!?", "\uff0c\uff01\uff1f")) for s in ZH]
CODE = [
    "def handler(event: dict) -> int:\n",
    "    for i in range(10):\n",
    "        total += values[i] * 2  # x-axis\n",
    "    return {'status': 200, 'items': items[-5:]}\n",
    "# TODO: retry 3 times, then log at 12:00\n",
    "ports = [8080, 8443]; timeout = 30.5\n",
    "SELECT id, created_at FROM orders WHERE total > 100 LIMIT 50;\n",
    "const url = `https://api.example.com/v1/items?page=${page}`;\n",
]
PII = [
    "bob.smith@example.com",
    "13812345678",
    "4111 1111 1111 1111",
    "11010519491231002X",
    "192.168.10.20",
    "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z",
]


def prose(rng: random.Random, sentences: list[str], size: int, sep: str) -> str:
    out: list[str] = []
    length = 0
    while length < size:
        sentence = rng.choice(sentences)
        out.append(sentence)
        length += len(sentence) + len(sep)
    return sep.join(out)


def with_pii(rng: random.Random, text: str) -> str:
    for item in PII:
        at = rng.randrange(len(text))
        text = f"{text[:at]} {item} {text[at:]}"
    return text


def sample_texts(path: str) -> list[str]:
    texts: list[str] = []
    with open(path, "rb") as f:
        for line in f:
            args = orjson.loads(line)["args"]
            messages = [*args.get("messages", [])]
            messages += [c.get("message") or {} for c in (args.get("response") or {}).get("choices", [])]
            for message in messages:
                content = message.get("content")
                if isinstance(content, str):
                    texts.append(content)
                elif isinstance(content, list):
                    texts += [p["text"] for p in content if p.get("type") == "text"]
                for call in message.get("tool_calls") or []:
                    texts.append(call["function"]["arguments"])
            if args.get("error_message"):
                texts.append(args["error_message"])
    return texts


def writer_texts(events: list[dict[str, Any]]) -> Iterator[str]:
    for event in events:
        for message in event["messages"]:
            yield message["content"]
        yield event["response"]["choices"][0]["message"]["content"]


def per_item(fn: Callable[[], Any], n: int, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times) / n * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--texts", type=int, default=300, help="generated texts per set")
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--samples", default=SAMPLES)
    args = parser.parse_args(argv)
    rng = random.Random(7)
    events = wbench.make_events(args.events)
    sets: dict[str, list[str]] = {}
    if os.path.exists(args.samples):
        sets["samples"] = sample_texts(args.samples)
    sets["writer"] = list(writer_texts(events))
    prose_only = [t for t in EN if not any(c.isdigit() or c in ":-" for c in t)]
    for name, sentences, sep in (
        ("prose", prose_only, " "),
        ("en", EN, " "),
        ("zh", ZH, ""),
        ("code", CODE, ""),
    ):
        clean = [prose(rng, sentences, rng.randint(1000, 2000), sep) for _ in range(args.texts)]
        sets[f"{name} 1-2 KB"] = clean
        sets[f"{name} 1-2 KB + pii"] = [with_pii(rng, t) for t in clean]
    on, off = Redactor(), Redactor(())

    def each(redactor: Redactor, texts: list[str]) -> Callable[[], None]:
        def run() -> None:
            for text in texts:
                redactor.text(text)

        return run

    print(f"µs per message, median of {args.repeat}; default detectors ({', '.join(on.names)})")
    print(f"{'set':<20}{'texts':>7}{'chars':>8}{'on':>9}{'off':>7}{'found':>7}")
    for name, texts in sets.items():
        counts: dict[str, int] = {}
        for text in texts:
            on.text(text, counts)
        chars = statistics.fmean(map(len, texts))
        us_on = per_item(each(on, texts), len(texts), args.repeat)
        us_off = per_item(each(off, texts), len(texts), args.repeat)
        print(f"{name:<20}{len(texts):>7}{chars:>8.0f}{us_on:>9.2f}{us_off:>7.2f}{sum(counts.values()):>7}")

    copies = iter([[copy.deepcopy(e) for e in events] for _ in range(args.repeat)])
    messages = statistics.fmean(len(e["messages"]) + 1 for e in events)
    us = per_item(lambda: [on.event(e) for e in next(copies)], len(events), args.repeat)  # a fresh copy each
    print(f"event (writer's)    {len(events):>7} events, {messages:.1f} texts each: {us:.2f} µs per event")
    return 0


if __name__ == "__main__":
    sys.exit(main())
