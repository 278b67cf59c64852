"""plot.py: learning curves of one or more training runs, drawn from the metrics CSVs that
train.py writes, and a table comparing the runs.

    python plot.py checkpoints/awd.csv                          # -> curves.png
    python plot.py checkpoints/awd.csv checkpoints/lstm.csv -o compare.png --labels awd,lstm

Panels: validation (solid) and training (dashed) perplexity against epochs, validation
perplexity against wall-clock minutes, and the learning rate; a star marks the NT-ASGD
switch and a dotted line an epoch in which the run was resumed. Columns are read by name,
so a CSV that gains columns still plots. The table's test perplexity comes from the run's
summary (<stem>.json beside the CSV) when there is one. Needs matplotlib (an optional
dependency: pip install -r requirements-dev.txt).
"""

import io
import json
import os
import statistics
import sys

from settings import Parser, SettingsError, check_output_file
from runfiles import RunFiles
from runlog import MetricsError, read_metrics
from util import WriteFailed, write_atomically

REQUIRED = ("epoch", "seconds", "train_ppl", "valid_ppl", "lr", "event")


class RunError(ValueError):
    """A metrics file that cannot be plotted; the message names it."""


IMAGE_TYPES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")  # what --out may write


def run_label(path):
    """checkpoints/awd.csv -> awd; results/cpu30/metrics.csv -> cpu30"""
    stem = os.path.splitext(os.path.basename(path))[0]
    return os.path.basename(os.path.dirname(os.path.abspath(path))) if stem == "metrics" else stem


def read_run(path, label=None):
    """One run's columns (lists, one entry per epoch) and its summary, from its CSV."""
    try:
        lines, rows = read_metrics(path, with_lines=True)
    except IsADirectoryError:
        raise RunError(f"{path} is a directory; give a metrics CSV that train.py wrote "
                       "(<save stem>.csv)") from None
    except OSError as e:
        raise RunError(f"cannot read {path}: {e.strerror}") from None
    except MetricsError as e:
        raise RunError(str(e)) from None
    if not rows:
        raise RunError(f"{path} has no epochs yet (a metrics CSV written by train.py "
                       "gets one row per finished epoch)")
    missing = [name for name in REQUIRED if name not in rows[0]]
    if missing:
        raise RunError(f"{path} is not a metrics CSV of train.py: it lacks the column(s) "
                       f"{', '.join(missing)}")
    run = {name: [] for name in ("epoch", "seconds", "train_ppl", "valid_ppl", "lr",
                                 "tokens_per_s")}
    for line, row in zip(lines, rows):
        try:
            for name in ("epoch", "seconds", "train_ppl", "valid_ppl", "lr"):
                run[name].append(float(row[name]))
            if row.get("tokens_per_s"):  # (older CSVs lack it)
                run["tokens_per_s"].append(float(row["tokens_per_s"]))
        except ValueError as e:
            raise RunError(f"{path}, line {line}: a value is not a number ({e})") from None
    # Wall-clock minutes; CSVs from before the elapsed_s column have training seconds only.
    run["wall_clock"] = all(r.get("elapsed_s") for r in rows)
    if run["wall_clock"]:
        run["minutes"] = [float(r["elapsed_s"]) / 60 for r in rows]
    else:
        total, run["minutes"] = 0.0, []
        for seconds in run["seconds"]:
            total += seconds
            run["minutes"].append(total / 60)
    # (CSVs from before the "switched" column say it in the event's words only)
    run["switch"] = [i for i, r in enumerate(rows) if r.get("switched") == "yes"
                     or ("switched" not in r and "switch to ASGD" in r["event"])]
    run["resumed"] = [i for i, r in enumerate(rows) if r.get("resumed")]
    run["label"] = label or run_label(path)
    summary_file = RunFiles(path).summary
    run["summary"] = {}
    if os.path.exists(summary_file):
        try:
            with open(summary_file, encoding="utf-8") as f:
                run["summary"] = json.load(f)
        except (OSError, ValueError) as e:
            raise RunError(f"cannot read the run summary {summary_file} ({e}); move it "
                           "away to plot without it") from None
    return run


def table(runs):
    """The comparison table, as lines of text."""
    lines = [f"{'run':<24} {'epochs':>6} {'best valid':>10} {'test':>8} {'minutes':>8} "
             f"{'tokens/s':>9}"]
    for run in runs:
        test, speed = run["summary"].get("test_ppl"), run["tokens_per_s"]
        lines.append(f"{run['label']:<24} {len(run['epoch']):>6} {min(run['valid_ppl']):>10.2f} "
                     f"{'—' if test is None else f'{test:.2f}':>8} "
                     f"{run['minutes'][-1]:>8.1f} "
                     f"{'—' if not speed else f'{statistics.median(speed):,.0f}':>9}")
    return lines


