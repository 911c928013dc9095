"""The ``normlab`` command line.

    normlab summary MODEL [--checkpoint FILE] --input-size 3 32 32
    normlab doctor MODEL [--checkpoint FILE] (--input-size 3 32 32 [--batch-size 32] | --example BATCH.pt)
    normlab fold MODEL [--checkpoint FILE] --output folded.pt
    normlab reproduce [--claims NAME ...] [--profile quick|full|tiny|sources] [--data mnist1d|digits|PATH] [--out DIR] [--seeds N] [--seed-offset N]
                      [--device cpu|cuda|auto] [--jobs N | --executor ray [--address ADDR] [--gpus-per-group F]]
    normlab claims
    normlab --version

MODEL is ``module:callable``: a module importable from the current directory (or a
path to a .py file) and a callable in it that returns an ``nn.Module``; a checkpoint,
when given, is a ``state_dict``, a whole saved module, or one of these inside the usual
wrappers (Lightning's ``{"state_dict": ...}``, ``{"model": ...}``, DDP's ``module.``
prefix), loaded into it.

The contract: a mistake of the user's (an argument, a file, their model's code) is one
line on stderr naming what was wrong and what to do, with exit status 2. Every such
mistake is a :class:`CommandError`, printed by the one handler in :func:`main`; what
the user gave is only ever called inside :func:`blame`, which turns its exceptions
into one. Anything else is a bug of normlab's: its traceback, and exit status 3.
``doctor`` exits 1 when it has findings and 0 when it has none.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import os
import pathlib
import sys
import traceback
from collections.abc import Mapping

from . import __version__


class CommandError(Exception):
    """A problem with what the user asked for: printed on one line by :func:`main`, exit status 2."""

    def __init__(self, message: str, prog: str | None = None) -> None:
        super().__init__(message)
        self.prog = prog  # "normlab doctor"; None: the command being run


# --- the one mechanism: what the user gave raises, a CommandError comes out ------------------

_PACKAGE = pathlib.Path(__file__).resolve().parent
# Exceptions normlab raises on purpose, with messages written to be read as they are.
_CLEAR = (ValueError, TypeError, NotImplementedError, FloatingPointError, OSError)


def _one_line(text: str, limit: int = 400) -> str:
    text = text.split("Exception raised from")[0]  # torch's C++ backtrace, when it has one
    text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _where(e: BaseException) -> str:
    """``' (zoo.py, line 7)'``: the innermost frame outside torch, normlab and the standard library."""
    skip = [_PACKAGE, pathlib.Path(os.__file__).resolve().parent]
    torch_module = sys.modules.get("torch")
    if torch_module is not None:
        skip.append(pathlib.Path(torch_module.__file__).resolve().parent)
    for frame in reversed(traceback.extract_tb(e.__traceback__)):
        path = pathlib.Path(frame.filename).resolve()
        if not any(path.is_relative_to(s) for s in skip) and not frame.filename.startswith("<"):
            return f" ({path.name}, line {frame.lineno})"
    return ""


def _raised_by_normlab(e: BaseException) -> bool:
    frames = traceback.extract_tb(e.__traceback__)
    return bool(frames) and pathlib.Path(frames[-1].filename).resolve().is_relative_to(_PACKAGE)


@contextlib.contextmanager
def blame(what: str = "", fix: str = "", catch=Exception):
    """Run a block that calls what the user gave; an exception ``catch`` from it becomes a CommandError.

    The message is ``"{what}: {the exception}; {fix}"``. normlab's own errors read as
    they are; anyone else's (the user's code, torch) are shown with their type and
    where in the user's code they were raised. An unexpected exception raised inside
    normlab itself (a bug) is left alone, traceback and all.
    """
    try:
        yield
    except CommandError:
        raise
    except catch as e:
        ours = _raised_by_normlab(e)
        if ours and not isinstance(e, _CLEAR) and catch is Exception:  # a narrower catch names what to convert
            raise
        text = _one_line(str(e)) or type(e).__name__
        if not ours and not isinstance(e, OSError):
            text = f"{type(e).__name__}: {text}{_where(e)}"
        raise CommandError("; ".join(part for part in (f"{what}: {text}" if what else text, fix) if part)) from e


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own prints the usage too: two lines, where the contract is one
        raise CommandError(f"{message} (see {self.prog} --help)", prog=self.prog)


# --- what the commands read: the model, its checkpoint, an example batch ---------------------


def _import(module_name: str):
    path = pathlib.Path(module_name)
    if path.suffix == ".py":
        if not path.exists():
            raise CommandError(f"no such file: {path}")
        loader = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(loader)
        sys.modules[path.stem] = module  # so that its classes can be pickled (normlab fold saves the model)
        loader.loader.exec_module(module)
        return module
    sys.path.insert(0, str(pathlib.Path.cwd()))
    return importlib.import_module(module_name)


def load_model(spec: str, checkpoint: str | None = None):
    """Build the model named by ``module:callable`` and load ``checkpoint`` into it."""
    import torch

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CommandError(f"MODEL must be given as module:callable (e.g. zoo.py:resnet), got {spec!r}")
    with blame(f"importing {module_name}", "MODEL's module must be importable from here, or a path to a .py file"):
        module = _import(module_name)
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise CommandError(f"{module_name!r} has no callable {attr!r}")
    with blame(f"calling {spec}", "MODEL is called with no arguments and must return the model"):
        model = factory()
    if not isinstance(model, torch.nn.Module):
        raise CommandError(f"{spec} returned {type(model).__name__}, expected a torch.nn.Module")
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model


WRAPPERS = ("state_dict", "model", "model_state_dict", "module")  # where training scripts put the weights
LISTED = 3  # keys named in a message before "and N more"


def _a(kind: str) -> str:
    return ("an " if kind[:1].lower() in "aeiou" else "a ") + kind


def _existing_file(path: str, what: str) -> None:
    p = pathlib.Path(path)
    if p.is_dir():
        raise CommandError(f"the {what} {path} is a folder; give a file saved with torch.save")
    if not p.is_file():
        raise CommandError(f"no such {what}: {path}")


def _listed(keys) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:LISTED]) + (f" and {len(keys) - LISTED} more" if len(keys) > LISTED else "")


def unwrap_checkpoint(obj, wanted: set[str]) -> tuple[dict, list[str]]:
    """The ``state_dict`` inside what ``torch.load`` returned, and what was done to get it.

    A whole module gives its ``state_dict``. A dict that is not itself a ``state_dict``
    (all tensors) is opened at its first key in :data:`WRAPPERS` (Lightning's
    ``{"state_dict": ..., "epoch": ...}``, ``{"model": ...}``). Then, when the keys do
    not already match ``wanted`` (the model's), the prefix whose removal matches most of
    them is removed: DDP's ``module.``, ``torch.compile``'s ``_orig_mod.``, the
    attribute a LightningModule keeps the model in (``model.``).
    """
    import torch

    done = []
    while True:
        if isinstance(obj, torch.nn.Module):
            obj = obj.state_dict()
            done.append("the saved module's state_dict")
        if not isinstance(obj, Mapping):
            raise CommandError(f"holds {_a(type(obj).__name__)}, not a state_dict")
        if obj and all(isinstance(v, torch.Tensor) for k, v in obj.items() if not str(k).endswith("_extra_state")):
            break
        key = next((k for k in WRAPPERS if isinstance(obj.get(k), (Mapping, torch.nn.Module))), None)
        if key is None:
            raise CommandError(
                f"holds a dict without tensors (keys: {_listed(map(str, obj))}) and none of {', '.join(WRAPPERS)}; "
                "save the model's state_dict()"
            )
        obj = obj[key]
        done.append(f"its {key!r} entry")
    state = dict(obj)
    best, matched = "", len(state.keys() & wanted)
    for depth in (1, 2, 3):
        for prefix in {".".join(k.split(".")[:depth]) + "." for k in state if k.count(".") >= depth}:
            hits = sum(k[len(prefix):] in wanted for k in state if k.startswith(prefix))
            if hits > matched:
                best, matched = prefix, hits
    if best:
        left_out = [k for k in state if not k.startswith(best)]
        state = {k[len(best):]: v for k, v in state.items() if k.startswith(best)}
        done.append(f"prefix {best!r} removed" + (f" ({len(left_out)} other entries left out: {_listed(left_out)})" if left_out else ""))
    return state, done


def load_checkpoint(model, path: str) -> None:
    """Load the checkpoint at ``path`` into ``model``, unwrapped as :func:`unwrap_checkpoint` says."""
    import torch

    _existing_file(path, "checkpoint")
    with blame(f"reading the checkpoint {path}", "give a file written by torch.save"):
        obj = torch.load(path, map_location="cpu", weights_only=False)
    try:
        state, done = unwrap_checkpoint(obj, set(model.state_dict()))
    except CommandError as e:
        raise CommandError(f"the checkpoint {path} {e}") from None
    with blame(f"the checkpoint {path} does not fit the model", "was it saved from another model or configuration?"):
        result = model.load_state_dict(state, strict=False)
    missing, unexpected = result.missing_keys, result.unexpected_keys
    if missing or unexpected:
        counts = [f"{len(missing)} missing key(s) ({_listed(missing)})"] if missing else []
        counts += [f"{len(unexpected)} unexpected key(s) ({_listed(unexpected)})"] if unexpected else []
        raise CommandError(
            f"the checkpoint {path} does not fit the model: {', '.join(counts)}; was it saved from another model or configuration?"
        )
    if done:
        print(f"normlab: loaded {path}: {', '.join(done)}", file=sys.stderr)


def _example_batch(path: str):
    """The input tensor saved in ``path``, and how to describe it."""
    import torch

    _existing_file(path, "example batch")
    with blame(f"reading the example batch {path}", "give a tensor saved with torch.save"):
        batch = torch.load(path, map_location="cpu", weights_only=True)
    what = f"the example batch in {path}"
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        batch, what = batch[0], f"{what} (its first element: a DataLoader's (inputs, targets, ...))"
    if isinstance(batch, Mapping):
        raise CommandError(
            f"the example batch {path} is a dict (keys: {_listed(map(str, batch))}); save the model's input "
            "tensor itself, e.g. torch.save(batch['x'], path)"
        )
    if not isinstance(batch, torch.Tensor):
        raise CommandError(f"the example batch {path} holds {_a(type(batch).__name__)}; save the model's input tensor with torch.save")
    if batch.dim() == 0 or batch.shape[0] == 0:
        raise CommandError(f"the example batch {path} holds no samples (shape {tuple(batch.shape)})")
    return batch, what


def _random_batch(model, batch_size: int, input_size: list[int]):
    import torch

    param = next(iter(model.parameters()), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    return torch.randn(batch_size, *input_size, generator=torch.Generator().manual_seed(0), dtype=dtype)


INPUT_SIZE_FIX = "--input-size is one sample's shape, without the batch dimension (e.g. 3 32 32 for CIFAR images)"


def _writable_file(path: str, flag: str) -> None:
    """Fail now, before any work, if ``path`` cannot be written as a file."""
    p = pathlib.Path(path)
    if p.is_dir():
        raise CommandError(f"{flag} {path} is a folder; give a file name")
    parent = p.parent
    if parent.exists() and not parent.is_dir():
        raise CommandError(f"{flag} {path}: {parent} is a file, not a folder")
    if not parent.is_dir():
        raise CommandError(f"{flag} {path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise CommandError(f"{flag} {path}: the folder {parent} is not writable")


def _writable_folder(path: str, flag: str) -> None:
    """Fail now if ``path`` cannot be, or be made, a writable folder."""
    p = pathlib.Path(path)
    if p.exists() and not p.is_dir():
        raise CommandError(f"{flag} {path} is a file; give a folder (it is created if missing)")
    existing = next(a for a in (p, *p.parents) if a.exists())  # "." or "/" at the latest
    if not existing.is_dir():
        raise CommandError(f"{flag} {path}: {existing} is a file, so the folder cannot be created")
    if not os.access(existing, os.W_OK):
        raise CommandError(f"{flag} {path}: {existing} is not writable")


# --- the commands ---------------------------------------------------------------------------


def _summary(args) -> int:
    from .tools import summary

    model = load_model(args.model, args.checkpoint)
    with blame(f"running the model on a batch of shape {(2, *args.input_size)}", INPUT_SIZE_FIX):
        table = summary(model, tuple(args.input_size))
    print(table)
    return 0


def _doctor(args) -> int:
    from .tools import doctor

    if args.example is not None and args.batch_size is not None:
        raise CommandError("--batch-size applies to --input-size: an --example batch has its own size")
    model = load_model(args.model, args.checkpoint)
    if args.example is not None:
        batch, what = _example_batch(args.example)
    else:
        batch_size = 32 if args.batch_size is None else args.batch_size
        batch = _random_batch(model, batch_size, args.input_size)
        what = f"a batch of {batch_size} standard-normal samples of shape {tuple(args.input_size)}"
    findings = doctor(model, batch)
    failed = [f for f in findings if f.code == "forward-error"]
    for finding in findings:
        if finding not in failed:
            print(finding)
    if failed:
        fix = "give an --example batch the model accepts" if args.example else INPUT_SIZE_FIX
        raise CommandError(f"the model cannot run on {what}: in {failed[0].layer}, {failed[0].message}; {fix}")
    print(f"{len(findings)} finding(s) on {what}")
    return 1 if findings else 0


def _fold(args) -> int:
    import torch

    from ._atomic import atomic_path
    from .tools import fold_batchnorm

    _writable_file(args.output, "--output")
    model = load_model(args.model, args.checkpoint).eval()
    with blame():
        result = fold_batchnorm(model)
    print(result)
    with blame(f"cannot write {args.output} (left as it was)"), atomic_path(args.output) as tmp:
        torch.save(result.model, tmp)
    module = pathlib.Path(args.model.partition(":")[0])
    name = module.stem if module.suffix == ".py" else str(module)
    print(f"wrote {args.output}: the whole module; load it with torch.load(path, weights_only=False) where {name!r} is importable")
    return 0


def _reproduce(args) -> int:
    try:
        from .lab import data
        from .lab.claims import PROFILES, Profile, for_profile
        from .lab.executors import ray_executor
        from .lab.report import table
        from .lab.reproduce import OutputError, reproduce
        from .lab.train import DeviceError
    except ImportError as e:
        raise CommandError(f"the lab needs its extra dependencies: pip install 'normlab[lab]' ({e})") from e
    try:
        for_profile(args.profile, args.claims)
    except ValueError as e:
        raise CommandError(str(e)) from e
    _writable_folder(args.out, "--out")
    rounds = (args.seeds,) if args.seeds else PROFILES[args.profile].rounds
    profile = Profile(args.profile, rounds, args.data, args.seed_offset)
    if args.executor != "ray" and (args.address or args.gpus_per_group is not None):
        raise CommandError("--address and --gpus-per-group go with --executor ray")
    executor = None
    try:
        with blame(catch=(data.DataError, DeviceError, OutputError, ConnectionError, ImportError)):
            if args.executor == "ray":
                executor = ray_executor(args.address, args.device, args.gpus_per_group, args.jobs)
            doc = reproduce(args.claims, profile, args.out, args.jobs, executor=executor, device=args.device)
    except KeyboardInterrupt:
        print(f"\nnormlab reproduce: interrupted; finished runs are kept in {args.out}, run it again to resume", file=sys.stderr)
        return 130
    finally:
        if executor is not None:
            executor.shutdown()
    print(table(doc))
    out = pathlib.Path(args.out)
    print(f"\n{len(doc['runs'])} runs, {doc['seconds']} s. Report: {out / 'report.html'}, {out / 'report.md'}; numbers: {out / 'results.json'}")
    return 0


def _claims(args) -> int:
    from .lab.claims import CLAIMS, SOURCES

    for heading, claims in (("", CLAIMS), ("The source experiments as written (normlab reproduce --profile sources):\n\n", SOURCES)):
        print(heading, end="")
        for c in claims.values():
            print(f"{c.name}\n  source:    {c.source}\n  claim:     {c.statement}\n  measured:  {c.measured}\n  criterion: {c.criterion}\n")
    return 0


def _version() -> str:
    from importlib import metadata

    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "not installed"
    return f"normlab {__version__} (torch {torch_version}, Python {sys.version.split()[0]})"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="normlab", description="Batch normalization, done properly.")
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def model_arguments(p):
        p.add_argument("model", help="module:callable returning the model (module: importable from here, or a .py file)")
        p.add_argument("--checkpoint", help="state_dict to load into the model (Lightning, DDP and {'model': ...} wrappers are unwrapped)")

    p = commands.add_parser("summary", help="Keras-style parameter table of a model")
    model_arguments(p)
    p.add_argument("--input-size", type=_positive_int, nargs="+", required=True, help="one sample's shape, without the batch")
    p.set_defaults(run=_summary)

    p = commands.add_parser(
        "doctor", help="find the classic batch-norm mistakes in a model (exit status 1 if any, 2 if it cannot run)"
    )
    model_arguments(p)
    example = p.add_mutually_exclusive_group(required=True)
    example.add_argument("--input-size", type=_positive_int, nargs="+", help="one sample's shape, without the batch (random data)")
    example.add_argument("--example", help="a batch of real inputs saved with torch.save, used instead of random data")
    p.add_argument("--batch-size", type=_positive_int, help="samples in the random batch (default 32; use your training batch size)")
    p.set_defaults(run=_doctor)

    p = commands.add_parser("fold", help="fold batch norms into the preceding conv/linear and save the model")
    model_arguments(p)
    p.add_argument("--output", required=True, help="where to write the folded model (torch.save of the module)")
    p.set_defaults(run=_fold)

    p = commands.add_parser("reproduce", help="test the claims about batch normalization and write a report")
    p.add_argument("--claims", nargs="+", metavar="NAME", help="claims to test (default: all; see `normlab claims`)")
    p.add_argument("--profile", choices=["quick", "full", "tiny", "sources"], default="quick",
                   help="quick (default, minutes), full (more steps and seeds), tiny (seconds, for tests) or sources "
                   "(the source experiments as written, on CIFAR: about 200 core-hours)")
    p.add_argument("--data", default="mnist1d", help="'mnist1d' (generated offline, the default), 'digits' (shipped: 8x8 handwritten digits), "
                   "'random-binary' (random labels) or a folder of MNIST IDX or CIFAR python files; for --profile sources, "
                   "a folder holding cifar-10-batches-py/ and cifar-100-python/ (or either)")
    p.add_argument("--out", default="normlab-report", help="output folder; runs cached there are reused (default: normlab-report)")
    p.add_argument("--seeds", type=_positive_int, help="seeds per arm, in one round (default: the profile's rounds, "
                   "seeds added until each verdict is decisive)")
    p.add_argument("--seed-offset", type=_non_negative_int, default=0, metavar="N",
                   help="start the seeds at N: another, disjoint set of seeds (e.g. 1000), to check that verdicts hold")
    p.add_argument("--jobs", type=_positive_int, help="worker processes (default: one per core); with --executor ray "
                   "and no --address, the CPUs of the local Ray cluster")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu",
                   help="where the runs train (default cpu; auto: CUDA where there is a GPU). Runs of one "
                   "configuration that differ in seed train as one vectorized model there")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: worker processes on this machine (default); ray: tasks on a Ray cluster "
                   "(pip install 'normlab[ray]'), one group of runs per task, results written here")
    p.add_argument("--address", help="with --executor ray: the cluster's address (e.g. ray://head:10001, or auto); "
                   "default: start a local cluster")
    p.add_argument("--gpus-per-group", type=float, metavar="F", help="with --executor ray: GPUs each group asks for, "
                   "a fraction so that groups share a GPU (default 0.25 on a GPU cluster unless --device cpu)")
    p.set_defaults(run=_reproduce)

    p = commands.add_parser("claims", help="list the claims `normlab reproduce` tests")
    p.set_defaults(run=_claims)
    return parser


def main(argv=None) -> int:
    """Run ``normlab ARGV``; the exit status: 0, 1 (the doctor's findings), 2 (a :class:`CommandError`) or 3 (a bug)."""
    prog = "normlab"
    try:
        args, extra = build_parser().parse_known_args(argv)
        prog = f"normlab {args.command}"
        if extra:  # argparse would name the top-level program; the mistake is in the command's arguments
            raise CommandError(f"unrecognized arguments: {' '.join(extra)} (see {prog} --help)")
        return args.run(args)
    except CommandError as e:
        print(f"{e.prog or prog}: {_one_line(str(e), limit=2000)}", file=sys.stderr)
        return 2
    except Exception:  # not the user's mistake: normlab's, with its traceback, and a status of its own
        traceback.print_exc()
        print(f"{prog}: this is a bug in normlab (exit status 3); please report it with the traceback above", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
