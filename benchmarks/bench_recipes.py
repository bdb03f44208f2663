"""Backbone x EMA x ensemble on the demo data: what each lever is worth, and what it costs.

    python benchmarks/bench_recipes.py [--backbones densenet121,efficientnet_b0] [--seeds 3]
        [--ema_decay 0.99] [--name recipes] [--epochs 8] [any train.py option, shared by all]

Needs `make demo`'s data (data/demo, cached at 96 px). For each backbone, two configurations
("NAME" and "NAME-ema" with --ema_decay) go through one `ablate.py --seeds N` run (equal data,
epochs and budget; every run keeps its 3 best epochs, --keep_top_k 3), then `evaluate.py` scores
two ensembles of each configuration: its N seeds' best.pth together, and the first seed's 3 best
epochs (top_k/). Everything is resumable: re-running the same command skips what is done.

Prints, and writes to models/ablation-<name>/recipes.md, one row per configuration: the test
mean AUC over all evaluable observations (the mean over seeds, its SD, and B - the first
configuration with ablate.py's two-level interval over patients and seeds), the seed ensemble's
and the epoch ensemble's mean AUC with their own patient-bootstrap intervals, the training time
of one run (the median over seeds of the sum of its epochs' seconds in metrics.csv: the median,
because a seed that shared the CPU with other work would move a mean) and the parameters.

The default --ema_decay 0.99 averages over about the last 100 optimizer steps: the demo's runs
take 68 steps per epoch, 544 in all, too few for the usual 0.999 (a window of 1000 steps).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from config import Config
from cxr.evaluation.ensemble import checkpoint_paths, ensemble_folder  # noqa: E402
from cxr.reporting.tables import interval_text, markdown_table, number_text, text_table \
    # noqa: E402
from model_architecture import BACKBONES, CheXpertNet  # noqa: E402

DEMO = ["--data_root", "data/demo/CheXpert-v1.0-small", "--data_dir", "data/demo",
        "--pretrained", "false", "--image_size", "96", "--batch_size", "16",
        "--accumulation_steps", "1", "--epochs", "8", "--frozen_epochs", "1",
        "--lr_head", "1e-3", "--lr_backbone", "1e-3", "--warmup_steps", "50",
        "--precision", "fp32", "--keep_top_k", "3"]
OWN = {"backbones": "densenet121,efficientnet_b0", "seeds": "3", "ema_decay": "0.99",
       "name": "recipes"}


def own_options(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """This script's --backbones, --seeds, --ema_decay, --name; the rest goes to ablate.py."""
    values, rest, i = dict(OWN), [], 0
    while i < len(argv):
        key = argv[i].removeprefix("--")
        if key in OWN and i + 1 < len(argv):
            values[key] = argv[i + 1]
            i += 2
        else:
            rest.append(argv[i])
            i += 1
    return values, rest


def run(command: list[str]) -> None:
    print(f"bench_recipes: $ {shlex.join(command)}", flush=True)
    subprocess.run(command, cwd=ROOT, check=True)


def configurations(backbones: list[str], ema_decay: str) -> list[str]:
    specs = []
    for backbone in backbones:
        specs += [f"{backbone}: --backbone {backbone}",
                  f"{backbone}-ema: --backbone {backbone} --ema_decay {ema_decay}"]
    return specs


def training_seconds(run_dirs: list[str]) -> float:
    """The median over runs of the sum of their epochs' seconds (metrics.csv)."""
    return float(pd.Series([pd.read_csv(ROOT / d / "metrics.csv")["epoch_seconds"].sum()
                            for d in run_dirs]).median())


def ensemble_mean(folder: Path) -> tuple[float | None, float | None, float | None]:
    """(mean AUC, interval low, high) of an ensemble's eval_test.json."""
    mean = json.loads((folder / "eval_test.json").read_text())["image"]["means"]["all"]
    return mean["auc"], mean["ci"]["low"], mean["ci"]["high"]


def evaluate_ensembles(row: pd.Series, extra: list[str], models_dir: Path) -> dict:
    """Score the seed ensemble and the first seed's top_k/ ensemble of one configuration."""
    runs = row["runs"].split(";")
    seed_spec = ",".join(str(Path(r) / "best.pth") for r in runs)
    found = {}
    for kind, spec in (("seeds", seed_spec), ("epochs", str(Path(runs[0]) / "top_k"))):
        folder = ensemble_folder(spec, checkpoint_paths(spec),
                                 Config(models_dir=str(models_dir)))
        if not (folder / "eval_test.json").is_file():
            run([sys.executable, "evaluate.py", "--checkpoint", spec, *extra])
        found[kind] = ensemble_mean(folder)
    return found


def main() -> None:
    own, rest = own_options(sys.argv[1:])
    backbones = [b.strip() for b in own["backbones"].split(",") if b.strip()]
    unknown = sorted(set(backbones) - set(BACKBONES))
    if unknown:
        sys.exit(f"unknown backbone(s) {', '.join(unknown)}; choose from {', '.join(BACKBONES)}")
    shared = [*DEMO, *rest]
    run([sys.executable, "ablate.py", *shared, "--seeds", own["seeds"], "--ablation_name",
         own["name"], "--ablation", *configurations(backbones, own["ema_decay"])])
    out = ROOT / "models" / f"ablation-{own['name']}"
    table = pd.read_csv(out / "ablation.csv")
    evaluate_options = [shared[i + j] for i in range(0, len(shared), 2)
                        if shared[i] in ("--data_dir", "--precision") for j in (0, 1)]
    header = ["Configuration", "Mean AUC over seeds (SD)", "- first [2-level CI]",
              "Seed ensemble [CI]", "Epoch ensemble [CI]", "Train s / run", "Parameters"]
    rows = []
    for _, row in table.iterrows():
        ensembles = evaluate_ensembles(row, evaluate_options, ROOT / "models")
        backbone = row["configuration"].removesuffix("-ema")
        parameters = sum(p.numel() for p in CheXpertNet(backbone=backbone).parameters())
        diff = "" if row["baseline"] else (
            f"{number_text(row['diff_mean_auc'], signed=True)} "
            f"{interval_text(row['diff_mean_auc_ci_low'], row['diff_mean_auc_ci_high'], True)}")
        rows.append([row["configuration"],
                     f"{number_text(row['mean_auc'])} ({row['mean_auc_sd']:.4f})", diff,
                     *(f"{number_text(auc)} {interval_text(low, high)}"
                       for auc, low, high in (ensembles["seeds"], ensembles["epochs"])),
                     f"{training_seconds(row['runs'].split(';')):.0f}",
                     f"{parameters / 1e6:.1f} M"])
    print("\n" + text_table(header, rows))
    document = "\n".join([
        f"# Backbone x EMA x ensemble ({own['name']})", "",
        f"`python benchmarks/bench_recipes.py {shlex.join(sys.argv[1:])}`", "",
        f"Every configuration trained with {own['seeds']} seeds on the same data and epochs "
        f"(`{shlex.join(shared)}`); test split; mean AUC over the evaluable observations.", "",
        markdown_table(header, rows), ""])
    (out / "recipes.md").write_text(document)
    print(f"\nbench_recipes: wrote {out / 'recipes.md'}")


if __name__ == "__main__":
    main()
