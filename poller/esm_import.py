"""`poller import-esm`: Lambda event source mappings as stream files.

Reads the JSON `aws lambda get-event-source-mapping` prints (one mapping), the
JSON of `list-event-source-mappings` (`{"EventSourceMappings": [...]}`) or a
JSON list of mappings, and makes one stream file of each mapping: the source
from `EventSourceArn`, the mapping's batching, filters, retries and failure
destination, and a `lambda` sink invoking the same function (or, with `--dsn`,
a database sink).

Invariants:

- Every field of a mapping is either mapped or named in the mapping's notes,
  which the command prints on stderr: nothing is dropped silently. (boto3's
  `ResponseMetadata` is not a field of the mapping and is skipped.)
- The text returned is accepted by `poller check`: it is read back through the
  same loader and model before it is returned, or the mapping is refused.
- A filter means in the file what it meant in the mapping: each pattern is
  written as the JSON it was, which `filters` reads as JSON (`filter_yaml`).
- Lambda's position in the source is not imported: the stream starts at its
  `starting_position`, as a new mapping would.
- Nothing a mapping holds can break out of where it is written: a value in a
  YAML comment (or a note, or a message on stderr) is one line of printable
  characters (`one_line`: line breaks of every kind — line feed, carriage
  return, vertical tab, form feed, U+0085, U+2028, U+2029 — and control
  characters written as escapes); values go
  through the YAML emitter, patterns through `_json_text`. Should the text
  still not parse, the mapping is refused in one line, never a traceback.
"""

from __future__ import annotations

import json
import os
import re
import sys
import textwrap
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import yaml

from poller import dsn as dsn_rules
from poller import safe_yaml
from poller.config import ConfigError, RetryConfig, interpolate, parse_stream
from poller.processing.filters import compile_patterns

# The mapping's state, not its settings: reported together, never imported.
STATUS_FIELDS: Final = (
    "UUID",
    "EventSourceMappingArn",
    "LastModified",
    "LastProcessingResult",
    "State",
    "StateTransitionReason",
)
_SKIPPED: Final = ("ResponseMetadata",)
_LAMBDA_BATCH_SIZE: Final = {"kinesis": 100, "dynamodb": 100, "sqs": 10}
_MAX_SQS_CONCURRENCY: Final = 100
_MAX_ATTEMPTS: Final = 10_000
_MAX_RECORD_AGE: Final = 604_800
_NAME_MAX: Final = 64


class EsmError(ValueError):
    """A mapping that cannot become a stream file; str() says which field and why."""


@dataclass(frozen=True)
class Arn:
    partition: str
    service: str
    region: str
    account: str
    resource: str

    @classmethod
    def parse(cls, text: Any) -> Arn | None:
        if not isinstance(text, str):
            return None
        parts = text.split(":", 5)
        if len(parts) != 6 or parts[0] != "arn":
            return None
        return cls(*parts[1:])

    def queue_url(self) -> str:
        """An SQS queue ARN's URL (the form every SQS call takes)."""
        domain = "amazonaws.com.cn" if self.partition == "aws-cn" else "amazonaws.com"
        return f"https://sqs.{self.region}.{domain}/{self.account}/{self.resource}"


@dataclass
class Imported:
    """One mapping as a stream file: its name, its YAML, and what was not mapped as is."""

    name: str
    text: str
    notes: list[str] = field(default_factory=list)


def read_mappings(doc: Any) -> list[dict[str, Any]]:
    """The mappings of a `get-` or `list-event-source-mappings` answer, or of a list."""
    if isinstance(doc, dict) and "EventSourceMappings" in doc:
        doc = doc["EventSourceMappings"]
    items = doc if isinstance(doc, list) else [doc]
    if not items or not all(isinstance(m, dict) and "EventSourceArn" in m for m in items):
        raise EsmError(
            "expected the JSON of `aws lambda get-event-source-mapping` or `list-event-source-mappings`"
        )
    return items


