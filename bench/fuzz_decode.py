"""Fuzz `contracts.decode` over every model of the topic catalogue (not a test; issue 13, "Poison-proof input").

    .venv/bin/python bench/fuzz_decode.py --seconds 120                 # atheris (libFuzzer) when installed
    .venv/bin/python bench/fuzz_decode.py --seconds 120 --engine mutate # coverage-less mutation fuzzer, no deps
    .venv/bin/python bench/fuzz_decode.py --runs 100000 --engine mutate --seed 7

With atheris every input is decoded by every model, as bytes, and also as str when it is not UTF-8 (decoded with
surrogateescape, so the invalid bytes become lone surrogates); the mutation engine takes the models in turn and
mutates that model's corpus, passing some inputs as str. The outcome must be an event of that model (one that
encodes again, with no NUL in its strings) or a ContractError; a ContractError of kind `unclassified` came from
decode's safety net and counts as an escape too (it would have escaped without the net: fix its cause). So does an
input that takes longer than --slow seconds (a poison that stalls a consumer is as bad as one that crashes it).

Seeds: one valid example per model (tests/examples.py) and every JSON example of docs/*.md that decodes as a model.
The atheris engine instruments contracts, orderflow.mailaddr and the stdlib email parser (pydantic-core is native and
not instrumented, so its coverage does not guide libFuzzer); it is given a dictionary of JSON tokens and poison values,
and half of its mutations are the JSON-tree mutations of the other engine.
The mutation engine mutates bytes (flips, inserts, deletions, splices, dictionary tokens) and JSON trees (a value
replaced by a poison value or random JSON, a key deleted or added, a subtree nested deeper), keeping inputs that
decoded as new seeds.

Prints the inputs tried per model, the total, and each escape with its input; exits 1 if anything escaped.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

try:
    import atheris
except ImportError:  # the mutation engine needs nothing
    atheris = None

MODELS: list[type] = []  # filled by _load(), once it is known whether to instrument contracts
KEYS: list[str] = ["junk", "extra"]  # and every field name of the catalogue, by _load()


def _load(instrument: bool) -> None:
    """Imports contracts, under atheris' instrumentation for its engine (pydantic-core itself is native)."""
    global ContractError, UNCLASSIFIED, decode, encode, example
    if instrument:
        with atheris.instrument_imports(include=["contracts", "orderflow.mailaddr", "email"]):
            import email.headerregistry  # noqa: F401 - addr_spec falls back to the stdlib parser

            import contracts  # noqa: F401
    from contracts import ContractError, decode, encode
    from contracts.codec import UNCLASSIFIED
    from contracts.topics import ALL
    from tests.examples import example

    MODELS[:] = [spec.model for spec in ALL]
    KEYS.extend(sorted(set().union(*(_field_names(m.model_json_schema(), set()) for m in MODELS))))


def _field_names(schema: Any, found: set[str]) -> set[str]:
    """Every property name in a JSON Schema, nested models included: keys the mutations add, so optional fields
    absent from the seeds get values too."""
    if isinstance(schema, dict):
        for key, inner in schema.items():
            if key == "properties" and isinstance(inner, dict):
                found.update(inner)
            _field_names(inner, found)
    elif isinstance(schema, list):
        for inner in schema:
            _field_names(inner, found)
    return found


