"""`peftflow model ...`: base-model helpers (the tiny random RWKV-7 of the smoke profile)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from peftflow.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    model = subparsers.add_parser("model", help="base-model helpers")
    actions = model.add_subparsers(dest="model_command", metavar="ACTION")
    tiny = actions.add_parser(
        "init-tiny",
        help="create the tiny random RWKV-7 base model (deterministic from a seed)",
        description="Create a tiny random-initialised RWKV-7 (x070) .pth, either where a "
        "profile's base_model points (with its n_layer, n_embd and init_seed) or at --out.",
    )
    tiny.add_argument("--profile", help="profile YAML; takes shape, seed and path from it")
    tiny.add_argument("--out", help="output .pth (overrides the profile's base_model)")
    tiny.add_argument("--n-layer", type=int, help="number of blocks")
    tiny.add_argument("--n-embd", type=int, help="width, a multiple of 64")
    tiny.add_argument("--seed", type=int, help="random seed")
    tiny.set_defaults(func=_init_tiny)
    model.set_defaults(func=lambda args: (model.print_help(), 2)[1])


def _init_tiny(args: argparse.Namespace) -> int:
    out, n_layer, n_embd, seed = args.out, args.n_layer, args.n_embd, args.seed
    if args.profile:
        from peftflow.train import training_profile as profile_mod

        prof = profile_mod.load(args.profile)
        if prof.model.architecture != "x070":
            raise ConfigError(f"{args.profile}: init-tiny creates RWKV-7 (x070) models only")
        out = out or str(prof.model.base_model_path())
        n_layer = n_layer or prof.model.n_layer
        n_embd = n_embd or prof.model.n_embd
        seed = prof.model.init_seed if seed is None else seed
    missing = [flag for flag, value in (("--out", out), ("--n-layer", n_layer),
                                        ("--n-embd", n_embd), ("--seed", seed)) if value is None]
    if missing:
        raise ConfigError(
            f"init-tiny needs {', '.join(missing)}; pass them, or --profile with a profile "
            "that sets model.init_seed"
        )
    from peftflow.train.tiny import init_tiny_rwkv7

    path = init_tiny_rwkv7(Path(out), int(n_layer), int(n_embd), int(seed))
    print(path)
    print(f"tiny RWKV-7 L{n_layer} D{n_embd} seed {seed} -> {path}", file=sys.stderr)
    return 0
