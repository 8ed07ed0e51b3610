"""UniEmoX: cross-modal semantic-guided pretraining for scene emotion perception.

torch and torchvision have floors only: a machine that already has a (CUDA) torch keeps it.
`launch/install.sh` installs a known-good pair where none works.
"""
from setuptools import find_packages, setup

VERSION = "0.1.0"

# The person detector is mediapipe 0.10.21 (uniemox/data/detector.py: MEDIAPIPE_RELEASE), the last
# release with a bundled pose model (later ones download their models). Its metadata pins protobuf<5,
# numpy<2, jax and opencv-contrib, none of which it needs here, so pip cannot install it beside
# tensorboard: launch/install.sh installs it with --no-deps on top of the packages below. Its pose
# solution reads FieldDescriptor.label, which protobuf 7 removed; protobuf 6 runs it.
DETECT = ["absl-py", "attrs", "flatbuffers", "protobuf>=6.31.1,<7",
          "opencv-python-headless<5", "matplotlib", "sounddevice"]

# Shards in object storage: fsspec's http (aiohttp) and s3 (s3fs) file systems.
REMOTE = ["fsspec", "aiohttp", "s3fs"]

# log.report_to wandb / comet (tested offline)
TRACKERS = ["wandb", "comet_ml"]

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
    # Every floor is the release the lowest-versions check installs and runs
    # (tests/test_lowest_versions.py; docs/development.md#dependencies says why each one).
    install_requires=[
        "torch>=2.5",         # torch.serialization.safe_globals (restricted loading)
        "torchvision>=0.20",  # the release built for torch 2.5
        "numpy>=1.24",
        "pillow>=10.0",
        "pyyaml>=6.0.1",
        "tqdm>=4.66",
        "matplotlib>=3.7",    # evaluation reports (confusion PNGs) and benchmark plots
        "braceexpand>=0.1.7",  # shard patterns, data-000{000..099}.tar
        "safetensors>=0.4",
        "scipy>=1.10",        # EMOTIC's Annotations.mat (scipy.io.loadmat)
        "timm>=1.0.31",       # Mixup(multi_label=...); local-dir: model loading from 1.0.16
        "open-clip-torch>=2.32",  # ClipLoss.get_logits(..., logit_bias)
        "webdataset>=0.2.86",
        "deepspeed>=0.16.6",  # engine.compile, is_deepcompile_enabled, ds_to_universal --inject_missing_state
        "psutil>=5.9.5",  # benchmark.py loader's CPU seconds per process (DeepSpeed needs it too)
        "tensorboard>=2.21",  # the first whose command runs without setuptools' pkg_resources (gone in 81)
        "triton; platform_system=='Linux'",  # the release torch pins
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
