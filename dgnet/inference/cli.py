"""`dgnet extract`, `rank`, `generate`, `export`, `import-published`, `evaluate`: trained models at work
on the command line (usage: README.md). `--model` is a model file or a `models:/NAME@ALIAS` URI of the
MLflow registry (the full install).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from dgnet.config import DEVICES
from dgnet.io import check_writable, output_errors


def _set_threads(args: argparse.Namespace) -> None:
    """--threads, else OMP_NUM_THREADS when set, else the idle cores (`idle_cores`)."""
    import torch

    from dgnet.errors import ConfigError
    from dgnet.inference.extract import idle_cores

    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads {args.threads}: must be >= 1")
    if args.threads is not None or not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(args.threads or idle_cores())


def _extractor(args: argparse.Namespace):
    from dgnet.inference.extract import FeatureExtractor

    _set_threads(args)
    return FeatureExtractor(args.model, device=args.device, batch_size=args.batch_size,
                            num_workers=args.num_workers)


def _cmd_extract(args: argparse.Namespace) -> int:
    from dgnet.inference.extract import extract_to_file

    check_writable(args.out, "extract")
    with output_errors("extract", args.out):
        done = extract_to_file(_extractor(args), args.out, images=args.images, manifest=args.manifest)
    print(f"extract: {done['count']} images -> {done['features']} ({done['count']} x {done['dim']}), names "
          f"{done['names']}; {done['images_per_s']:.1f} images/s")
    return 0


def _cmd_rank(args: argparse.Namespace) -> int:
    from dgnet.inference.search import rank_folders

    check_writable(args.out / "ranking.csv", "rank")
    with output_errors("rank", args.out):
        result = rank_folders(_extractor(args), args.query, args.gallery, args.out, top_k=args.top_k,
                              query_alpha=args.query_alpha, rerank=args.rerank, k1=args.k1, k2=args.k2,
                              lambda_value=args.rerank_lambda)
    print(f"rank: {result.num_queries} queries x {result.num_gallery} gallery images -> {result.csv}, "
          f"{result.page}, {result.picture}")
    if m := result.metrics:
        print(f"ids from the {result.id_format} file names: rank-1 {100 * m['rank1']:.1f}, "
              f"mAP {100 * m['mAP']:.1f} (finite-sum AP: {100 * m['mAP_finite']:.1f}; "
              f"{int(m['num_valid_queries'])} queries with a match)")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from dgnet.inference.extract import load_trained_model
    from dgnet.inference.generate import generate_dataset
    from dgnet.training.runtime import select_device

    check_writable(args.out, "generate")  # the new dataset is made beside --out, then renamed onto it
    _set_threads(args)
    model, info = load_trained_model(args.model, select_device(args.device), kind="dgnet")
    with output_errors("generate", args.out):
        provenance = generate_dataset(model, (info.config.image_height, info.config.image_width), args.images,
                                      args.out, fmt=args.format, pairs=args.pairs, seed=args.seed,
                                      test_fraction=args.test_fraction, batch_size=args.batch_size)
    counts = provenance.groupby("split").size().to_dict()
    print(f"generate: {len(provenance)} images, {provenance['person_id'].nunique()} ids, in {args.out} ("
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + "); provenance.csv names the donors")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from dgnet.inference.extract import load_trained_model
    from dgnet.inference.onnx_export import export_onnx

    check_writable(args.out, "export")
    model, info = load_trained_model(args.model, "cpu")
    with output_errors("export", args.out):
        report = export_onnx(model, info, args.out, opset=args.opset, source=str(args.model))
    print(json.dumps(report, indent=2))
    return 0


def _cmd_import_published(args: argparse.Namespace) -> int:
    from dgnet.models.published import import_published

    with output_errors("import-published", args.out):
        written = import_published(args.out, args.gen, args.id, args.dis, args.teacher, args.teacher_stride)
    for kind, path in written.items():
        print(f"import-published: {kind} model -> {path}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from dgnet.data.validated import validate_dataset
    from dgnet.evaluation.benchmark import benchmark_model, write_benchmark
    from dgnet.training.runtime import select_device

    check_writable(args.out / "benchmark.md", "evaluate")
    frame = validate_dataset(args.data, args.format, report=args.out / "validation.json")
    device = select_device(args.device)
    names, results, references = [], [], {}
    limits = {k: v for k, v in (("num_swaps", args.swaps), ("num_recon", args.recon)) if v is not None}
    for path in args.model:
        name = path.parent.name or path.stem
        names.append(name if name not in names else f"{name}_{len(names)}")  # two seed0/model.pt
        results.append(benchmark_model(path, frame, name=names[-1], device=device, rerank=args.rerank,
                                       batch_size=args.batch_size, data_root=args.data, references=references,
                                       inception_weights=args.inception_weights, **limits))
    counts = frame["split"].value_counts()
    heading = (f"# Benchmark on {args.data} ({frame.attrs['format']}: {counts.get('query', 0)} queries, "
               f"{counts.get('gallery', 0)} gallery images)\n\n"
               "Settings: query alpha = weight of the query's fine-grained half (0.5 as published); "
               "mAP is the Market-1501 (trapezoid) convention, mAP_finite the finite sum torchreid and "
               "fast-reid report; both divided by the queries with a match.")
    with output_errors("evaluate", args.out):
        report = write_benchmark(results, args.out, heading)
    print(report.read_text())
    print(f"evaluate: {report}, {args.out / 'metrics.json'}, CMC curves in {args.out / 'cmc'}")
    return 0


def add_inference_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register this module's commands on the `dgnet` command's sub-parsers."""
    model = argparse.ArgumentParser(add_help=False)  # the options commands share, as their `parents`
    model.add_argument("--model", required=True, metavar="M",
                       help="model file (model.pt of `dgnet train` / `train-teacher`) or models:/NAME@ALIAS")
    device = argparse.ArgumentParser(add_help=False)
    device.add_argument("--device", choices=DEVICES, default="auto",
                        help="auto (default: CUDA when present, else the CPU), cpu or cuda")
    device.add_argument("--batch-size", type=int, default=64, help="images per forward (default 64)")
    runs = argparse.ArgumentParser(add_help=False, parents=[model, device])  # run the model on images
    runs.add_argument("--threads", type=int, metavar="N", help="CPU threads (default: OMP_NUM_THREADS, "
                      "else the cores the load average shows idle)")
    extract = subparsers.add_parser(
        "extract", help="features of your own images (N x D .npy, names beside it in .csv)", parents=[runs],
        description="Embed images with a trained model: the evaluator's test-time feature (per-head "
                    "L2-normalised, flip-averaged). Writes OUT (.npy, float32 N x D) and OUT with .csv "
                    "(one row per feature: name and path, or the manifest's columns).")  # fmt: skip
    source = extract.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, metavar="DIR", help="folder of images (sub-folders too)")
    source.add_argument("--manifest", type=Path, metavar="CSV", help="CSV with a `path` column (relative "
                        "paths: against its folder), e.g. data/manifest.csv")
    extract.add_argument("--out", type=Path, required=True, metavar="FILE", help="features file, .npy")
    extract.add_argument("--num-workers", type=int, default=0, help="image loading processes")
    extract.set_defaults(func=_cmd_extract)

    rank = subparsers.add_parser(
        "rank", help="ranked search of a gallery folder for each query image (CSV, picture, HTML)",
        parents=[runs],
        description="Rank the gallery's images for each query: OUT/ranking.csv (top-k per query), "
                    "OUT/ranking.png, OUT/index.html; with ids in the file names (Market/Duke/MSMT "
                    "patterns) also hit/miss/junk marks and OUT/metrics.json.")  # fmt: skip
    rank.add_argument("--query", type=Path, required=True, metavar="DIR", help="folder of query images")
    rank.add_argument("--gallery", type=Path, required=True, metavar="DIR", help="folder of gallery images")
    rank.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    rank.add_argument("--top-k", type=int, default=10, help="results listed per query (default 10)")
    rank.add_argument("--query-alpha", type=float, default=0.5,
                      help="DG-Net: weight of the query's fine-grained half (default 0.5, as published)")
    rank.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking (Zhong et al. 2017)")
    rank.add_argument("--k1", type=int, default=20, help="re-ranking k1 (default 20)")
    rank.add_argument("--k2", type=int, default=6, help="re-ranking k2 (default 6)")
    rank.add_argument("--rerank-lambda", type=float, default=0.3, help="re-ranking lambda (default 0.3)")
    rank.set_defaults(func=_cmd_rank, num_workers=0)

    generate = subparsers.add_parser(
        "generate", help="a generated dataset in Market-1501 layout (ids of the appearance donors)",
        parents=[runs],
        description="Decode appearance/structure pairs of the donor images into a new dataset: "
                    "bounding_box_train/, query/, bounding_box_test/ and provenance.csv (both donors "
                    "of every image). OUT is replaced atomically.")  # fmt: skip
    generate.add_argument("--images", type=Path, required=True, metavar="DIR",
                          help="donor images named in the --format pattern, e.g. DATA/bounding_box_train")
    generate.add_argument("--out", type=Path, required=True, metavar="DIR", help="dataset folder to write")
    generate.add_argument("--pairs", type=int, default=None, metavar="N",
                          help="images to generate (default: as many as donor images)")
    generate.add_argument("--format", choices=("market1501", "dukemtmc"), default="market1501",
                          help="file-name pattern of the donors, kept for the output (default market1501)")
    generate.add_argument("--test-fraction", type=float, default=0.5,
                          help="share of the ids that go to query/gallery instead of train (default 0.5)")
    generate.add_argument("--seed", type=int, default=0, help="seed of the id split and the pairs")
    generate.set_defaults(func=_cmd_generate)

    export = subparsers.add_parser(
        "export", help="export the feature extractor (ONNX, dynamic batch), checked against PyTorch",
        parents=[model],
        description="Write the test-time feature graph (images N x 3 x H x W -> features N x D) and "
                    "check it with onnxruntime; needs `pip install -e '.[onnx]'`.")  # fmt: skip
    export.add_argument("--format", choices=("onnx",), required=True, help="onnx")
    export.add_argument("--out", type=Path, required=True, metavar="FILE", help="output file: dgnet.onnx")
    export.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    export.set_defaults(func=_cmd_export)

    imported = subparsers.add_parser(
        "import-published", help="the authors' released DG-Net (and teacher) checkpoints as model files",
        description="Read the released Market-1501 checkpoints in their own format and write OUT/model.pt "
                    "(DG-Net, paper profile) and with --teacher OUT/teacher/model.pt: model files every "
                    "dgnet command loads. Every published key is mapped and checked "
                    "(docs/published_model.md).")
    imported.add_argument("--gen", type=Path, required=True, metavar="GEN.pt", help="gen_00100000.pt")
    imported.add_argument("--id", type=Path, required=True, metavar="ID.pt", help="id_00100000.pt")
    imported.add_argument("--dis", type=Path, metavar="DIS.pt", help="dis_00100000.pt (optional: only "
                          "fine-tuning uses D; without it D is initialised)")
    imported.add_argument("--teacher", type=Path, metavar="net_last.pth", help="the teacher's state dict")
    imported.add_argument("--teacher-stride", type=int, choices=(1, 2),
                          help="the teacher's last stride when no opts.yaml lies beside it")
    imported.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    imported.set_defaults(func=_cmd_import_published)

    evaluate = subparsers.add_parser(
        "evaluate", help="benchmark model files on a dataset: rank-1/5/10, mAP, mINP, re-ranking",
        parents=[device],
        description="Validate the dataset (the pipeline's rules), then rank its query split against its "
                    "gallery with each model: DG-Net at query alpha 0 / 0.5 / 1 and fine-grained only, a "
                    "teacher once; with --rerank also k-reciprocal re-ranking. Prints the table and writes "
                    "OUT/benchmark.md, OUT/metrics.json, OUT/cmc/*.csv and the pictures.")
    evaluate.add_argument("--model", type=Path, action="append", required=True, metavar="M",
                          help="a model file; repeat for several")
    evaluate.add_argument("--data", type=Path, required=True, metavar="DIR", help="dataset root")
    evaluate.add_argument("--format", default=None, help="market1501, dukemtmc or msmt17 (default: detected)")
    evaluate.add_argument("--rerank", action="store_true", help="also k-reciprocal re-ranking (alpha 0.5)")
    evaluate.add_argument("--inception-weights", default=None, metavar="FILE",
                          help="Inception weights for FID (never downloaded; FID is skipped without them)")
    evaluate.add_argument("--swaps", type=int, metavar="N",
                          help="test pairs behind the swap figures (default: the report's 512; the paper "
                               "profile decodes ~6 a second on 2 CPU cores)")
    evaluate.add_argument("--recon", type=int, metavar="N",
                          help="test images behind the reconstruction L1 (default: the report's 2048)")
    evaluate.add_argument("--out", type=Path, default=Path("evaluation"), metavar="DIR",
                          help="output folder (default ./evaluation)")
    evaluate.set_defaults(func=_cmd_evaluate)