def import_mapping(
    esm: dict[str, Any],
    *,
    dsn: str | None = None,
    table: str | None = None,
    taken: set[str] | None = None,
    env: dict[str, str] | None = None,
) -> Imported:
    """The stream file of one mapping. `taken`: names already used by this import
    (a second mapping that would get one gets its UUID appended)."""
    environ = dict(os.environ) if env is None else env
    try:
        return _Builder(esm, dsn, table, environ).build(set() if taken is None else taken)
    except EsmError:
        raise
    except (TypeError, ValueError, AttributeError) as e:  # a field of an unexpected type
        raise EsmError(f"a field is not of the type AWS gives it ({type(e).__name__}: {e})") from None


class _Builder:
    def __init__(self, esm: dict[str, Any], dsn: str | None, table: str | None, env: dict[str, str]):
        self.esm = esm
        self.dsn = dsn
        self.table = table
        self.env = env
        self.used: set[str] = set(_SKIPPED)
        self.notes: list[str] = []
        self.comments: dict[str, list[str]] = {}
        self.doc: dict[str, Any] = {}

    # -- bookkeeping ---------------------------------------------------------------

    def take(self, name: str) -> Any:
        self.used.add(name)
        return self.esm.get(name)

    def note(self, name: str, text: str) -> None:
        self.notes.append(one_line(f"{name}: {text}"))

    def comment(self, section: str, text: str) -> None:
        self.comments.setdefault(section, []).append(text)  # made one line by `_comment`

    # -- the whole mapping -----------------------------------------------------------

    def build(self, taken: set[str]) -> Imported:
        source, source_name = self._source()
        kind = source["type"]
        sink, target_name = self._sink()
        name = _stream_name(f"{source_name}-{target_name}", str(self.esm.get("UUID") or ""), taken)
        taken.add(name)
        self.doc = {"name": name, "source": source, "batch": self._batch(kind)}
        filters = self._filters()
        if kind != "sqs":
            self.doc["retry"] = self._retry()
            self._on_failure(sink["type"])
        else:
            self._not_for_sqs()
        self.doc["sink"] = sink
        self._status()
        self._rest()
        text = self._render(filters)
        self._check(name, text)
        return Imported(name, text, self.notes)

    # -- source ----------------------------------------------------------------------

    def _source(self) -> tuple[dict[str, Any], str]:
        text = self.take("EventSourceArn")
        arn = Arn.parse(text)
        if arn is None:
            raise EsmError(f"EventSourceArn: {text!r} is not an ARN")
        if arn.service == "kinesis" and arn.resource.startswith("stream/"):
            stream, fan_out, consumer = arn.resource.removeprefix("stream/").partition("/consumer/")
            source: dict[str, Any] = {
                "type": "kinesis",
                "stream": f"arn:{arn.partition}:kinesis:{arn.region}:{arn.account}:stream/{stream}",
                "region": arn.region,
            }
            if fan_out:
                self.note(
                    "EventSourceArn",
                    f"an enhanced fan-out consumer ({consumer.split(':')[0]}): its stream is read by "
                    "polling (GetRecords), which shares the shard's read limit with other readers",
                )
            self._positions(source, kinesis=True)
            return source, stream
        if arn.service == "dynamodb" and "/stream/" in arn.resource:
            source = {"type": "dynamodb", "stream_arn": text, "region": arn.region}
            self._positions(source, kinesis=False)
            return source, arn.resource.split("/")[1]
        if arn.service == "sqs":
            source = {"type": "sqs", "queue_url": arn.queue_url(), "region": arn.region}
            self._scaling(source)
            return source, arn.resource
        raise EsmError(
            f"EventSourceArn: a {arn.service} source ({arn.resource.split('/')[0]}); "
            "the poller reads Kinesis, DynamoDB Streams and SQS"
        )

    def _positions(self, source: dict[str, Any], *, kinesis: bool) -> None:
        position = self.take("StartingPosition")
        stamp = self.take("StartingPositionTimestamp")
        allowed = ("TRIM_HORIZON", "LATEST", "AT_TIMESTAMP") if kinesis else ("TRIM_HORIZON", "LATEST")
        if position is None:
            self.note("StartingPosition", "absent; the stream starts at TRIM_HORIZON")
        elif position not in allowed:
            raise EsmError(f"StartingPosition: {position!r} is not one of {', '.join(allowed)}")
        else:
            source["starting_position"] = position
        if position == "AT_TIMESTAMP":
            source["starting_timestamp"] = _iso(stamp, "StartingPositionTimestamp")
        elif stamp is not None:
            self.note("StartingPositionTimestamp", f"not used with StartingPosition {position}")
        factor = self.take("ParallelizationFactor")
        if factor is not None:
            source["parallelization_factor"] = factor

    def _scaling(self, source: dict[str, Any]) -> None:
        scaling = self.take("ScalingConfig") or {}
        limit = scaling.get("MaximumConcurrency") if isinstance(scaling, dict) else None
        if limit is None:
            self.comment(
                "source",
                "Lambda scales its SQS pollers by itself; source.max_concurrency (default 2) "
                "is how many long-polls this poller runs at once.",
            )
            return
        source["max_concurrency"] = min(int(limit), _MAX_SQS_CONCURRENCY)
        if limit > _MAX_SQS_CONCURRENCY:
            self.note(
                "ScalingConfig.MaximumConcurrency",
                f"{limit} is more than the {_MAX_SQS_CONCURRENCY} long-polls one poller runs; "
                f"max_concurrency: {_MAX_SQS_CONCURRENCY} (run more replicas for more)",
            )

    # -- batch and filters ---------------------------------------------------------------

    def _batch(self, kind: str) -> dict[str, Any]:
        size = self.take("BatchSize")
        window = self.take("MaximumBatchingWindowInSeconds")
        if size is None:
            size = _LAMBDA_BATCH_SIZE[kind]
            self.comment("batch", f"batch.size: Lambda's default for {kind}, {size}.")
        if not window:
            window = 0
            self.comment("batch", "window_seconds 0 is Lambda's behaviour; a short window fills batches.")
        return {"size": size, "window_seconds": window}

    def _filters(self) -> list[str]:
        """The patterns as JSON text, numbers written as the mapping wrote them."""
        criteria = self.take("FilterCriteria")
        if self.take("FilterCriteriaError"):
            self.note("FilterCriteriaError", "Lambda could not read its filters; none are imported")
        key = self.take("KMSKeyArn")
        if key:
            self.note("KMSKeyArn", "the filters are kept in the stream file, in clear (no KMS key is used)")
        if criteria is None:
            return []
        filters = criteria.get("Filters") if isinstance(criteria, dict) else None
        if not isinstance(filters, list):
            raise EsmError('FilterCriteria: expected {"Filters": [{"Pattern": "..."}]}')
        patterns: list[Any] = []
        texts: list[str] = []
        for i, item in enumerate(filters):
            pattern = item.get("Pattern") if isinstance(item, dict) else None
            if not isinstance(pattern, str):
                raise EsmError(f"FilterCriteria.Filters[{i}]: no Pattern string")
            try:
                patterns.append(json.loads(pattern))
                texts.append(_json_text(json.loads(pattern, parse_int=_Number, parse_float=_Number)))
            except ValueError as e:
                raise EsmError(f"FilterCriteria.Filters[{i}].Pattern: not JSON: {e}") from None
        try:
            compile_patterns(patterns)
        except ValueError as e:
            raise EsmError(f"FilterCriteria: {e}") from None
        return texts

    # -- failures ------------------------------------------------------------------------

    def _retry(self) -> dict[str, Any]:
        retries = self.take("MaximumRetryAttempts")
        age = self.take("MaximumRecordAgeInSeconds")
        bisect = self.take("BisectBatchOnFunctionError")
        retry: dict[str, Any] = {}
        default = RetryConfig.model_fields["max_attempts"].default
        if retries is None or retries < 0:
            retry["max_attempts"] = default
            self.comment(
                "retry",
                f"max_attempts: the mapping retried until a record expired (MaximumRetryAttempts "
                f"{retries if retries is not None else -1}); the poller never retries for ever, and "
                f"{default} is its default.",
            )
        else:
            retry["max_attempts"] = min(retries + 1, _MAX_ATTEMPTS)
            self.comment("retry", f"max_attempts counts attempts: MaximumRetryAttempts {retries} + 1.")
            if retries + 1 > _MAX_ATTEMPTS:
                self.note("MaximumRetryAttempts", f"{retries} retries are more than {_MAX_ATTEMPTS} attempts")
        if age is not None and age >= 0:
            retry["max_record_age_seconds"] = max(1, min(age, _MAX_RECORD_AGE))
        retry["bisect_on_error"] = bool(bisect)
        return retry

    def _on_failure(self, sink_type: str) -> None:
        config = self.take("DestinationConfig") or {}
        if not isinstance(config, dict):
            config = {}
        for extra in sorted(set(config) - {"OnFailure", "OnSuccess"}):
            self.note(f"DestinationConfig.{extra}", "not a destination the poller knows; ignored")
        success = (config.get("OnSuccess") or {}).get("Destination")
        if success:
            self.note("DestinationConfig.OnSuccess", f"{success}: the poller sends no success records")
        target = (config.get("OnFailure") or {}).get("Destination")
        store = "the checkpoint store" if sink_type == "lambda" else "the sink's database"
        default = f"records that keep failing go to the table poller_failures in {store}"
        arn = Arn.parse(target)
        if arn is not None and arn.service == "sqs":
            self.doc["on_failure"] = {"type": "sqs", "queue_url": arn.queue_url(), "region": arn.region}
            self.comment(
                "on_failure", "A failure message carries the record itself (Lambda's only points to it)."
            )
            return
        if target:
            kind = arn.service.upper() if arn is not None else "this"
            self.note(
                "DestinationConfig.OnFailure",
                f"{target}: no {kind} destination in the poller; {default} "
                "(or set on_failure to an SQS queue or a file)",
            )
        self.comment("on_failure", f"No on_failure: {default} (Lambda drops them).")

    def _not_for_sqs(self) -> None:
        for name in (
            "MaximumRetryAttempts",
            "MaximumRecordAgeInSeconds",
            "BisectBatchOnFunctionError",
            "ParallelizationFactor",
            "StartingPosition",
            "StartingPositionTimestamp",
            "TumblingWindowInSeconds",
        ):
            if self.take(name) not in (None, -1, 0, False):
                self.note(name, "not used with an SQS source; ignored")
        config = self.take("DestinationConfig")
        if config and any((config.get(k) or {}).get("Destination") for k in config):
            self.note("DestinationConfig", "an SQS source fails over by the queue's redrive policy; ignored")
        self.comment(
            "source",
            "Messages that keep failing go back to the queue: its redrive policy (DLQ) decides, "
            "as with Lambda.",
        )

    # -- sink ------------------------------------------------------------------------------

    def _sink(self) -> tuple[dict[str, Any], str]:
        function = self.take("FunctionArn")
        types = self.take("FunctionResponseTypes") or []
        unknown = [t for t in types if t != "ReportBatchItemFailures"]
        if unknown:
            self.note("FunctionResponseTypes", f"{unknown} not known; ignored")
        arn = Arn.parse(function)
        function_name = arn.resource.split(":")[1] if arn is not None and ":" in arn.resource else None
        if self.dsn is not None:
            kind = self._dsn_kind()
            if function:
                self.note(
                    "FunctionArn", f"{function_name or function}: not invoked; rows go to the {kind} sink"
                )
            if "ReportBatchItemFailures" in types:
                self.note("FunctionResponseTypes", "no function answers a database sink; ignored")
            self.comment(
                "sink",
                "No `columns`: append mode (one row per record, the payload as JSON). Map fields "
                "with `columns` and `key` to upsert rows instead.",
            )
            return {"type": kind, "dsn": self.dsn, "table": self.table}, str(self.table)
        if arn is None or arn.service != "lambda" or function_name is None:
            raise EsmError(f"FunctionArn: {function!r} is not a Lambda function ARN")
        self.comment(
            "sink",
            "Checkpoints (and failures) are kept in checkpoint_dsn, a SQLite file in the working folder "
            "by default: put it on a volume, or give a postgres:// or mysql:// DSN.",
        )
        sink = {
            "type": "lambda",
            "function": function,
            "region": arn.region,
            "report_batch_item_failures": "ReportBatchItemFailures" in types,
        }
        return sink, function_name

    def _dsn_kind(self) -> str:
        assert self.dsn is not None
        try:
            value = interpolate(self.dsn, self.env, "--dsn")
        except Exception as e:  # a ${VAR} that is not set: say which
            raise EsmError(str(e)) from None
        kind = dsn_rules.kind(value) if isinstance(value, str) else None
        if kind is None:
            raise EsmError(f"--dsn: not a database DSN; give {dsn_rules.CHECKPOINT_DSN_FORMS}")
        return kind

    # -- what is left ------------------------------------------------------------------------

    def _status(self) -> None:
        present = [f for f in STATUS_FIELDS if self.take(f) is not None]
        if present:
            self.note(", ".join(present), "the mapping's state, not settings; not imported")
        state = self.esm.get("State")
        enabled = self.take("Enabled")
        if state in ("Disabled", "Disabling") or enabled is False:
            self.note("State", "the mapping is disabled; the stream file runs as soon as it is deployed")

    def _window(self) -> None:
        """`TumblingWindowInSeconds` on the lambda sink (an SQS mapping has taken it already)."""
        if self.doc["source"]["type"] == "sqs":
            return
        window = self.take("TumblingWindowInSeconds")
        if not window:
            return
        sink = self.doc["sink"]
        if sink["type"] != "lambda":
            self.note(
                "TumblingWindowInSeconds",
                f"{window}: a database sink writes rows, with no state between batches; ignored",
            )
            return
        sink["tumbling_window_seconds"] = window
        source = self.doc["source"]
        factor = source.get("parallelization_factor", 1)
        if factor > 1:
            source["parallelization_factor"] = 1
            self.note(
                "ParallelizationFactor",
                f"{factor}: with a tumbling window the poller delivers a shard's records one batch at a "
                "time, in order; parallelization_factor: 1",
            )

    def _rest(self) -> None:
        self._window()
        if self.take("MetricsConfig"):
            self.note("MetricsConfig", "metrics are always on, at /metrics")
        if "ScalingConfig" in self.esm and "ScalingConfig" not in self.used:
            self.take("ScalingConfig")
            self.note("ScalingConfig", "not used with this source; ignored")
        for name in self.esm:
            if name not in self.used:
                self.note(name, "not a setting the poller has; ignored")

    # -- text ------------------------------------------------------------------------------------

    def _render(self, filters: list[str]) -> str:
        ident = self.esm.get("EventSourceMappingArn") or self.esm.get("UUID") or "(no UUID)"
        out = [
            _comment(
                f"Imported by `poller import-esm` from the event source mapping {ident}. "
                "Lambda's position in the source is not imported: the stream starts at its "
                "starting position. See docs/migrating-from-lambda.md."
            )
        ]
        for key in ("name", "source", "batch"):
            out.append(self._section(key))
        if filters:
            # JSON, as the mapping had it: read back as JSON (poller.filter_yaml).
            out.append("filters:\n" + "".join(f"  - {p}\n" for p in filters))
        for key in ("retry", "on_failure", "sink"):
            if key in self.doc or key in self.comments:
                out.append(self._section(key))
        return "".join(out)

    def _section(self, key: str) -> str:
        text = "".join(_comment(c) for c in self.comments.get(key, []))
        if key in self.doc:
            text += yaml.safe_dump(
                {key: self.doc[key]},
                sort_keys=False,
                allow_unicode=True,
                default_flow_style=False,
                width=1000,
            )
        return text

    def _check(self, name: str, text: str) -> None:
        try:
            parse_stream(safe_yaml.loads(text), f"{name}.yaml", self.env)
        except ConfigError as e:
            raise EsmError(
                "the stream file would not pass `poller check`: " + "; ".join(e.problems)
            ) from None
        except yaml.YAMLError as e:  # a fault of this module's own writing, said in one line
            raise EsmError(f"the stream file it would write is not valid YAML: {one_line(str(e))}") from None


