"""flanx: the FLAN instruction-tuning pipeline in JAX/Flax."""
import os

import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

# The task collection (tasks/) and gin configs (t5x_configs/) are data, kept at
# the top of the checkout; an installed (non-editable) flanx carries copies in
# flanx/_resources/, which flanx.paths finds.
RESOURCES = ("tasks", "t5x_configs")


class BuildPyWithResources(build_py):
    def run(self):
        super().run()
        here = os.path.dirname(os.path.abspath(__file__))
        for name in RESOURCES:
            src = os.path.join(here, name)
            dst = os.path.join(self.build_lib, "flanx", "_resources", name)
            if os.path.isdir(src):
                shutil.rmtree(dst, ignore_errors=True)
                shutil.copytree(src, dst)


# Hugging Face interop: transformers for HF checkpoints, peft for LoRA adapters (`flanx convert --to peft`).
HF = ["torch==2.13.0", "transformers>=4.40", "peft>=0.17"]
# Offline task caching (`flanx cache`): Apache Beam runs seqio's cache pipeline (seqio.beam_utils
# imports array_record; Beam's TFRecord sink needs a crc32c library). Beam requires protobuf<7;
# the rest of the stack runs on protobuf 6 (TensorFlow 2.21 takes >=6.31.1) except sentencepiece
# 0.2.3, whose generated code demands a protobuf 7 runtime: 0.2.1/0.2.2 import on both.
CACHE = ["apache-beam>=2.60", "google-crc32c", "array-record", "protobuf>=6.31.1,<7", "sentencepiece>=0.2.1,!=0.2.3"]

setup(
    name="flanx",
    version="0.1.0",
    description="FLAN instruction tuning in JAX/Flax: seqio tasks, T5X-style training, forgetting studies",
    python_requires=">=3.10",
    package_dir={"": "src"},
    packages=find_packages("src"),
    include_package_data=True,
    cmdclass={"build_py": BuildPyWithResources},
    install_requires=[
        "numpy",
        "jax>=0.10,<0.11",
        "flax>=0.12,<0.13",
        "optax",
        "orbax-checkpoint",
        "gin-config",
        "seqio==0.0.20",
        "tensorflow>=2.21,<2.22",
        "tensorflow-text>=2.21,<2.22",
        "tensorflow-datasets",
        "importlib-resources",  # tensorflow-datasets needs it to prepare data and does not declare it
        "sentencepiece",
        "rouge-score",
        "sacrebleu",  # BLEU as T5 reports it
        "editdistance",  # word edit distance of the text-formatting tasks (also a seqio dependency)
        "scikit-learn",  # F1, mean multi-class F1, Matthews correlation
        "scipy",  # Pearson / Spearman
        "pyyaml",
        "safetensors",
        "tensorstore",
        "msgpack",
        "matplotlib",
        "tensorboardX",
    ],
    extras_require={
        "test": ["pytest", "pytest-timeout", "datasets",
                 "tensorboard"] + HF + CACHE,  # tensorboard: to view MODEL_DIR/tb (`tensorboard --logdir MODEL_DIR/tb`)
        "hf": HF,
        "gpu": ["jax[cuda12]>=0.10,<0.11"],
        "tpu": ["jax[tpu]>=0.10,<0.11"],
        "cache": CACHE,
        "gcs": ["google-cloud-storage>=2.10"],  # the MODEL_DIR lock on gs:// (generation preconditions)
    },
    entry_points={"console_scripts": ["flanx=flanx.cli:main"]},
)
