"""`mtrank synth GENERATOR`: the synthetic-data generators."""

from __future__ import annotations

import json

from mtrank.args import Parser, UsageError, fraction, positive


def _synth_aliccp(args, _) -> None:
    from synth import aliccp

    try:
        config = aliccp.for_regime(
            args.regime,
            rows=args.rows,
            seed=args.seed,
            test_fraction=args.test_fraction,
            malformed_rate=args.malformed_rate,
        )
        manifest = aliccp.generate(config, args.out)
    except (ValueError, OSError) as e:
        raise UsageError(f"mtrank synth aliccp: {e}") from None
    print(json.dumps({k: manifest[k] for k in ("samples", "label_rates", "bayes_auc")}, indent=2))
    print(f"wrote {', '.join(manifest['files'])} and synth.json to {args.out}")


def _synth_aliexpress(args, _) -> None:
    from synth import aliexpress

    config = aliexpress.AliexpressSynthConfig(rows=args.rows, seed=args.seed, test_fraction=args.test_fraction)
    try:
        manifest = aliexpress.generate(config, args.out)
    except (ValueError, OSError) as e:
        raise UsageError(f"mtrank synth aliexpress: {e}") from None
    print(json.dumps({k: manifest[k] for k in ("samples", "label_rates", "bayes_auc")}, indent=2))
    print(f"wrote {', '.join(manifest['files'])} and synth.json to {args.out}")


def _synth_fdn(args, _) -> None:
    from synth import fdn

    try:
        manifest = fdn.generate(fdn.FdnSynthConfig(rows=args.rows, seed=args.seed, dimension=args.dimension), args.out)
    except OSError as e:
        raise UsageError(f"mtrank synth fdn: {e}") from None
    print(f"wrote {', '.join(manifest['files'])} and synth.json to {args.out}")


def _synth_mmoe(args, _) -> None:
    from synth import mmoe

    config = mmoe.MmoeSynthConfig(
        rows=args.rows, seed=args.seed, correlation=args.correlation, dimension=args.dimension
    )
    try:
        manifest = mmoe.generate(config, args.out)
    except (ValueError, OSError) as e:
        raise UsageError(f"mtrank synth mmoe: {e}") from None
    print(
        f"label correlation {manifest['label_correlation']:.3f} (weights' cosine {config.correlation}); "
        f"wrote {', '.join(manifest['files'])} to {args.out}"
    )


def add_synth(commands) -> None:
    from synth.aliccp import REGIMES

    synth = commands.add_parser("synth", help="write synthetic data").add_subparsers(
        dest="generator", required=True, metavar="GENERATOR", parser_class=Parser
    )
    p = synth.add_parser("aliccp", help="raw Ali-CCP files with labels from a known model")
    p.add_argument("--rows", type=positive, required=True, help="valid sample rows over train and test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--test-fraction", type=fraction, default=0.2)
    p.add_argument(
        "--regime",
        choices=tuple(REGIMES),
        default="sessions",
        help="the data's shape (synth/aliccp.py): sessions of ~25 rows per user, sparse conversions at "
        "Ali-CCP's 0.53%% of clicks, cold-users with ~1.5 rows each, or latent-factor interactions "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--malformed-rate",
        type=fraction,
        default=0.0,
        help="malformed lines per valid line, of every kind, counted in synth.json",
    )
    p.set_defaults(func=_synth_aliccp)
    p = synth.add_parser("aliexpress", help="MTReclib's AliExpress CSV layout with labels from a known model")
    p.add_argument("--rows", type=positive, required=True, help="rows over train and test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--test-fraction", type=fraction, default=0.2)
    p.set_defaults(func=_synth_aliexpress)
    p = synth.add_parser("fdn", help="the FDN paper's synthetic regression (Dataset-A, -B, -I)")
    p.add_argument("--rows", type=positive, default=10_000, help="rows per dataset (default: %(default)s)")
    p.add_argument("--dimension", type=positive, default=100, help="feature dimension d (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_synth_fdn)
    p = synth.add_parser("mmoe", help="the MMoE paper's two-task regression with a chosen task correlation")
    p.add_argument("--correlation", type=float, required=True, help="cosine of the two tasks' weights, in [-1, 1]")
    p.add_argument("--rows", type=positive, default=10_000)
    p.add_argument("--dimension", type=positive, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_synth_mmoe)