def one_line(text: str) -> str:
    """`text` as one line of printable characters: every character Python does not
    print (line breaks of any kind, control and format characters, non-ASCII spaces)
    written as its escape, so that no value ends a YAML comment or a line of stderr."""
    return "".join(c if c.isprintable() else _escape_char(c) for c in text)


def _comment(text: str) -> str:
    lines = textwrap.wrap(one_line(text), 96, break_on_hyphens=False, break_long_words=False)
    return "".join(f"# {line}\n" for line in lines)


class _Number(str):
    """A JSON number kept as it was written (`1E3` stays `1E3`)."""


def _json_text(value: Any) -> str:
    """One line of JSON that YAML reads back the same: numbers as written, every
    character outside printable ASCII escaped in a form both read alike (JSON's
    `\\ud83d\\ude00` surrogate pairs would be two characters to YAML)."""
    if isinstance(value, _Number):
        return str(value)
    if isinstance(value, str):
        return re.sub(r"[^\x20-\x7e]", _escape, json.dumps(value, ensure_ascii=False))
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_json_text(k)}: {_json_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_json_text(v) for v in value) + "]"
    return json.dumps(value)  # true, false, null (NaN and Infinity are refused before)


def _escape(m: re.Match[str]) -> str:
    return _escape_char(m[0])