TOKENS: list[bytes] = [
    b"{", b"}", b"[", b"]", b":", b",", b'"', b"\\", b"null", b"true", b"false", b"NaN", b"Infinity", b"-Infinity",
    b"1e400", b"-0", b"0.0", b"1000000000000", b"1000000000001", b"9223372036854775808", b"9" * 80, b"9" * 4400,
    b'"\\ud800"', b'"\\udc00"', b'"\\u0000"', b"\\u", b"\\ud83d\\ude00", b"\xff", b"\xed\xa0\x80", b"\xc3",
    b"\xef\xbb\xbf", b"\x00", b"\r\n", "\u2028".encode(), b'"9999-12-31T23:59:59-01:00"',
    b'"0001-01-01T00:00:00+01:00"', b'"1999-12-31T23:59:59Z"', b'"2000-01-01T00:00:00Z"', b'"2100-01-01T00:00:00Z"',
    b'"2026-11-25T10:00:00"', b"253402300800", b"-62135596800", b"1e20", b'"P1D"', b'"a@b.c"', b'"a@b"',
    b'"a b@c.d"', b'"\\"x\\"@y.z"', b'"x@[1.2.3.4]"', b'"x@\xc3\xa9.com"', b'"x@xn--.com"', b'"x@-.com"',
    b'"(c)x@y.z"', b'"EUR"', b'"gateway"', b'"manual"', b'"pending"', b'"deducted"', b'"returned"', b"[" * 70,
    b"]" * 70, b'{"a":' * 70, b'"' + b"x" * 600 + b'"',
]
POISON: list[Any] = [
    None, True, 0, -1, 1.5, 10**12, 10**12 + 1, 2**63, 10**300, 1e308, float("inf"), float("nan"), "", " ", "\x00",
    "\ud800", "\udfff", "a\r\nBcc: x@y.z", "x" * 600, "x" * 11_000, "[" * 80, "9999-12-31T23:59:59-01:00",
    "0001-01-01T00:00:00+01:00", "1999-12-31T23:59:59Z", "2000-01-01T00:00:00Z", "2026-11-25T10:00:00",
    "2100-01-01T00:00:00Z", "P1D", 1e11, 1e20, -1e20, 253402300800, -62135596800,
    "00000000-0000-0000-0000-000000000000", "not-a-uuid", [], {}, [[[]]], {"email": "a@b.c"}, "EUR", "eur",
    "a@b.com, c@d.com", "a" * 65 + "@example.com",
    "x@" + "a" * 250 + ".com", "Ann <a@b.c>", '"q"@b.c', "a@b", "gateway", "pending", "deducted", "\u2028",
    "\U0001f600", "\ufeff", "a@\u00e9xample.com", "a@xn--.com", "a@[127.0.0.1]", "a.@b.c", "(c)a@b.c", "fr-FR", "FR-fr",
    "fr_FR", "zh-Hant-TW", "x-" + "a" * 40, "en-" + "-".join(["abcdefgh"] * 5), "GB", "UK", "ZZ", [60, 30],
    [1, 2, 3, 4],
]


def seeds() -> dict[type, list[bytes]]:
    """One valid example per model, and each JSON example of docs/*.md that decodes as one."""
    found = {m: [encode(example(m))] for m in MODELS}
    for doc in sorted((ROOT / "docs").glob("*.md")):
        for block in re.findall(r"```json\n(.*?)```", doc.read_text(), re.S):
            raw = block.strip().encode()
            for model in MODELS:
                try:
                    decode(model, raw)
                except ContractError:
                    continue
                found[model].append(raw)
    return found


class Verdicts:
    """Counts inputs per model and records what escaped."""

    def __init__(self, slow: float, show: int = 5) -> None:
        self.inputs = 0
        self.tried: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.escapes: list[tuple[str, str, Any]] = []  # the first few, with their input
        self.escaped: Counter[str] = Counter()  # every escape, by its first line
        self.slow = slow
        self.show = show

    def check(self, model: type, raw: bytes | str) -> bool:
        """True when decode returned a model."""
        self.tried[model.__name__] += 1
        started = time.perf_counter()
        ok = False
        try:
            event = decode(model, raw)
            if not isinstance(event, model):
                self._escape(model, raw, f"returned {type(event).__name__}, not {model.__name__}")
            self._storable(model, raw, event)
            ok = True
            self.outcomes["decoded"] += 1
        except ContractError as error:
            self.outcomes[error.kind] += 1
            if error.kind == UNCLASSIFIED:
                self._escape(model, raw, f"only the safety net caught it: {error.reason}")
            try:
                error.reason.encode("utf-8")
            except UnicodeError:
                self._escape(model, raw, "the reason cannot be encoded as UTF-8 (Kafka header)")
        except Exception as exc:  # noqa: BLE001 - what this fuzzer looks for
            self._escape(model, raw, "".join(traceback.format_exception_only(exc)).strip())
        took = time.perf_counter() - started
        if took > self.slow:
            self._escape(model, raw, f"took {took:.2f} s (over --slow {self.slow} s)")
        return ok

    def _storable(self, model: type, raw: bytes | str, event: Any) -> None:
        """What decode accepts must re-encode (UTF-8: no lone surrogate) and hold no NUL (PostgreSQL refuses it)."""
        try:
            again = encode(event)
        except Exception as exc:  # noqa: BLE001 - what this fuzzer looks for
            self._escape(model, raw, f"accepted but cannot be encoded again: {type(exc).__name__}: {exc}")
            return
        if b"\\u0000" in again:
            self._escape(model, raw, "accepted with a NUL in a string (PostgreSQL text and jsonb refuse it)")

    def _escape(self, model: type, raw: bytes | str, what: str) -> None:
        self.escaped[what.split(":")[0]] += 1
        if len(self.escapes) < self.show:
            self.escapes.append((model.__name__, what, raw))
            print(f"ESCAPE {model.__name__}: {what}\n  input ({type(raw).__name__}, {len(raw)}): {raw[:2000]!r}",
                  flush=True)

    def report(self, engine: str, elapsed: float) -> int:
        total = sum(self.tried.values())
        print(f"\nengine {engine}: {self.inputs:,} inputs, {total:,} decodes in {elapsed:.1f} s "
              f"({total / max(elapsed, 1e-9):,.0f} decodes/s); decodes per model:")
        for model in MODELS:
            print(f"  {model.__name__:26s} {self.tried[model.__name__]:>10,}")
        print("  outcomes: " + ", ".join(f"{k} {v:,}" for k, v in self.outcomes.most_common()))
        print(f"escapes: {sum(self.escaped.values())}" + "".join(f"\n  {n:,} x {w}" for w, n in self.escaped.items()))
        for name, what, raw in self.escapes:
            print(f"  e.g. {name}: {what}: {raw[:300]!r}")
        return 1 if self.escaped else 0


