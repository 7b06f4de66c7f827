"""fr: distributed large-scale face-recognition training (Partial FC, margin losses, RecordIO, IJB/LFW evaluation)."""

from setuptools import find_packages, setup

EXTRAS = {
    # OpenCV converts and flips the DALI CPU pipeline's images on the host: ~10% less CPU than fn.flip + numpy
    "dali": ["nvidia-dali-cuda120", "opencv-python-headless"],
    "deepspeed": ["deepspeed"],
    "ray": ["ray[default,tune]"],  # Ray Train frees a finished trial's workers through the dashboard (default)
    "onnx": ["onnx", "onnxruntime"],
    "plot": ["matplotlib"],  # fr-eval ijb --plot
    # CI runs DALI's CPU pipeline tests: ~30 s more to install here (about 0.8 GB unpacked).
    # onnx/onnxruntime/matplotlib: the evaluation tests run ONNX models and write the IJB ROC plot.
    # deepspeed and ray[tune]: the DeepSpeed strategy and fr-sweep are tested on CPU (gloo, a local Ray).
    # ruff is pinned: its formatter's output may change between versions, and .ci/run checks the tree with it.
    "test": [
        "pytest>=7",
        "pytest-timeout",
        "scikit-learn",
        "nvidia-dali-cuda120",
        "opencv-python-headless",
        "onnx",
        "onnxruntime",
        "matplotlib",
        "deepspeed",
        "ray[default,tune]",
        "ruff==0.17.6",
    ],
}
EXTRAS["all"] = sorted({req for reqs in EXTRAS.values() for req in reqs})

setup(
    name="fr",
    version="0.1.0",
    description=(
        "Distributed large-scale face-recognition training: Partial FC, margin losses, RecordIO, IJB/LFW evaluation"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["fr", "fr.*", "evaluation", "evaluation.*"]),
    install_requires=[
        "torch>=2.1,<3",
        "numpy>=1.23",
        "pillow>=9",
        "tensorboard>=2.12",
        "tqdm>=4.60",
        "simplejpeg>=1.6",  # the torch path's JPEG decoder, 2.5x Pillow here (Pillow remains the fallback)
    ],
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "fr-train=fr.cli.train:main",
            "fr-data=fr.cli.data:main",
            "fr-eval=fr.cli.eval:main",
            "fr-export=fr.cli.export:main",
            "fr-info=fr.cli.info:main",
            "fr-embed=fr.cli.embed:main",
            "fr-sweep=fr.cli.sweep:main",
        ]
    },
)
