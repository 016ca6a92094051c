"""`bsn mask ...`: inspect, combine, edit and use mask files from the command line.

    bsn mask info MASK [--blocks MODEL_DIR]
    bsn mask complement MASK --output OUT
    bsn mask union A B --output OUT          (and: intersect)
    bsn mask random MASK --model-dir DIR [--seed S] [--within blocks|matrix] --output OUT
    bsn mask edit MASK --model-dir DIR (--keep | --drop) (--head L:H | --mlp L:U[,U...] | --layer L)
                  --output OUT
    bsn mask generate --model-dir DIR [--mask MASK] --prompt TEXT [--max-new-tokens N]
                  [--temperature T] [--seed S]
    bsn mask card MASK [--metrics results/<run>/metrics/masks.parquet] [--output README.md]
    bsn mask export MASK --model-dir DIR --output OUT [--dtype float32|bfloat16|float16]
    bsn mask pull REPO_ID [--revision R] [--filename F] [--repo-type model|dataset] --output OUT
    bsn mask import FILE --model-dir DIR [--lambda L] --output OUT

A model folder is a `results/<run>/models/<name>/` folder of the workflow or any `save_pretrained`
folder of a supported family. Derived masks record the operation and their sources. `info` prints
a mask's card (model, weights, target, λ, kept, training hashes, file format; see masks.sharing),
`card` writes it as Markdown, `export` writes a pruned save_pretrained folder and `pull` fetches a
mask published in a Hugging Face Hub repo (through the HF cache; HF_HUB_OFFLINE is honoured).
`import` converts one of the paper authors' released masks (a pickle, local or
hf://<owner>/<repo>[@<revision>][/<file>]) into a mask file of the model, read with a restricted
unpickler (numpy arrays and builtin containers only; see masks.reference).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bigram_subnetworks.errors import UserError


def _load_model(model_dir: Path) -> Any:
    from bigram_subnetworks.models.loading import MODEL_FILE, load_model, load_pretrained_dir

    if (model_dir / MODEL_FILE).is_file():
        return load_model(model_dir)[0]
    return load_pretrained_dir(model_dir)


def _save(path: Path, mask: dict, operation: str, sources: list[Path], **extra: Any) -> None:
    from bigram_subnetworks.masks.toolkit import kept, save_mask, total

    metadata = {"operation": operation, "sources": [str(s) for s in sources], **extra}
    save_mask(path, mask, metadata)
    print(f"{path}: kept {kept(mask):,} of {total(mask):,} ({kept(mask) / total(mask):.4%})")


def cmd_info(args: argparse.Namespace) -> None:
    from bigram_subnetworks.masks.sharing import card_fields, other_metadata, share_text
    from bigram_subnetworks.masks.toolkit import block_counts, load_mask
    from bigram_subnetworks.models.layout import layout_of

    _, metadata = load_mask(args.mask)
    print(f"{args.mask}: {share_text(metadata)}")
    for label, value in card_fields(metadata):
        if label != "kept":
            print(f"  {label}: {value}")
    for key, value in other_metadata(metadata).items():
        print(f"  {key}: {json.dumps(value, sort_keys=True) if isinstance(value, dict) else value}")
    if args.blocks:
        layout = layout_of(_load_model(args.blocks))
        print(f"  {'layer':>5} {'block':<8} {'kept':>12} {'size':>12} {'fraction':>9}")
        for row in block_counts(load_mask(args.mask, layout)[0], layout):
            fraction = row["kept"] / row["size"]
            print(
                f"  {row['layer']:>5} {row['kind']:<8} {row['kept']:>12,} {row['size']:>12,} "
                f"{fraction:>9.4f}"
            )


def cmd_card(args: argparse.Namespace) -> None:
    import sys

    from bigram_subnetworks.masks.sharing import measured_r, render_card, write_text
    from bigram_subnetworks.masks.toolkit import load_mask

    _, metadata = load_mask(args.mask)
    r = measured_r(args.metrics, metadata) if args.metrics else None
    if args.metrics and not r:
        key = ", ".join(f"{k} {metadata.get(k)}" for k in ("model", "target", "lambda"))
        print(f"bsn mask card: {args.metrics} has no r of this mask ({key})", file=sys.stderr)
    card = render_card(metadata, r, mask_file=args.mask.name)
    if args.output is None:
        print(card, end="")
    else:
        write_text(args.output, card)
        print(f"{args.output}: card of {args.mask}")


def cmd_export(args: argparse.Namespace) -> None:
    from bigram_subnetworks.masks.sharing import export_pruned

    done = export_pruned(args.mask, args.model_dir, args.output, args.dtype)
    print(
        f"{args.output}: {done['zeroed']:,} of {done['total']:,} masked entries set to 0, "
        f"{done['dtype']}; tokenizer {done['tokenizer']}; load it with "
        f"AutoModelForCausalLM.from_pretrained({str(args.output)!r})"
    )


def cmd_pull(args: argparse.Namespace) -> None:
    from bigram_subnetworks.masks.sharing import pull_mask, share_text

    metadata, commit = pull_mask(
        args.repo_id, args.output, args.revision, args.filename, args.repo_type
    )
    where = f"{args.repo_id}@{commit or args.revision or 'main'}"
    print(f"{args.output}: {args.filename} of {where}, {share_text(metadata)}")


def cmd_import(args: argparse.Namespace) -> None:
    from bigram_subnetworks.masks.reference import ORIG_MODEL_KEY, import_reference
    from bigram_subnetworks.masks.sharing import _model_source, share_text

    model, identity, _ = _model_source(args.model_dir)
    metadata = import_reference(args.file, args.lam, model, identity, args.output)
    reference = metadata["reference"]
    whole = reference["kept_whole"]
    also = f"; {len(whole)} unmasked parameter(s) listed, all kept" if whole else ""
    print(
        f"{args.output}: λ {metadata['lambda']} mask of {reference[ORIG_MODEL_KEY] or 'a model'} "
        f"from {metadata['sources'][0]}, {share_text(metadata)}{also}"
    )


def cmd_complement(args: argparse.Namespace) -> None:
    from bigram_subnetworks.masks.toolkit import complement, load_mask

    _save(args.output, complement(load_mask(args.mask)[0]), "complement", [args.mask])


def cmd_combine(args: argparse.Namespace) -> None:
    from bigram_subnetworks.masks.toolkit import intersection, load_mask, union

    combine = union if args.mask_command == "union" else intersection
    a, b = load_mask(args.a)[0], load_mask(args.b)[0]
    _save(args.output, combine(a, b), args.mask_command, [args.a, args.b])


def cmd_random(args: argparse.Namespace) -> None:
    from bigram_subnetworks.masks.toolkit import load_mask, random_like, random_within_blocks
    from bigram_subnetworks.models.layout import layout_of

    layout = layout_of(_load_model(args.model_dir))
    mask = load_mask(args.mask, layout)[0]
    if args.within == "blocks":
        drawn = random_within_blocks(mask, layout, args.seed)
    else:
        drawn = random_like(mask, args.seed)
    _save(args.output, drawn, f"random within {args.within}", [args.mask], seed=args.seed)


def _pair(text: str, what: str) -> tuple[int, str]:
    layer, sep, rest = text.partition(":")
    if not sep or not layer.isdigit() or not rest:
        raise UserError(f"--{what} {text!r}: expected LAYER:{what.upper()}, e.g. 0:3")
    return int(layer), rest


def cmd_edit(args: argparse.Namespace) -> None:
    from bigram_subnetworks.masks.toolkit import load_mask, set_head, set_layer, set_mlp_units
    from bigram_subnetworks.models.layout import layout_of

    # Parse the request before loading anything, so a typo fails at once.
    if args.head is not None:
        layer, head = _pair(args.head, "head")
        if not head.isdigit():
            raise UserError(f"--head {args.head!r}: the head must be a number")
        what = f"head {args.head}"
    elif args.mlp is not None:
        layer, units = _pair(args.mlp, "mlp")
        try:
            indices = [int(u) for u in units.split(",")]
        except ValueError:
            raise UserError(f"--mlp {args.mlp!r}: units must be numbers, e.g. 0:1,5,9") from None
        what = f"mlp {args.mlp}"
    else:
        layer, what = args.layer, f"layer {args.layer}"
    layout = layout_of(_load_model(args.model_dir))
    mask = load_mask(args.mask, layout)[0]
    if args.head is not None:
        edited = set_head(mask, layout, layer, int(head), args.keep)
    elif args.mlp is not None:
        edited = set_mlp_units(mask, layout, layer, indices, args.keep)
    else:
        edited = set_layer(mask, layout, layer, args.keep)
    verb = "keep" if args.keep else "drop"
    _save(args.output, edited, f"{verb} {what}", [args.mask])


def cmd_generate(args: argparse.Namespace) -> None:
    import contextlib

    import torch
    from transformers import AutoTokenizer

    from bigram_subnetworks.masks.toolkit import generate, load_mask, masked
    from bigram_subnetworks.models.layout import layout_of

    model = _load_model(args.model_dir)
    folder = args.model_dir / "final" if (args.model_dir / "final").is_dir() else args.model_dir
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = torch.tensor(tokenizer(args.prompt)["input_ids"])
    if ids.numel() == 0:
        raise UserError("--prompt: encodes to no tokens; give some text")
    context = (
        masked(model, load_mask(args.mask, layout_of(model))[0])
        if args.mask
        else contextlib.nullcontext()
    )
    # The model's embedding may have more rows than the tokenizer has tokens (Pythia pads 50,277
    # to 50,304): only real token ids are generated.
    vocab_size = max(tokenizer.get_vocab().values()) + 1
    with context:
        new = generate(model, ids, args.max_new_tokens, args.temperature, args.seed, vocab_size)
    print(args.prompt + tokenizer.decode(new.tolist()))


MASK_HELP = "A mask file (.safetensors) of bsn train-mask or bsn mask."
MODEL_DIR_HELP = "The masked model: results/<run>/models/<name>/ or a save_pretrained folder."
OUTPUT_HELP = "Where the new mask goes (.safetensors)."


def add_mask_commands(sub: argparse._SubParsersAction) -> None:
    """Register `bsn mask <command>`."""
    parser = sub.add_parser("mask", help="Inspect, combine, edit and use mask files.")
    parser.set_defaults(needs_config=False)
    commands = parser.add_subparsers(dest="mask_command", required=True, metavar="COMMAND")

    p = commands.add_parser("info", help="Kept counts and metadata (per block with --blocks).")
    p.add_argument("mask", type=Path, help=MASK_HELP)
    p.add_argument("--blocks", type=Path, metavar="MODEL_DIR", help="Also count per block.")
    p.set_defaults(func=cmd_info)

    p = commands.add_parser("card", help="A mask's card as Markdown (stdout or --output).")
    p.add_argument("mask", type=Path, help=MASK_HELP)
    p.add_argument(
        "--metrics",
        type=Path,
        metavar="PARQUET",
        help="The evaluate stage's results/<run>/metrics/masks.parquet, to fill in r.",
    )
    p.add_argument("--output", type=Path, help="Write the card here (e.g. README.md).")
    p.set_defaults(func=cmd_card)

    p = commands.add_parser(
        "export", help="A pruned save_pretrained model folder (masked weights 0) with a card."
    )
    p.add_argument("mask", type=Path, help=MASK_HELP)
    p.add_argument("--model-dir", type=Path, required=True, help=MODEL_DIR_HELP)
    p.add_argument("--output", type=Path, required=True, help="A new (or empty) folder.")
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default="float32",
        help="Weights dtype of the export (float32: the dtype bsn masks in).",
    )
    p.set_defaults(func=cmd_export)

    p = commands.add_parser("pull", help="Fetch a mask from a Hugging Face Hub repo.")
    p.add_argument("repo_id", metavar="REPO_ID", help="The Hub repo, e.g. user/pythia-bigram.")
    p.add_argument("--revision", help="Branch, tag or commit (default: main).")
    p.add_argument("--filename", default="mask.safetensors", help="The mask file in the repo.")
    p.add_argument(
        "--repo-type", choices=["model", "dataset"], default="model", help="The Hub repo's type."
    )
    p.add_argument("--output", type=Path, required=True, help="Where the mask file goes.")
    p.set_defaults(func=cmd_pull)

    p = commands.add_parser(
        "import", help="Convert one of the paper authors' released masks (a pickle) to a mask."
    )
    p.add_argument(
        "file",
        metavar="FILE",
        help="subnetwork_dict_lambda<λ>.pickle: a local file or "
        "hf://<owner>/<repo>[@<revision>][/<file>] (e.g. "
        "hf://tylerachang/bigram-subnetworks-pythia-160m; the file then defaults to --lambda's).",
    )
    p.add_argument("--model-dir", "--model", type=Path, required=True, help=MODEL_DIR_HELP)
    p.add_argument(
        "--lambda",
        dest="lam",
        help="The file's λ label (default: from its name, subnetwork_dict_lambda<λ>.pickle).",
    )
    p.add_argument("--output", "--out", type=Path, required=True, help=OUTPUT_HELP)
    p.set_defaults(func=cmd_import)

    p = commands.add_parser("complement", help="Keep exactly what the mask drops.")
    p.add_argument("mask", type=Path, help=MASK_HELP)
    p.add_argument("--output", type=Path, required=True, help=OUTPUT_HELP)
    p.set_defaults(func=cmd_complement)

    for name in ("union", "intersect"):
        p = commands.add_parser(name, help=f"The {name} of two masks of one model.")
        p.add_argument("a", type=Path, help=MASK_HELP)
        p.add_argument("b", type=Path, help="Another mask of the same model.")
        p.add_argument("--output", type=Path, required=True, help=OUTPUT_HELP)
        p.set_defaults(func=cmd_combine)

    p = commands.add_parser("random", help="A random mask with the same counts (seeded).")
    p.add_argument("mask", type=Path, help=MASK_HELP)
    p.add_argument("--model-dir", type=Path, required=True, help=MODEL_DIR_HELP)
    p.add_argument("--seed", type=int, default=0, help="Seed of the random draw.")
    p.add_argument(
        "--within",
        choices=["blocks", "matrix"],
        default="blocks",
        help="Keep the count of every Q/K/V/O/MLP block, or of every weight matrix.",
    )
    p.add_argument("--output", type=Path, required=True, help=OUTPUT_HELP)
    p.set_defaults(func=cmd_random)

    p = commands.add_parser("edit", help="Keep or drop one head, some MLP units or a layer.")
    p.add_argument("mask", type=Path, help=MASK_HELP)
    p.add_argument("--model-dir", type=Path, required=True, help=MODEL_DIR_HELP)
    action = p.add_mutually_exclusive_group(required=True)
    action.add_argument(
        "--keep", action="store_true", dest="keep", help="Keep the part (every weight)."
    )
    action.add_argument(
        "--drop", action="store_false", dest="keep", help="Drop the part (every weight)."
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--head", metavar="LAYER:HEAD", help="One attention head, e.g. 0:3.")
    what.add_argument(
        "--mlp", metavar="LAYER:UNIT[,UNIT...]", help="MLP hidden units of a layer, e.g. 0:1,5,9."
    )
    what.add_argument("--layer", type=int, help="A whole layer (attention and MLP).")
    p.add_argument("--output", type=Path, required=True, help=OUTPUT_HELP)
    p.set_defaults(func=cmd_edit)

    p = commands.add_parser("generate", help="Continue a prompt with a (masked) model.")
    p.add_argument("--model-dir", type=Path, required=True, help=MODEL_DIR_HELP)
    p.add_argument("--mask", type=Path, help="Apply this mask (default: the full model).")
    p.add_argument("--prompt", required=True, help="The text to continue.")
    p.add_argument("--max-new-tokens", type=int, default=40, help="Tokens to generate.")
    p.add_argument(
        "--temperature", type=float, default=0.0, help="Sampling temperature; 0: greedy."
    )
    p.add_argument("--seed", type=int, default=0, help="Seed of the sampling.")
    p.set_defaults(func=cmd_generate)