def _escaped(token: bytes) -> str:
    """A libFuzzer dictionary entry: every byte as \\xNN."""
    return "".join(f"\\x{b:02x}" for b in token)


def as_input(data: bytes, as_str: bool) -> bytes | str:
    return data.decode("utf-8", "surrogateescape") if as_str else data


# --- atheris -----------------------------------------------------------------------------------------------------


def run_atheris(args: argparse.Namespace, verdicts: Verdicts) -> int:
    work = Path(tempfile.mkdtemp(prefix="fuzz_decode_"))
    corpus, dictionary = work / "corpus", work / "dict"
    corpus.mkdir()
    for model, raws in seeds().items():
        for n, raw in enumerate(raws):
            (corpus / f"{model.__name__}-{n}").write_bytes(raw)
    dictionary.write_text("".join(f'"{_escaped(token)}"\n' for token in TOKENS))
    started = time.monotonic()
    deadline = started + args.seconds if args.seconds else float("inf")
    limit = args.runs or 0

    def one_input(data: bytes) -> None:
        for model in MODELS:  # every model sees every input: deterministic for libFuzzer, and even across models
            verdicts.check(model, data)
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:  # the str path too, with the invalid bytes as lone surrogates
            for model in MODELS:
                verdicts.check(model, as_input(data, True))
        verdicts.inputs += 1
        if (limit and verdicts.inputs >= limit) or time.monotonic() >= deadline:
            code = verdicts.report("atheris", time.monotonic() - started)
            shutil.rmtree(work, ignore_errors=True)
            sys.stdout.flush()
            os._exit(code)  # libFuzzer exits without running Python's finally/atexit: report and leave here

    libfuzzer = [sys.argv[0], str(corpus), f"-dict={dictionary}", f"-max_len={args.max_len}", "-timeout=10",
                 "-rss_limit_mb=4096", f"-seed={args.seed}", "-len_control=0", "-print_final_stats=0"]
    if args.seconds:
        libfuzzer.append(f"-max_total_time={int(args.seconds) + 30}")  # backstop; one_input stops first
    def mutator(data: bytes, max_size: int, seed: int) -> bytes:
        """Half libFuzzer's byte mutations, half JSON-tree mutations (the parser is native: byte flips alone rarely
        get past it to the validators)."""
        rng = random.Random(seed)
        if rng.random() < 0.5:
            return atheris.Mutate(data, max_size)
        out = mutate_tree(rng, data)
        return (out.encode("utf-8", "surrogatepass") if isinstance(out, str) else out)[:max_size]

    atheris.Setup(libfuzzer, one_input, custom_mutator=mutator)
    atheris.Fuzz()
    return 2  # not reached


# --- coverage-less mutation ----------------------------------------------------------------------------------------


def random_json(rng: random.Random, depth: int = 0) -> Any:
    pick = rng.randrange(10 if depth < 4 else 6)
    if pick < 2:
        return rng.choice(POISON)
    if pick == 2:
        return rng.randint(-(2**70), 2**70)
    if pick == 3:
        return "".join(rng.choice('ab[]{}"\\\x00\n\u00e9\ud800\U0001f600') for _ in range(rng.randrange(8)))
    if pick == 4:
        return rng.random() * 10.0 ** rng.randrange(-10, 308)
    if pick == 5:
        return rng.choice([None, True, False, 0, ""])
    if pick < 8:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(KEYS): random_json(rng, depth + 1) for _ in range(3)}