def draw(runs, out_path):
    try:
        import matplotlib
    except ImportError:
        raise RunError("plot.py needs matplotlib, which is not installed: "
                       "pip install -r requirements-dev.txt (or pip install matplotlib)") from None
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (by_epoch, by_minute, lr) = plt.subplots(1, 3, figsize=(15, 4.6))
    labelled = set()  # the switch and resume markers get one legend entry each

    def once(name):
        if name in labelled:
            return None
        labelled.add(name)
        return name

    for n, run in enumerate(runs):
        style = dict(color=f"C{n}", marker="o" if len(run["epoch"]) <= 30 else None,
                     markersize=3)
        by_epoch.plot(run["epoch"], run["valid_ppl"], label=f"{run['label']} valid", **style)
        by_epoch.plot(run["epoch"], run["train_ppl"], linestyle="--", alpha=0.6,
                      label=f"{run['label']} train", **style)
        by_minute.plot(run["minutes"], run["valid_ppl"], label=run["label"] + (
            "" if run["wall_clock"] else " (training time only)"), **style)
        lr.plot(run["epoch"], run["lr"], label=run["label"], **style)
        for axis, x in ((by_epoch, run["epoch"]), (by_minute, run["minutes"])):
            for i in run["switch"]:
                axis.plot(x[i], run["valid_ppl"][i], "*", color=style["color"], markersize=13,
                          markeredgecolor="black",
                          label=once("NT-ASGD switch") if axis is by_epoch else None)
            for i in run["resumed"]:
                axis.axvline(x[i], color=style["color"], linestyle=":",
                             label=once("resumed") if axis is by_epoch else None)
    spread = max(max(r["train_ppl"] + r["valid_ppl"]) for r in runs) / \
        min(min(r["train_ppl"] + r["valid_ppl"]) for r in runs)
    for axis in (by_epoch, by_minute):
        if spread > 3:  # curves that fall by orders of magnitude read best on a log scale
            axis.set_yscale("log")
        axis.set_ylabel("perplexity")
        axis.grid(True, which="both", alpha=0.3)
    lrs = [v for r in runs for v in r["lr"]]
    if min(lrs) > 0 and max(lrs) / min(lrs) > 10:
        lr.set_yscale("log")
    by_epoch.set(xlabel="epoch", title="perplexity by epoch")
    by_minute.set(xlabel="minutes (training and validation)",
                  title="validation perplexity by wall-clock time")
    lr.set(xlabel="epoch", ylabel="learning rate", title="learning rate")
    for axis in (by_epoch, lr):
        axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    lr.grid(True, alpha=0.3)
    by_epoch.legend(fontsize=8)
    by_minute.legend(fontsize=8)
    fig.tight_layout()
    image = io.BytesIO()  # (written whole or not at all: util.write_atomically)
    fig.savefig(image, dpi=110, format=os.path.splitext(out_path)[1][1:].lower())
    plt.close(fig)
    write_atomically(out_path, image.getvalue())


def main(argv=None):
    p = Parser(description="Learning curves and a comparison table of training runs.")
    p.add_argument("csv", nargs="+", help="metrics CSVs written by train.py (<save stem>.csv)")
    p.add_argument("-o", "--out", default="curves.png", help="PNG to write (default curves.png)")
    p.add_argument("--labels", default=None,
                   help="comma-separated names of the runs (default: each CSV's name)")
    args = p.parse_args(argv)
    labels = args.labels.split(",") if args.labels else [None] * len(args.csv)
    if len(labels) != len(args.csv):
        p.error(f"--labels names {len(labels)} runs but {len(args.csv)} CSVs were given")
    if os.path.splitext(args.out)[1].lower() not in IMAGE_TYPES:
        p.error(f"--out {args.out}: give an image file name ending in "
                f"{', '.join(IMAGE_TYPES)}")
    try:
        check_output_file(args.out, "--out")
        runs = [read_run(path, label) for path, label in zip(args.csv, labels)]
        print("\n".join(table(runs)))
        draw(runs, args.out)
    except (RunError, SettingsError, WriteFailed) as e:
        sys.exit(f"error: {e}")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