def _escape_char(c: str) -> str:
    code = ord(c)
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _iso(stamp: Any, name: str) -> str:
    """A timestamp as the CLI prints it (ISO 8601) or as the API sends it (epoch seconds)."""
    try:
        if isinstance(stamp, int | float) and not isinstance(stamp, bool):
            moment = datetime.fromtimestamp(stamp, UTC)
        elif isinstance(stamp, str):
            moment = datetime.fromisoformat(stamp)
        else:
            raise ValueError("missing")
    except (ValueError, OverflowError, OSError) as e:
        raise EsmError(f"{name}: {stamp!r} is not a timestamp ({e})") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat()


def _stream_name(base: str, uuid: str, taken: set[str]) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-._") or "stream"
    suffix = re.sub(r"[^A-Za-z0-9]", "", uuid)[:8]
    if len(name) > _NAME_MAX:
        name = f"{name[: _NAME_MAX - len(suffix) - 1]}-{suffix}" if suffix else name[:_NAME_MAX]
    if name in taken and suffix:
        name = f"{name[: _NAME_MAX - len(suffix) - 1]}-{suffix}"
    n = 2
    while name in taken:
        name = f"{name[: _NAME_MAX - 4]}-{n}"
        n += 1
    return name


# -- the command -----------------------------------------------------------------------------


