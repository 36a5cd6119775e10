from setuptools import find_packages, setup

setup(
    name="vitpose-scale",
    version="0.1.0",
    description="Train ViTPose-style pose models from ViT-B to 1B-parameter backbones across many GPUs",
    packages=find_packages(include=["vitpose_scale", "vitpose_scale.*"]),
    package_data={"vitpose_scale.keypoints": ["sets/*.json"], "vitpose_scale.data": ["*.c"]},
    python_requires=">=3.10",
    # Ranges here; the exact tested set is requirements.txt (see README "Dependencies").
    install_requires=[
        "torch>=2.6", "numpy>=1.26", "pyyaml>=6", "pycocotools>=2.0.8", "msgspec>=0.18", "opencv-python-headless>=4.9",
        "tqdm>=4.66", "matplotlib>=3.8", "scipy>=1.11", "timm>=1.0", "deepspeed>=0.16", "submitit>=1.5", "safetensors>=0.4",
    ],
    extras_require={
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "pytest-xdist>=3.5", "mutmut>=3.8", "transformers>=4.48",
                "faster-coco-eval>=1.6"],
        "track": ["tensorboard>=2.16", "wandb>=0.22"],  # train.loggers
        "export": ["transformers>=4.48", "onnx>=1.18", "onnxruntime>=1.20", "onnxscript>=0.7"],  # vitpose-scale export
    },
    entry_points={"console_scripts": ["vitpose-scale=vitpose_scale.cli:main"]},
)
