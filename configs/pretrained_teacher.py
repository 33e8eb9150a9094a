"""Distil a published ImageNet network into a student of your own task: torchvision's (or
timm's) ResNet-34 teaches a ResNet-18 on the classes of your data, as Table 3 of the VID paper
does (its best rows: VID-I, VID-LP + VID-I). The teacher keeps its 1,000 ImageNet classes;
VID-LP predicts its logits from the student's penultimate features, VID-I its four stage ends
from the student's.

  python launch.py --config=configs/pretrained_teacher.py --config.data.path=DIR \\
      --config.teacher.weights=weights/resnet34.safetensors

DIR is an image folder, DIR/{train,test}/<class>/*.jpg, of any image sizes (stored with their
shorter side at 256, trained on Inception-style crops of 224, tested on the centre 224; see
vid_jax.config_base.imagenet_input). The weights: torchvision's resnet34-b627a593.pth (with
PyTorch installed) or timm's hf.co/timm/resnet34.tv_in1k model.safetensors. Start the student
from ImageNet weights too with --config.init_from.weights=... and
--config.init_from.load_classifier=False; distill another ResNet with --config.teacher.model.
"""
import ml_collections

from configs import transfer_table3
from vid_jax.config_base import base_config, imagenet_input, teacher_config


def get_config() -> ml_collections.ConfigDict:
    config = imagenet_input(base_config())
    config.data.source = "image_folder"
    config.model = ml_collections.ConfigDict(dict(name="resnet18"))
    config.teacher = teacher_config(dict(name="resnet34"),
                                    weights=transfer_table3.WEIGHTS["resnet34"], num_classes=1000)
    terms = transfer_table3.terms("resnet18")
    config.distill.vid_lp = terms["vid_lp"]
    config.distill.vid_i = terms["vid_i"]
    config.num_epochs = 100
    config.batch_size, config.eval_batch_size = 64, 256
    config.optimizer.update(learning_rate=0.1, schedule="cosine", weight_decay=5e-4)
    return config
