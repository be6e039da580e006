"""``lyagym verify CHECKPOINT --box LO,HI ...``: prove a model's Lyapunov decrease over a box.

The checkpoint is a ``save_model`` file whose model has a ``lyapunov`` attribute or whose
metadata holds one (``lyagym.learned_models.verification.lyapunov_payload``: the
soft-Lyapunov model, a plain ``SimpleDynamics`` with a separately fitted ``V``). Prints a
progress bar and writes the result as JSON (stdout, or ``--out``): status (verified /
counterexample / unknown), the proven fraction of the box, boxes, seconds, the margin, the
local certificate at the equilibrium and, with ``--rho auto``, the certified region of
attraction ``{V <= rho}``.

A checkpoint whose metadata holds a control Lyapunov function (``control_lyapunov_payload``:
what ``lyagym mbrl --model ensemble-clf`` commits as ``model.pt`` in its run folder's state)
gets its stabilisability claim proven: the decrease under the fallback input on the certified
set ``{inner * rho <= V <= rho}`` at the certified rate (``--box`` optional: a part of it).

A ``LyaNetWorldModel`` checkpoint (``model.save``) gets its inference contraction proven
instead (``lyagym.learned_models.contraction``): rate ``alpha / 2`` over ``--box`` (its inputs)
and its training cube of inference states, ``alpha`` from ``--alpha`` or its certificate.

Example::

    lyagym verify soft_n1.pt --box=-3.1416,3.1416 --box=-8,8 --rho auto --budget-s 30
    lyagym verify lyanet_n1.pt --box=-3.1416,3.1416 --box=-8,8 --alpha 2 --budget-s 60
    lyagym verify runs/ip/state-000012/model.pt --budget-s 120
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["add_arguments", "run"]


def _parse_pair(text: str, *, fixed: bool) -> tuple[float, float]:
    """``LO,HI`` as two finite floats, LO < HI (``fixed``: LO <= HI, LO = HI fixing a value)."""
    import math

    example = "-2,2; 0,0 fixes the input" if fixed else "-3.1416,3.1416"
    try:
        lo, hi = (float(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (two numbers, e.g. {example}), got {text!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and (lo <= hi if fixed else lo < hi)):
        relation = "LO <= HI (LO = HI fixes the input)" if fixed else "LO < HI"
        raise argparse.ArgumentTypeError(f"expected finite {relation}, got {text!r}")
    return lo, hi


def _pair(text: str) -> tuple[float, float]:
    """``--box``: LO,HI with LO < HI."""
    return _parse_pair(text, fixed=False)


def _input_pair(text: str) -> tuple[float, float]:
    """``--u-box``: LO,HI with LO <= HI (LO = HI fixes that input, e.g. 0,0 for no input)."""
    return _parse_pair(text, fixed=True)


def _rho(text: str) -> float | str:
    if text == "auto":
        return text
    from .cli_types import number

    return number(0, strict=True)(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .cli_types import number

    parser.add_argument("checkpoint", help="a lyagym model checkpoint (save_model) with a Lyapunov function")
    parser.add_argument("--box", type=_pair, action="append", default=None, metavar="LO,HI",
                        help="one per state dimension, in order (write --box=-3.14,3.14 for a negative LO); "
                             "required except for a control Lyapunov checkpoint (default there: its certified set)")
    parser.add_argument("--u-box", type=_input_pair, action="append", default=None, metavar="LO,HI",
                        help="one per input dimension: prove the decrease for every input in this box "
                             "(LO = HI fixes that input: --u-box 0,0 proves the decrease without input)")
    parser.add_argument("--alpha", type=number(0), default=None,
                        help="decay rate to prove (default: the checkpoint's metadata 'alpha', else the model's alpha)")
    parser.add_argument("--rho", type=_rho, default=None,
                        help="restrict the claim to {V <= RHO}; 'auto': the largest such level by bisection (region of attraction)")
    parser.add_argument("--budget-s", type=number(0, strict=True), default=30.0, help="time budget in seconds")
    parser.add_argument("--exhaustive", action="store_true",
                        help="after a counterexample, keep proving the rest of the box until the budget (the proven share)")
    parser.add_argument("--out", default=None, help="write the JSON result here (atomically) instead of stdout")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--no-progress", action="store_true")


def _fail(message: str) -> int:
    print(f"lyagym verify: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from lyagym.learned_models import load_model
    from lyagym.learned_models.verification import lyapunov_from_payload, region_of_attraction, verify_decrease

    try:
        model = load_model(args.checkpoint)
    except (FileNotFoundError, ValueError) as e:
        lyanet = _load_lyanet(args.checkpoint)
        if lyanet is None:
            return _fail(str(e))
        return _run_contraction(args, lyanet)
    meta = getattr(model, "checkpoint_metadata", {}) or {}
    if "control_lyapunov" in meta:
        return _run_stabilisability(args, model, meta["control_lyapunov"])
    if args.box is None:
        return _fail("--box is required (one LO,HI pair per state dimension)")
    V = getattr(model, "lyapunov", None)
    try:
        if V is None and "lyapunov" in meta:
            V = lyapunov_from_payload(meta["lyapunov"])
    except ValueError as e:
        return _fail(f"{args.checkpoint}: {e}")
    if V is None and hasattr(model, "member_class"):  # an Ensemble: its certificate is its members'
        return _fail(f"{args.checkpoint} holds an ensemble of {model.size} {model.member_class.__name__} members: its "
                     "certificate is its members' own (load_model(PATH).certificate(), and .check(ensemble) tests them); "
                     "lyagym verify proves one model's decrease with its Lyapunov function")
    if V is None:
        name = type(model).__name__
        return _fail(f"{args.checkpoint} holds {'an' if name[0] in 'AEIOU' else 'a'} {name} without a Lyapunov function "
                     "(save it with metadata={'lyapunov': lyapunov_payload(V)})")
    alpha = args.alpha if args.alpha is not None else meta.get("alpha", getattr(model, "alpha", None))
    if alpha is None:
        return _fail("no decay rate: pass --alpha")
    if len(args.box) != V.state_dim:
        return _fail(f"--box: expected {V.state_dim} (one per state dimension), got {len(args.box)}")
    m = int(getattr(model, "action_dim", 0) or 0)
    if m and (args.u_box is None or len(args.u_box) != m):
        return _fail(f"--u-box: the model takes {m} input(s); expected {m} LO,HI pairs, got {0 if args.u_box is None else len(args.u_box)}")
    if args.rho == "auto" and m:
        return _fail("--rho auto needs an autonomous model (no inputs)")
    if args.out is not None:
        from .cli_types import out_file

        message = out_file("--out", args.out, overwrite=args.overwrite)
        if message:
            return _fail(message)
    if args.rho == "auto":
        return _verify_and_write(args, model, lambda progress: region_of_attraction(
            model, V, args.box, alpha=float(alpha), budget_s=args.budget_s, progress=progress))
    return _verify_and_write(args, model, lambda progress: verify_decrease(
        model, V, args.box, alpha=float(alpha), rho=args.rho, u_box=args.u_box, budget_s=args.budget_s,
        progress=progress, exhaustive=args.exhaustive))


def _verify_and_write(args: argparse.Namespace, model, verify) -> int:
    """Run ``verify(progress)`` under the progress bar, then write its result (or fail with
    its argument error); the bar is closed before anything else is printed."""
    bar, progress = _progress(args)
    try:
        res = verify(progress)
    except (TypeError, ValueError) as e:
        if bar is not None:
            bar.close()
        return _fail(str(e))
    if bar is not None:
        bar.close()
    return _write(args, model, res)


def _progress(args: argparse.Namespace):
    bar = None
    if not args.no_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=100, desc="verify", unit="% of box", bar_format="{l_bar}{bar}| {n:.1f}/{total} {unit} [{elapsed}<{remaining}]{postfix}")

    def progress(fraction: float, boxes: int) -> None:
        if bar is not None:
            bar.n = 100 * fraction
            bar.set_postfix(boxes=boxes, refresh=False)
            bar.refresh()

    return bar, progress


def _load_lyanet(path: str):
    """The ``LyaNetWorldModel`` at ``path``, or ``None`` if it is not one."""
    from lyagym.learned_models.lyanet_world_model import LyaNetWorldModel

    try:
        return LyaNetWorldModel.load(path)
    except (FileNotFoundError, ValueError):
        return None


def _run_contraction(args: argparse.Namespace, model) -> int:
    from lyagym.learned_models.contraction import verify_contraction

    k = model.state_dim + model.action_dim
    if args.box is None or len(args.box) != k:
        return _fail(f"--box: expected {k} (one per input of the LyaNet model: state, then action), got {len(args.box or [])}")
    if args.rho is not None or args.u_box is not None:
        return _fail("--rho and --u-box are for Lyapunov decrease checkpoints; a LyaNet model's inputs all go in --box")
    if args.out is not None:
        from .cli_types import out_file

        message = out_file("--out", args.out, overwrite=args.overwrite)
        if message:
            return _fail(message)
    alpha = args.alpha
    if alpha is None:
        try:
            alpha = model.certificate().alpha
        except RuntimeError as e:
            return _fail(f"no rate: pass --alpha ({e})")
    if not alpha > 0:
        return _fail(f"--alpha: the rate to prove must be > 0, got {alpha}")
    return _verify_and_write(args, model, lambda progress: verify_contraction(
        model, args.box, rate=float(alpha) / 2, budget_s=args.budget_s, progress=progress, exhaustive=args.exhaustive))


def _run_stabilisability(args: argparse.Namespace, model, payload) -> int:
    """Prove a control Lyapunov checkpoint's stabilisability claim (its own rate and region)."""
    from lyagym.learned_models.control_lyapunov import control_lyapunov_from_payload

    try:
        V = control_lyapunov_from_payload(payload)
    except ValueError as e:
        return _fail(f"{args.checkpoint}: {e}")
    if args.alpha is not None or args.rho is not None or args.u_box is not None:
        return _fail("--alpha, --rho and --u-box do not apply to a control Lyapunov checkpoint: its claim is proven "
                     "at its own rate, on its own set, under its fallback input")
    if args.box is not None and len(args.box) != V.state_dim:
        return _fail(f"--box: expected {V.state_dim} (one per state dimension), got {len(args.box)}")
    if float(V.rho) <= 0:
        return _fail(f"{args.checkpoint}: its control Lyapunov function certifies nothing (rho = 0)")
    if args.out is not None:
        from .cli_types import out_file

        message = out_file("--out", args.out, overwrite=args.overwrite)
        if message:
            return _fail(message)
    V = V.to(model.dtype)
    cert = V.certificate(model)
    bar, progress = _progress(args)
    try:
        proven = cert.verify(model, lyapunov=V, box=args.box, budget_s=args.budget_s, progress=progress)
    except (TypeError, ValueError) as e:
        return _fail(str(e))
    finally:
        if bar is not None:
            bar.close()
    formal = proven.details["formal"]
    result = {"checkpoint": args.checkpoint, "model_class": type(model).__name__, "claim": proven.claim,
              "alpha": proven.alpha, "evidence": proven.evidence, **formal}
    return _emit(args, result, formal["status"], formal["fraction"], formal["seconds"])


def _write(args: argparse.Namespace, model, res) -> int:
    result = {"checkpoint": args.checkpoint, "model_class": type(model).__name__, **res.details()}
    return _emit(args, result, res.status, res.fraction, res.seconds)


def _emit(args: argparse.Namespace, result: dict, status: str, fraction: float, seconds: float) -> int:
    text = json.dumps(result, indent=2)
    if args.out is None:
        print(text)
    else:
        from pathlib import Path

        from lyagym.learned_models.files import atomic_write

        atomic_write(args.out, lambda tmp: Path(tmp).write_text(text + "\n"))
        print(f"{status}: {100 * fraction:.4g}% of the box in {seconds:.1f} s; wrote {args.out}")
    return 0
