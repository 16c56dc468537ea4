"""The exception tree. Every error a user can cause is an ``EdgefmError`` with a message meant for
people: it names the file, the value and what would be valid. The CLI prints ``str(err)`` on one line
(tracebacks only with ``--verbose``)."""

from __future__ import annotations


class EdgefmError(Exception):
    """Base of every error edgefm raises on purpose."""


class ConfigError(EdgefmError):
    """A configuration value (CLI flag, recipe YAML) is invalid."""


class CheckpointError(EdgefmError):
    """A checkpoint is missing, corrupt, unsafe or of a kind we cannot load."""


class CalibrationError(EdgefmError):
    """Calibration or evaluation data is missing or does not fit the model's inputs."""


class ExportError(EdgefmError):
    """Exporting the torch model to ONNX failed."""


class AccuracyError(EdgefmError):
    """A stage moved the outputs further from the fp32 reference than its tolerance allows.

    ``step``, ``metric``, ``value`` and ``limit`` say which stage, which figure, what it was and what was allowed.
    """

    def __init__(self, step: str, output: str, metric: str, value: float, limit: float, hint: str = "",
                 direction: str | None = None):
        self.step, self.output, self.metric, self.value, self.limit = step, output, metric, value, limit
        self.direction = direction
        higher = direction == "min" if direction else metric in HIGHER_IS_BETTER
        cmp = ">=" if higher else "<="
        msg = (f"{step}: output '{output}' {metric} = {value:.6g}, but the limit is {cmp} {limit:.6g}")
        super().__init__(msg + (f". {hint}" if hint else ""))


HIGHER_IS_BETTER = {"cosine", "min_cosine", "top1_agreement", "top1", "top5", "int8_layers", "int8_ops"}


class TargetFailedError(EdgefmError):
    """Every target of a compress failed (each one's reason is in the message)."""


class BackendUnavailableError(EdgefmError):
    """The runtime a target needs is not installed (the message names the pip extra)."""


class UnsupportedOpError(EdgefmError):
    """A converter or target cannot run an op of the model (the message names the op and the node)."""


class BundleError(EdgefmError):
    """A bundle is missing, incomplete, modified since it was written, or lacks the asked-for target."""


class TargetError(EdgefmError):
    """A target name or target file is unknown or invalid."""


class DeviceMismatchError(BundleError):
    """A compiled artifact (e.g. a TensorRT engine) was built for other hardware or runtime versions."""


def describe_validation(e, prefix: str = "") -> str:
    """One line from a pydantic ValidationError: ``field.path = value: message; …`` (``prefix`` before each
    path; the value is left out for missing fields and for values too long to quote)."""
    parts = []
    for x in e.errors():
        where = f"{prefix}{'.'.join(map(str, x['loc'])) or 'value'}"
        value = x.get("input")
        shown = repr(value) if isinstance(value, (int, float, str, bool)) and len(repr(value)) <= 80 else None
        msg = x["msg"].removeprefix("Value error, ")  # pydantic's prefix to our own validators' messages
        parts.append(f"{where} = {shown}: {msg}" if shown is not None and x["type"] != "missing"
                     else f"{where}: {msg}")
    return "; ".join(parts)


_WRITE_ERRORS = {"ENOSPC": "the disk is full", "EDQUOT": "the disk quota is exceeded",
                 "EFBIG": "the file size limit is reached", "EROFS": "the file system is read-only",
                 "EACCES": "permission denied", "EPERM": "permission denied"}


def describe_write_error(e: OSError) -> "str | None":
    """Why a write failed, in words, when it is the user's environment (disk full, read-only, no permission);
    None for anything else (a bug, to be shown in full)."""
    import errno

    why = _WRITE_ERRORS.get(errno.errorcode.get(e.errno or 0, ""))
    return f"{why}: {e.filename}" if why and e.filename else why


class DirectCheckError(EdgefmError):
    """The artifact, run by its runtime's own API call after call (edgefm.direct), fails: its results depend on
    what ran before (state carried between calls), or the runtime's API refuses it."""


class DeviceError(EdgefmError):
    """A board could not be reached over SSH, lacks edgefm, or a command on it failed (the message names the
    device and says what to do)."""
