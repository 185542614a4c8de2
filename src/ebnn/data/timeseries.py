"""Time series: the UEA/UCR ``.ts`` format, and signals from any source.

A *signal* is an example of ``C`` channels sampled at ``T`` time steps. ebnn holds it as a
``uint8`` input of shape ``(C, 1, T)``: channels in C, time along W (the width a 1-D
convolution slides over; dense blocks take any shape). Real values are quantised per
channel: one mean and standard deviation for every time step of a channel, fitted on the
training split (:meth:`~ebnn.data.FeatureQuantizer.fit_channels`), stored with the model
like a feature quantiser and reused for test files and deployed inputs.

``.ts`` files (``.ts.gz`` too) are the archive format of timeseriesclassification.com::

    # comments
    @problemName BasicMotions
    @univariate false
    @dimensions 6
    @equalLength true
    @seriesLength 100
    @classLabel true Standing Running Walking Badminton
    @data
    0.07,0.08,...:0.3,0.2,...:...:Standing       <- one case: channels split by ':', label last

Labels become classes ``0..K-1`` in the order ``@classLabel`` declares them (the names are
kept in ``Dataset.class_names``). Every series must have the same length unless you ask
for padding or truncation (:class:`SeriesOptions`, ``--pad``/``--truncate``/
``--series-length N`` on the command line): padding repeats a series' last value (a
sensor that holds its final reading; zero would be a value the sensor may never read),
truncation keeps the first ``N`` steps. When padding or truncating, missing values
(``?`` or ``NaN``) at the end of a series are dropped first (the archive marks the end of
a shorter series that way); missing values anywhere else are an error. Timestamped
series (``@timestamps true``) and regression files (``@targetLabel``) are refused.

Every problem raises :class:`TsFormatError` naming the file and the line::

    data/X_TRAIN.ts: line 12: ragged channels: channel 0 has 100 values, channel 3 has 99
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .base import DataError, Dataset, FeatureQuantizer
from .idx import read_bytes

MISSING = ("?", "nan")  # how the archive writes a missing value (compared lower-case)


class TsFormatError(DataError):
    """A ``.ts`` file that breaks the format; the message names the file and the line."""


@dataclass(frozen=True)
class SeriesOptions:
    """How to treat series of another length than the rest.

    ``length``: the length every series is brought to (default: the training set's
    length when a quantiser is given, else the longest series with ``pad``, the shortest
    with ``truncate``, the file's ``@seriesLength`` with both). ``pad``: lengthen shorter
    series by repeating their last value.
    ``truncate``: keep only the first ``length`` values of longer series. With neither,
    a series of another length is an error.
    """

    length: int | None = None
    pad: bool = False
    truncate: bool = False

    def __post_init__(self) -> None:
        if self.length is not None and self.length < 1:
            raise ValueError(f"series length must be at least 1, got {self.length}")
        if self.length is not None and not (self.pad or self.truncate):
            raise ValueError("a series length needs --pad and/or --truncate (to say what "
                             "happens to series of another length)")

    @property
    def adjusts(self) -> bool:
        return self.pad or self.truncate


@dataclass
class TsData:
    """A parsed ``.ts`` file: real values (N, C, T), classes and their names."""

    values: np.ndarray
    y: np.ndarray
    class_names: list[str]
    problem: str


def is_ts_path(path: Path) -> bool:
    """Whether ``path`` names a ``.ts`` or ``.ts.gz`` file."""
    return path.name.lower().endswith((".ts", ".ts.gz"))


def ts_stem(path: Path) -> str:
    """``X_TRAIN`` for ``X_TRAIN.ts`` or ``X_TRAIN.ts.gz``."""
    name = path.name
    for ext in (".gz", ".ts"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
    return name


# ---- the header ----------------------------------------------------------------------------
@dataclass
class _Header:
    problem: str | None = None
    univariate: bool | None = None
    dimensions: int | None = None
    series_length: int | None = None
    labels: list[str] | None = None
    data_line: int = 0  # line number of @data


def _flag(err: _Errors, line: int, tag: str, value: str) -> bool:
    v = value.strip().lower()
    if v not in ("true", "false"):
        raise err.at(line, f"{tag} must be true or false, got {value.strip()!r}")
    return v == "true"


def _count(err: _Errors, line: int, tag: str, value: str) -> int:
    v = value.strip()
    if not v.isdigit() or int(v) < 1:
        raise err.at(line, f"{tag} must be a whole number >= 1, got {v!r}")
    return int(v)


class _Errors:
    """Builds :class:`TsFormatError` messages ``"{path}: line {n}: ..."``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.unterminated: int | None = None  # the last line, when it has no line end

    def at(self, line: int, msg: str) -> TsFormatError:
        # A problem on an unterminated last line is most likely a cut-off file: say so.
        hint = ("; the file looks truncated (its last line has no line end)"
                if line == self.unterminated else "")
        return TsFormatError(f"{self.path}: line {line}: {msg}{hint}")

    def file(self, msg: str) -> TsFormatError:
        return TsFormatError(f"{self.path}: {msg}")


def _parse_header(err: _Errors, lines: list[str]) -> _Header:
    if not any(s.lower().split()[:1] == ["@data"] for s in lines):
        raise err.file("missing @data line: the header must end with @data before the cases")
    h = _Header()
    for n, raw in enumerate(lines, 1):
        s = raw.strip()
        if not s or s.startswith("#"):
            continue
        if not s.startswith("@"):
            raise err.at(n, "a case before the @data line (missing @data?)")
        tag, value = (s.split(None, 1) + [""])[:2]
        key = tag.lower()
        if key == "@data":
            h.data_line = n
            break
        if key == "@problemname":
            h.problem = value.strip() or None
        elif key == "@timestamps":
            if _flag(err, n, tag, value):
                raise err.at(n, "timestamped series (@timestamps true) are not supported; "
                                "give the values at equal steps")
        elif key == "@univariate":
            h.univariate = _flag(err, n, tag, value)
        elif key == "@dimensions":
            h.dimensions = _count(err, n, tag, value)
        elif key == "@serieslength":
            h.series_length = _count(err, n, tag, value)
        elif key == "@classlabel":
            flag, *names = value.split()
            if not _flag(err, n, tag, flag or "''"):
                raise err.at(n, "@classLabel false: the file has no class labels, and ebnn "
                                "trains classifiers")
            if not names:
                raise err.at(n, "@classLabel true declares no labels")
            dup = [x for i, x in enumerate(names) if x in names[:i]]
            if dup:
                raise err.at(n, f"@classLabel declares label {dup[0]!r} twice")
            h.labels = names
        elif key == "@targetlabel" and _flag(err, n, tag, value):
            raise err.at(n, "a regression file (@targetLabel true); ebnn trains classifiers")
        # other tags (@equalLength, @missing, ...) say nothing the cases do not show
    if h.labels is None:
        raise err.at(h.data_line, "no @classLabel line before @data: ebnn needs the class "
                                  "labels declared (@classLabel true <labels>)")
    if h.univariate and h.dimensions is not None and h.dimensions != 1:
        raise err.file(f"the header says @univariate true but @dimensions {h.dimensions}")
    if h.univariate and h.dimensions is None:
        h.dimensions = 1
    return h


# ---- the cases -----------------------------------------------------------------------------
def _values(err: _Errors, line: int, channel: int, text: str, drop_trailing_missing: bool
            ) -> list[float]:
    """The numbers of one channel's series; missing values are an error except trailing
    ones when ``drop_trailing_missing``."""
    cells = [c.strip() for c in text.split(",")]
    if cells == [""]:
        raise err.at(line, f"channel {channel} is empty")
    out: list[float] = []
    missing_at: int | None = None  # first missing value of a trailing run
    for t, c in enumerate(cells):
        try:
            v = float(c)
        except ValueError:
            if c.lower() not in MISSING:
                what = "an empty value" if not c else f"non-numeric value {c!r}"
                raise err.at(line, f"{what} in channel {channel} at step {t}") from None
            v = math.nan
        if math.isnan(v):
            if missing_at is None:
                missing_at = t
            continue
        if missing_at is not None:  # a value after a missing one: the gap is interior
            raise err.at(line, f"missing value {cells[missing_at]!r} in channel {channel} "
                               f"at step {missing_at}: missing values are not supported")
        if math.isinf(v):
            raise err.at(line, f"non-finite value {c!r} in channel {channel} at step {t}")
        out.append(v)
    if missing_at is not None and not drop_trailing_missing:
        raise err.at(line, f"missing value {cells[missing_at]!r} in channel {channel} at step "
                           f"{missing_at}: missing values are not supported (trailing ones "
                           "are dropped with --pad or --truncate)")
    if not out:
        raise err.at(line, f"channel {channel} has only missing values")
    return out


def _split_case(err: _Errors, n: int, s: str, channels: int | None, labels: list[str]
                ) -> tuple[list[str], str]:
    """A case line's channel texts and its label."""
    fields = s.split(":")
    if channels is not None and len(fields) != channels + 1:
        got = len(fields) - 1
        if len(fields) < channels + 1 and n == err.unterminated:  # err.at says "truncated"
            raise err.at(n, f"the case ends after {len(fields)} of {channels + 1} "
                            f"':'-separated fields ({channels} channels and the label)")
        if len(fields) == channels and "," in fields[-1]:
            raise err.at(n, f"missing label: the case has {channels} channels but no class "
                            "label after the last ':'")
        raise err.at(n, f"{got} channel{'' if got == 1 else 's'}, expected {channels} (from "
                        "@dimensions or the first case)")
    if len(fields) < 2:
        raise err.at(n, "missing label: a case needs its channels, ':' and the class label")
    label = fields[-1].strip()
    if not label:
        raise err.at(n, "missing label after the last ':'")
    if label not in labels:
        raise err.at(n, f"label {label!r} is not declared in @classLabel "
                        f"({' '.join(labels)})")
    return fields[:-1], label


def _fit_length(err: _Errors, line: int, channel: int, series: list[float], target: int,
                opts: SeriesOptions) -> list[float]:
    if len(series) < target:
        if not opts.pad:
            raise err.at(line, f"channel {channel} has {len(series)} values, fewer than the "
                               f"series length {target}; pass --pad to pad it")
        return series + [series[-1]] * (target - len(series))
    if len(series) > target:
        if not opts.truncate:
            raise err.at(line, f"channel {channel} has {len(series)} values, more than the "
                               f"series length {target}; pass --truncate to cut it")
        return series[:target]
    return series


def read_ts(path: str | Path, options: SeriesOptions | None = None,
            values_per_case: int | None = None) -> TsData:
    """Parse a ``.ts`` or ``.ts.gz`` file into real values ``(N, C, T)`` and classes.

    ``options`` says what to do with series of another length (see
    :class:`SeriesOptions`). ``values_per_case`` is the training data's ``C * T`` (its
    quantiser's feature count): when the options pad or truncate but name no length, the
    series are brought to ``values_per_case / C`` steps, the training length. Raises
    :class:`TsFormatError`.
    """
    path = Path(path)
    opts = options or SeriesOptions()
    err = _Errors(path)
    try:
        text = read_bytes(path).decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise err.file(f"not a UTF-8 text file ({e.reason} at byte {e.start})") from e
    lines = text.split("\n")
    if lines[-1].strip():
        err.unterminated = len(lines)
    header = _parse_header(err, lines)
    names = header.labels
    assert names is not None
    index = {name: k for k, name in enumerate(names)}
    body = [(n, s.strip()) for n, s in enumerate(lines[header.data_line:], header.data_line + 1)
            if s.strip() and not s.strip().startswith("#")]
    if not body:
        raise err.at(header.data_line, "no cases after @data")
    channels = header.dimensions
    cases: list[tuple[int, list[list[float]]]] = []
    y = []
    for n, s in body:
        texts, label = _split_case(err, n, s, channels, names)
        channels = len(texts)
        series = [_values(err, n, c, t, opts.adjusts) for c, t in enumerate(texts)]
        cases.append((n, series))
        y.append(index[label])

    target = opts.length
    if target is None and opts.adjusts and values_per_case and channels and \
            values_per_case % channels == 0:
        target = values_per_case // channels
    if target is None and opts.adjusts:
        lengths = [len(s) for _, case in cases for s in case]
        if opts.pad and opts.truncate:
            if header.series_length is None:
                raise err.file("--pad with --truncate needs --series-length N (the file "
                               "declares no @seriesLength)")
            target = header.series_length
        else:
            target = max(lengths) if opts.pad else min(lengths)
    if target is None:  # no adjusting: every series as long as the first (or the header)
        target = _check_equal(err, header, cases)
    values = np.array([[_fit_length(err, n, c, s, target, opts) for c, s in enumerate(case)]
                       for n, case in cases], dtype=np.float64)
    return TsData(values, np.array(y, dtype=np.int64), list(names),
                  header.problem or ts_stem(path))


def _check_equal(err: _Errors, header: _Header, cases: list[tuple[int, list[list[float]]]]
                 ) -> int:
    """The one series length of the file; raises on ragged channels or unequal cases."""
    first_line, first = cases[0]
    want = header.series_length or len(first[0])
    source = "@seriesLength" if header.series_length else f"the first case (line {first_line})"
    for n, case in cases:
        lengths = [len(s) for s in case]
        if len(set(lengths)) > 1:
            a = lengths[0]
            c = next(j for j, v in enumerate(lengths) if v != a)
            raise err.at(n, f"ragged channels: channel 0 has {a} values, channel {c} has "
                            f"{lengths[c]}; pass --pad or --truncate to even them")
        if lengths[0] != want:
            raise err.at(n, f"unequal lengths: the series have {lengths[0]} values but "
                            f"{source} says {want}; pass --pad or --truncate to even them")
    return want


# ---- signals from any source ---------------------------------------------------------------
def quantize_signals(path: Path, v: np.ndarray, quantizer: FeatureQuantizer | None,
                     what: str = "the series") -> tuple[np.ndarray, FeatureQuantizer]:
    """Real signals ``(N, C, T)`` -> ``uint8`` ``(N, C, 1, T)`` and the quantiser used:
    ``quantizer`` when given (the training set's), else one fitted per channel on ``v``."""
    n, c, t = v.shape
    if quantizer is None:
        with np.errstate(over="ignore", invalid="ignore"):
            quantizer = FeatureQuantizer.fit_channels(v)
        moments = np.array([quantizer.mean, quantizer.std])
        if not np.isfinite(moments).all():
            j = int(np.flatnonzero(~np.isfinite(moments).all(axis=0))[0]) // t
            raise DataError(f"{path}: channel {j} has values so large (up to "
                            f"{np.abs(v[:, j]).max():.3g}) that its mean or spread "
                            "overflows; rescale it")
    elif quantizer.features != c * t:
        raise DataError(f"{path}: {what} have {c} channels x {t} steps = {c * t} values per "
                        f"example, but the quantiser of the training data (or model) takes "
                        f"{quantizer.features}")
    x = quantizer(v.reshape(n, c * t)).reshape(n, c, 1, t)
    return np.ascontiguousarray(x), quantizer


def load_ts(path: str | Path, quantizer: FeatureQuantizer | None = None,
            class_names: list[str] | None = None,
            options: SeriesOptions | None = None) -> Dataset:
    """Load a ``.ts``/``.ts.gz`` file as a :class:`~ebnn.data.Dataset` of signals
    ``(N, C, 1, T)``.

    For a test file pass the training set's ``quantizer`` and ``class_names``: the series
    are then quantised alike, brought to the training length when ``options`` pad or
    truncate, and labels are numbered as in training (a label the training set does not
    have is an error).

        >>> train = load_ts("BasicMotions_TRAIN.ts.gz")                  # doctest: +SKIP
        >>> test = load_ts("BasicMotions_TEST.ts.gz", train.quantizer,
        ...                train.class_names)                           # doctest: +SKIP
        >>> train.x.shape, train.class_names                            # doctest: +SKIP
        ((40, 6, 1, 100), ['Standing', 'Running', 'Walking', 'Badminton'])
    """
    path = Path(path)
    data = read_ts(path, options, quantizer.features if quantizer is not None else None)
    y, names = data.y, data.class_names
    if class_names is not None:
        known = {name: k for k, name in enumerate(class_names)}
        extra = [name for name in names if name not in known]
        if extra:
            raise TsFormatError(f"{path}: declares class {extra[0]!r} that the training data "
                                f"does not have (its classes: {' '.join(class_names)})")
        y = np.array([known[names[k]] for k in y], dtype=np.int64)
        names = list(class_names)
    x, quantizer = quantize_signals(path, data.values, quantizer)
    return Dataset(x, y, len(names), ts_stem(path), quantizer, names)


# ---- command-line options (ebnn train, eval, bench, verify) ------------------------------
def add_series_arguments(p: Any) -> None:
    """The signal options of every command that reads a data set (an argparse parser)."""
    g = p.add_argument_group("signals (.ts files, .csv rows; see README 'Time-series data')")
    g.add_argument("--pad", action="store_true",
                   help="pad shorter series by repeating their last value")
    g.add_argument("--truncate", action="store_true",
                   help="cut longer series to the series length")
    g.add_argument("--series-length", type=int, metavar="T",
                   help="the length for --pad/--truncate (default: the training data's "
                        "length for test data and a model's data, else the longest series "
                        "with --pad, the shortest with --truncate)")
    g.add_argument("--channels", type=int, metavar="C",
                   help="read each .csv row as a signal of C channels (C*T columns, channel "
                        "after channel)")


def series_options(args: Any) -> dict[str, Any]:
    """:func:`add_series_arguments`' options as ``load_dataset`` keywords."""
    series = None
    if args.pad or args.truncate or args.series_length is not None:
        series = SeriesOptions(args.series_length, args.pad, args.truncate)
    return {"series": series, "channels": args.channels}

