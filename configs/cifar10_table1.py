"""Table 1a of the VID paper: CIFAR-10, WRN-40-2 teacher -> WRN-16-1 student, M training images
per class (M = 5000/1000/500/100); rows student, kd, fitnet, at, nst, vid_i, kd+at, kd+vid_i,
and the optional row authors (the authors' own recipe: KD with T = 2 and 0.1 * VID-I with
their linear mean network and variance; `--config.rows=authors` or list it with the others).

A grid: every cell is the run of configs/cifar10_wrn16_1.py:ROW with
data.images_per_class = M, in workdir/ROW/M=<M>/seed<k> (the seed draws the subset too). The
argument after the colon picks the scale: small (default; max(10, round(61,440 / 10 M))
epochs, cosine: 61 epochs at M = 100, 12 at M = 500, 10 at M = 1000 and 5000) or full (WRN's
recipe, 200 epochs). Results: results/cifar10_table1_<scale>.{json,md}. The data are the
JPEG image folder (../shared/data/cifar10-jpeg) and the teacher the committed JPEG one, as
the committed results were made; the paper's protocol on original pixels is
configs/cifar10_table1_protocol.py.

What this project's 2-core CPU affords (the table's notes give the hours a cell and a column
take): at small scale every column in under a day (M=5000, the longest, about 15 h for the
default 8 rows x 2 seeds); at full scale only M=100 (M=500 already takes about 30 h).

  python launch.py --config=configs/cifar10_table1.py --list
  python launch.py --config=configs/cifar10_table1.py --config.columns=M=100 --config.seeds=0,1
  python launch.py --config=configs/cifar10_table1.py:full --config.rows=student,vid_i
  # an ablation in its own workdir and results file (a term's field reaches the rows with it):
  python launch.py --config=configs/cifar10_table1.py --config.rows=vid_i \\
      --config.columns=M=100 --config.seeds=0 --config.terms.vid_i.weight=10 \\
      --workdir=workdirs/ablations/vid_w10 --config.results=results/ablations/vid_w10.json
"""
import ml_collections

from configs import common

M = (5000, 1000, 500, 100)


def get_config(scale: str = "small") -> ml_collections.ConfigDict:
    return common.table1_grid(
        "cifar10_table1",
        "Table 1a: CIFAR-10, WRN-40-2 teacher -> WRN-16-1 student, M training images per class",
        {f"M={m}": dict(data=dict(images_per_class=m)) for m in M}, scale,
        train_images={f"M={m}": 10 * m for m in M},
        notes="Each seed draws its own M-per-class subset (config.data.subset_seed = seed).")
