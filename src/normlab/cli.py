"""The ``normlab`` command line.

    normlab summary MODEL [--checkpoint FILE] --input-size 3 32 32
    normlab doctor MODEL [--checkpoint FILE] (--input-size 3 32 32 [--batch-size 32] | --example BATCH.pt)
    normlab fold MODEL [--checkpoint FILE] --output folded.pt
    normlab reproduce [--claims NAME ...] [--profile quick|full] [--data mnist1d|digits|PATH] [--out DIR] [--seeds N]
    normlab claims

MODEL is ``module:callable``: a module importable from the current directory (or a
path to a .py file) and a callable in it that returns an ``nn.Module``; a checkpoint,
when given, is a ``state_dict`` (or a whole saved module) loaded into it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import pathlib
import sys


class CommandError(Exception):
    """A problem with what the user asked for: printed without a traceback, exit status 2."""


def load_model(spec: str, checkpoint: str | None = None):
    """Build the model named by ``module:callable`` and load ``checkpoint`` into it."""
    import torch

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CommandError(f"model must be given as module:callable, got {spec!r}")
    path = pathlib.Path(module_name)
    try:
        if path.suffix == ".py":
            if not path.exists():
                raise CommandError(f"no such file: {path}")
            loader = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(loader)
            sys.modules[path.stem] = module  # so that its classes can be pickled (normlab fold saves the model)
            loader.loader.exec_module(module)
        else:
            sys.path.insert(0, str(pathlib.Path.cwd()))
            module = importlib.import_module(module_name)
    except ImportError as e:
        raise CommandError(f"cannot import {module_name!r}: {e}") from e
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise CommandError(f"{module_name!r} has no callable {attr!r}")
    model = factory()
    if not isinstance(model, torch.nn.Module):
        raise CommandError(f"{spec} returned {type(model).__name__}, expected a torch.nn.Module")
    if checkpoint is not None:
        if not pathlib.Path(checkpoint).exists():
            raise CommandError(f"no such checkpoint: {checkpoint}")
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        if isinstance(state, torch.nn.Module):
            state = state.state_dict()
        model.load_state_dict(state)
    return model


def _summary(args) -> int:
    from .tools import summary

    model = load_model(args.model, args.checkpoint)
    print(summary(model, tuple(args.input_size)))
    return 0


def _doctor(args) -> int:
    import torch

    from .tools import doctor

    model = load_model(args.model, args.checkpoint)
    if args.example is not None:
        if not pathlib.Path(args.example).exists():
            raise CommandError(f"no such example batch: {args.example}")
        batch = torch.load(args.example, map_location="cpu", weights_only=True)
        what = f"the example batch in {args.example}"
    else:
        param = next(iter(model.parameters()), None)
        dtype = param.dtype if param is not None else torch.float32
        gen = torch.Generator().manual_seed(0)
        batch = torch.randn(args.batch_size, *args.input_size, generator=gen, dtype=dtype)
        what = f"a batch of {args.batch_size} standard-normal samples of shape {tuple(args.input_size)}"
    findings = doctor(model, batch)
    for finding in findings:
        print(finding)
    print(f"{len(findings)} finding(s) on {what}")
    return 1 if findings else 0


def _fold(args) -> int:
    import torch

    from ._atomic import atomic_path
    from .tools import fold_batchnorm

    model = load_model(args.model, args.checkpoint).eval()
    try:
        result = fold_batchnorm(model)
    except ValueError as e:
        raise CommandError(str(e)) from e
    print(result)
    try:
        with atomic_path(args.output) as tmp:
            torch.save(result.model, tmp)
    except OSError as e:
        raise CommandError(f"cannot write {args.output} (left as it was): {e}") from e
    module = pathlib.Path(args.model.partition(":")[0])
    name = module.stem if module.suffix == ".py" else str(module)
    print(f"wrote {args.output}: the whole module; load it with torch.load(path, weights_only=False) where {name!r} is importable")
    return 0


def _reproduce(args) -> int:
    try:
        from .lab import data
        from .lab.claims import CLAIMS, PROFILES, Profile
        from .lab.report import table
        from .lab.reproduce import reproduce
    except ImportError as e:
        raise CommandError(f"the lab needs its extra dependencies: pip install 'normlab[lab]' ({e})") from e
    unknown = [n for n in args.claims or [] if n not in CLAIMS]
    if unknown:
        raise CommandError(f"unknown claim(s) {', '.join(unknown)}; the claims are: {', '.join(CLAIMS)}")
    if args.seeds is not None and args.seeds < 1:
        raise CommandError(f"--seeds must be at least 1, got {args.seeds}")
    profile = Profile(args.profile, args.seeds or PROFILES[args.profile].seeds, args.data)
    try:
        doc = reproduce(args.claims, profile, args.out, args.jobs)
    except data.DataError as e:
        raise CommandError(str(e)) from e
    except KeyboardInterrupt:
        print(f"\nnormlab reproduce: interrupted; finished runs are kept in {args.out}, run it again to resume", file=sys.stderr)
        return 130
    print(table(doc))
    out = pathlib.Path(args.out)
    print(f"\n{len(doc['runs'])} runs, {doc['seconds']} s. Report: {out / 'report.html'}, {out / 'report.md'}; numbers: {out / 'results.json'}")
    return 0


def _claims(args) -> int:
    from .lab.claims import CLAIMS

    for c in CLAIMS.values():
        print(f"{c.name}\n  source:    {c.source}\n  claim:     {c.statement}\n  measured:  {c.measured}\n  criterion: {c.criterion}\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="normlab", description="Batch normalization, done properly.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("summary", help="Keras-style parameter table of a model")
    p.add_argument("model", help="module:callable returning the model")
    p.add_argument("--checkpoint", help="state_dict to load into the model")
    p.add_argument("--input-size", type=int, nargs="+", required=True, help="one sample's shape, without the batch")
    p.set_defaults(run=_summary)

    p = commands.add_parser("doctor", help="find the classic batch-norm mistakes in a model (exit status 1 if any)")
    p.add_argument("model", help="module:callable returning the model")
    p.add_argument("--checkpoint", help="state_dict to load into the model")
    example = p.add_mutually_exclusive_group(required=True)
    example.add_argument("--input-size", type=int, nargs="+", help="one sample's shape, without the batch (random data)")
    example.add_argument("--example", help="a batch of real inputs saved with torch.save, used instead of random data")
    p.add_argument("--batch-size", type=int, default=32, help="samples in the random batch (use your training batch size)")
    p.set_defaults(run=_doctor)

    p = commands.add_parser("fold", help="fold batch norms into the preceding conv/linear and save the model")
    p.add_argument("model", help="module:callable returning the model")
    p.add_argument("--checkpoint", help="state_dict to load into the model")
    p.add_argument("--output", required=True, help="where to write the folded model (torch.save of the module)")
    p.set_defaults(run=_fold)

    p = commands.add_parser("reproduce", help="test the claims about batch normalization and write a report")
    p.add_argument("--claims", nargs="+", metavar="NAME", help="claims to test (default: all; see `normlab claims`)")
    p.add_argument("--profile", choices=["quick", "full", "tiny"], default="quick",
                   help="quick (default, minutes), full (more steps and seeds) or tiny (seconds, for tests)")
    p.add_argument("--data", default="mnist1d", help="'mnist1d' (generated offline, the default), 'digits' (shipped: 8x8 handwritten digits) or a folder of MNIST IDX or CIFAR python files")
    p.add_argument("--out", default="normlab-report", help="output folder; runs cached there are reused (default: normlab-report)")
    p.add_argument("--seeds", type=int, help="seeds per configuration (default: the profile's)")
    p.add_argument("--jobs", type=int, help="worker processes (default: one per core)")
    p.set_defaults(run=_reproduce)

    p = commands.add_parser("claims", help="list the claims `normlab reproduce` tests")
    p.set_defaults(run=_claims)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except CommandError as e:
        print(f"normlab {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