def _places(value: Any, path: tuple = ()) -> list[tuple]:
    found = [path]
    if isinstance(value, dict):
        for key, inner in value.items():
            found += _places(inner, (*path, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found += _places(inner, (*path, index))
    return found


def mutate_tree(rng: random.Random, raw: bytes) -> bytes | str:
    try:
        return _mutate_tree(rng, json.loads(raw))
    except (ValueError, RecursionError):  # not JSON, or too deep for json.loads / copy / json.dumps
        return mutate_bytes(rng, raw, [])


def _mutate_tree(rng: random.Random, data: Any) -> bytes | str:
    for _ in range(rng.randint(1, 3)):
        places = _places(data)
        path = rng.choice(places)
        new = copy.deepcopy(rng.choice(POISON) if rng.random() < 0.6 else random_json(rng))
        action = rng.choice(["replace", "replace", "replace", "delete", "add", "nest"])
        if not path:
            if isinstance(data, dict):
                data[rng.choice(KEYS)] = new
            continue
        parent = data
        for step in path[:-1]:
            parent = parent[step]
        key = path[-1]
        if action == "replace":
            parent[key] = new
        elif action == "delete":
            del parent[key]
        elif action == "nest":
            inner = parent[key]
            for _ in range(rng.choice([1, 2, 30, 62, 63, 64, 65, 200, 1500])):
                inner = [inner] if rng.random() < 0.5 else {"k": inner}
            parent[key] = inner
        elif isinstance(parent, dict):
            parent[rng.choice(KEYS)] = new
        else:
            parent.append(new)
    text = json.dumps(data, ensure_ascii=rng.random() < 0.5)
    if rng.random() < 0.2:
        return text
    return text.encode("utf-8", "surrogatepass")


def mutate_bytes(rng: random.Random, raw: bytes, pool: list[bytes]) -> bytes:
    data = bytearray(raw)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        at = rng.randrange(len(data) + 1)
        if op == 0 and data:
            data[min(at, len(data) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            data[at:at] = bytes([rng.randrange(256)])
        elif op == 2 and data:
            del data[at:at + rng.randint(1, 16)]
        elif op == 3:
            data[at:at] = rng.choice(TOKENS)
        elif op == 4 and data:
            start = rng.randrange(len(data))
            data[at:at] = data[start:start + rng.randint(1, 64)] * rng.choice([1, 2, 50])
        elif op == 5 and pool:
            other = rng.choice(pool)
            cut = rng.randrange(len(other) + 1)
            data = data[:at] + other[cut:]
        elif op == 6:
            token = rng.choice(TOKENS)
            data = data.replace(token, rng.choice(TOKENS), 1) if token in data else data
    return bytes(data)


def run_mutate(args: argparse.Namespace, verdicts: Verdicts) -> int:
    rng = random.Random(args.seed)
    pools = {m: list(raws) for m, raws in seeds().items()}
    started = time.monotonic()
    deadline = started + args.seconds if args.seconds else float("inf")
    done = 0
    while (not args.runs or done < args.runs) and time.monotonic() < deadline:
        model = MODELS[done % len(MODELS)]
        pool = pools[model]
        parent = rng.choice(pool)
        roll = rng.random()
        if roll < 0.45:
            candidate = mutate_tree(rng, parent)
        elif roll < 0.9:
            candidate = mutate_bytes(rng, parent, pool)
            if rng.random() < 0.15:
                candidate = as_input(candidate, True)
        else:
            candidate = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        verdicts.inputs += 1
        if verdicts.check(model, candidate) and len(pool) < 500:
            pool.append(candidate if isinstance(candidate, bytes) else candidate.encode("utf-8", "surrogatepass"))
        done += 1
    return verdicts.report("mutate", time.monotonic() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--seconds", type=float, help="run for this long")
    budget.add_argument("--runs", type=int, help="try this many inputs")
    parser.add_argument("--engine", choices=["atheris", "mutate"], default="atheris" if atheris else "mutate")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-len", type=int, default=8192, help="atheris: longest input (bytes)")
    parser.add_argument("--slow", type=float, default=1.0, help="an input decoded slower than this is an escape")
    args = parser.parse_args()
    if args.engine == "atheris" and atheris is None:
        parser.error("atheris is not installed (pip install atheris), use --engine mutate")
    _load(instrument=args.engine == "atheris")
    verdicts = Verdicts(args.slow)
    print(f"fuzzing contracts.decode over {len(MODELS)} models with {args.engine}: "
          f"{f'{args.seconds:g} s' if args.seconds else f'{args.runs:,} runs'}", flush=True)
    if args.engine == "atheris":
        return run_atheris(args, verdicts)
    return run_mutate(args, verdicts)


if __name__ == "__main__":
    raise SystemExit(main())
