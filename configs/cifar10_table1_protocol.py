"""Table 1a of the VID paper under its protocol, on CIFAR-10's original pixels.

"20% of the dataset provided for training the student network was used for validation, i.e.,
choosing the best set of hyper-parameters for each method. Every result was computed as the
mean of accuracies over 3 runs." (Ahn et al., CVPR 2019, Sec. 4.1.) The grid of
configs/cifar10_table1.py (WRN-40-2 -> WRN-16-1, M = 5000/1000/500/100 images per class), in
two phases (vid_jax/runner.py):

- search: for every row and column, each candidate of the row's search space
  (`config.search`, configs/common.py SEARCH: KD's temperature, every other term's weight; a
  row with two terms tries every combination) trains on 80% of every class of the column's M
  images (seed 0's subset; the other 20% held out), in workdir/search/ROW/M=<M>/<values>/seed0;
  the candidate with the highest last-epoch validation accuracy is chosen;
- final: the chosen values train with seeds 0, 1, 2 on all M images, in
  workdir/ROW/M=<M>/seed<k>; the table reports their last-epoch test accuracy, mean +- std,
  with the chosen values beside each cell and every candidate's validation accuracy below.

Why the final runs train on all M images (`final_data="all"`): the column is "M images per
class provided for training"; the split only ranks candidates, and at M = 100 leaving 20
images per class out would cost the student a fifth of its data. Nothing needs validation
after the choice, because the table reports the last epoch: no value, epoch or checkpoint is
chosen on the test set (a final run's best/ is its last epoch, as for every run without a
validation split). `--config.final_data=split` trains them
on the search's 80% instead, keeping the held-out images, and adds the test accuracy at each
run's best validation epoch.

The rows are Table 1a's eight and the authors' recipe (KD with T = 2 and 0.1 * VID-I with
their linear mean network and variance, its values kept: no search). The data are
../shared/data/cifar10-lossless.npz (CIFAR-10's original pixels) and the teacher the WRN-40-2
trained on them whose checkpoint a validation split chose (configs/common.py
CIFAR10_LOSSLESS_TEACHER_WORKDIR); the grid refuses a teacher whose checkpoint the test set
chose. The argument after the colon picks the scale as for Table 1a: small (default) or full.

What this project's 2-core CPU affords (the table's notes give the hours, at 150 images/s
one run at a time; shared steps are faster): at small scale M=100 and M=500 (about 6 h each
with the search) and M=1000 (about 10 h); M=5000 (about 52 h) is beyond it. At full scale
only M=100 (about 21 h).

  python launch.py --config=configs/cifar10_table1_protocol.py --config.columns=M=100 --list
  python launch.py --config=configs/cifar10_table1_protocol.py --config.columns=M=100,M=500
  # a narrower search, one row:
  python launch.py --config=configs/cifar10_table1_protocol.py --config.columns=M=100 \\
      --config.rows=vid_i --config.search.vid_i.weight='(10.0, 30.0)'
"""
import ml_collections

from configs import common
from configs.cifar10_table1 import M


def get_config(scale: str = "small") -> ml_collections.ConfigDict:
    cell = common.table1_student()
    cell.data.source = "arrays"
    cell.data.path = common.CIFAR10_LOSSLESS
    return common.table1_grid(
        "cifar10_table1_protocol",
        "Table 1a under the paper's protocol: CIFAR-10 (original pixels), WRN-40-2 teacher -> "
        "WRN-16-1 student, M training images per class",
        {f"M={m}": dict(data=dict(images_per_class=m)) for m in M}, scale,
        train_images={f"M={m}": 10 * m for m in M},
        notes="Each seed draws its own M-per-class subset (config.data.subset_seed = seed); "
              "the search's 80/20 split is drawn within seed 0's. FitNet's hint stage (the "
              "hint loss alone, at weight 1, 10 epochs of the cell's images) runs before its "
              "main stage at every M: at M=500 FitNet trains 10 + 12 epochs, the other rows 12.",
        cell=cell, paper="cifar10_table1",
        teacher=common.teacher(common.CIFAR10_LOSSLESS_TEACHER_WORKDIR),
        teacher_hint=common.CIFAR10_LOSSLESS_TEACHER_HINT, optional_rows=(),
        seeds=(0, 1, 2), selection="validation", search_space=common.SEARCH,
        validation_fraction=0.2, search_seeds=(0,), final_data="all")
