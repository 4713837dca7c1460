from setuptools import find_packages, setup

setup(
    name="limaml-tf",
    version="0.1.0",
    description="LiMAML: personalize deep recommender models with meta learning (TensorFlow / Keras 3).",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.12",
    # the library (limaml_tf), the Beam pipelines, the evaluation harness and the `limaml` commands;
    # dependencies run commands -> harness / pipelines -> library (tests/test_import_rules.py)
    packages=find_packages(include=["limaml_tf", "limaml_tf.*", "beam_pipelines", "beam_pipelines.*",
                                    "limaml_eval", "limaml_eval.*", "limaml_cli", "limaml_cli.*"]),
    package_data={"limaml_tf": ["feature_repo/*.py", "feature_repo/*.yaml"]},
    install_requires=[
        "tensorflow==2.21.0",
        "keras>=3.13,<4",
        "keras-rs==0.4.0",
        "numpy>=1.26,<3",
        "pandas>=2.2,<3",
        "pyarrow>=16",
        "scikit-learn>=1.5",
        "tqdm>=4.66",
        "tensorflow-serving-api==2.21.0",
        "grpcio>=1.60",
        "tensorboard>=2.20,<3",  # limaml train's training logs (keras.callbacks.TensorBoard)
        "pyyaml>=6",  # limaml train --config
    ],
    extras_require={
        "beam": ["apache-beam[dask,tfrecord]==2.77.0", "dask>=2025.1", "distributed>=2025.1"],
        "feast": ["feast[redis]==0.67.0", "fakeredis>=2.20"],
        # the evaluation harness (limaml_eval: reports, plots, paired tests) and `limaml reproduce`
        "eval": ["matplotlib>=3.8", "scipy>=1.11"],
        "test": ["pytest>=8", "hypothesis>=6.100", "pytest-xdist>=3.5"],
        # benchmarks.peers only (PyTorch CPU build; not needed by the tests or CI)
        "bench": ["torch==2.13.0"],
        "all": [
            "matplotlib>=3.8", "scipy>=1.11",
            "apache-beam[dask,tfrecord]==2.77.0", "dask>=2025.1", "distributed>=2025.1",
            "feast[redis]==0.67.0", "fakeredis>=2.20", "pytest>=8", "hypothesis>=6.100", "pytest-xdist>=3.5",
        ],
    },
    entry_points={"console_scripts": ["limaml=limaml_cli:main"]},
)