def run(path: str, dsn: str | None, table: str | None, out: str | None) -> int:
    """`poller import-esm`: 0 when every mapping was written (notes on stderr), 2 otherwise."""
    if (dsn is None) != (table is None):
        print("import-esm: --dsn and --table go together", file=sys.stderr)
        return 2
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        mappings = read_mappings(json.loads(text))
    except (OSError, UnicodeDecodeError) as e:
        print(f"{path}: cannot read: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # EsmError and JSON errors alike
        print(f"{path}: {e}", file=sys.stderr)
        return 2
    folder = Path(out) if out is not None else (Path() if len(mappings) > 1 else None)
    code = 0
    taken: set[str] = set()
    for i, esm in enumerate(mappings):
        label = esm.get("UUID") or f"#{i + 1}"
        try:
            imported = import_mapping(esm, dsn=dsn, table=table, taken=taken)
        except EsmError as e:
            print(one_line(f"mapping {label}: not imported: {e}"), file=sys.stderr)
            code = 2
            continue
        for note in imported.notes:
            print(f"{imported.name}: {note}", file=sys.stderr)
        if folder is None:
            sys.stdout.write(imported.text)
            continue
        target = folder / f"{imported.name}.yaml"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with target.open("x", encoding="utf-8") as f:  # never overwrite a stream file
                f.write(imported.text)
        except OSError as e:
            print(f"{target}: not written: {e.strerror or e}", file=sys.stderr)
            code = 2
            continue
        print(f"wrote {target}", file=sys.stderr)
    return code
