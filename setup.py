"""UniEmoX: cross-modal semantic-guided pretraining for scene emotion perception.

torch and torchvision are deliberately unpinned here: a machine that already has a
(CUDA) torch keeps it. `launch/install.sh` installs a known-good pair where none works.
"""
from setuptools import find_packages, setup

VERSION = "0.1.0"

# mediapipe 0.10.21 pins numpy<2, jax and opencv-contrib in its metadata; launch/install.sh
# installs it with --no-deps plus the packages below (verified together; README.md, Install).
DETECT = ["absl-py", "attrs", "flatbuffers", "protobuf>=4.25.3,<5",
          "opencv-python-headless<5", "matplotlib", "sounddevice"]

# Shards in object storage: fsspec's http (aiohttp) and s3 (s3fs) file systems.
REMOTE = ["fsspec", "aiohttp", "s3fs"]

# log.report_to wandb / comet (tested offline); protobuf stays below 5 for tensorboard 2.20 and mediapipe
TRACKERS = ["wandb", "comet_ml", "protobuf>=4.25.3,<5"]

setup(
    name="uniemox",
    version=VERSION,
    description="UniEmoX pretraining (MAE + CLIP distillation) for visual emotion perception",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # kernels/, launch/ and configs/ stand at the top of the repository and install inside the
    # package, so an installed uniemox finds its kernels, entry points and shipped configs.
    packages=find_packages(include=["uniemox", "uniemox.*"]) + ["uniemox.kernels", "uniemox.launch",
                                                                "uniemox.configs"],
    package_dir={"uniemox": "uniemox", "uniemox.kernels": "kernels",
                 "uniemox.launch": "launch", "uniemox.configs": "configs"},
    package_data={"uniemox": ["assets/*"], "uniemox.configs": ["*.json", "*.yaml"]},
    install_requires=[
        "torch>=2.5",         # torch.serialization.safe_globals (restricted loading)
        "torchvision>=0.19",
        "numpy",
        "pillow",
        "pyyaml",
        "tqdm",
        "matplotlib",       # evaluation reports (confusion PNGs) and benchmark plots
        "braceexpand",      # shard patterns, data-000{000..099}.tar
        "safetensors",
        "scipy",  # EMOTIC's Annotations.mat (scipy.io.loadmat)
        "timm>=1.0",
        "open-clip-torch>=2.24",
        "webdataset>=0.2.86",
        "deepspeed>=0.14",
        "tensorboard>=2.14,<2.21",  # 2.21 needs protobuf>=5, which breaks mediapipe
        "triton; platform_system=='Linux'",
    ],
    extras_require={
        "dev": ["pytest>=7", "scikit-image", "scikit-learn", "moto[server]"] + DETECT + REMOTE + TRACKERS,
        "remote": REMOTE,
        "detect": DETECT,
        "gpu": ["xformers"],
        "trackers": TRACKERS,
    },
    entry_points={"console_scripts": [
        "uniemox-pretrain = uniemox.launch.pretrain:main",
        "uniemox-make-shards = uniemox.launch.make_shards:main",
        "uniemox-benchmark = uniemox.launch.benchmark:main",
        "uniemox-finetune = uniemox.launch.finetune:main",
        "uniemox-predict = uniemox.launch.predict:main",
        "uniemox-train-teacher = uniemox.launch.train_teacher:main",
        "uniemox-ablation = uniemox.launch.ablation:main",
    ]},
)
