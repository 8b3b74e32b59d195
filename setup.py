"""mxserve: a multi-process model server for MXNet models, compatible with MMS 0.4 archives."""
from setuptools import find_packages, setup

setup(
    name="mxserve",
    version="0.1.0",
    description="Production model server for MXNet models (MMS 0.4 compatible)",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["common", "common.*", "frontend", "frontend.*",
                                    "worker", "worker.*"]),
    package_data={"common": ["*.json"]},
    install_requires=[
        "mxnet==1.9.1",            # the engine; 1.9.1 is the last release and runs on 3.11
        "numpy>=1.21,<1.24",       # mxnet 1.9.1 uses numpy aliases removed in 1.24
        "pyzmq>=25",               # frontend <-> broker <-> worker transport
        "msgpack>=1.0",            # wire-protocol headers (never pickle)
        "jsonschema>=4",           # MANIFEST.json validation against the MMS 0.4 schema
        "opencv-python-headless>=4.8,<4.12",  # INTER_CUBIC resize exactly as MMS 0.4
        "pillow>=10",              # strict decoding, header-first size checks
        "flask>=3.0",
        "multipart>=1.2,<3",       # predict bodies: ~10x faster than werkzeug's form parser
        "setproctitle>=1.3",       # forked workers show their own command line in ps
        "prometheus_client>=0.17",  # /metrics, aggregated across processes (multiprocess mode)
        # gthread frontends; 27 added the control socket we place per instance, and
        # frontend/gunicorn_worker.py builds on 27's gthread internals
        "gunicorn>=27,<28",
    ],
    extras_require={
        "samples": ["scikit-learn>=1.3"],  # bundled digits data and JPEG photos
        "bench": ["matplotlib>=3.7", "py-spy"],  # the benchmark plot; profiling
        "dev": ["pytest>=8", "requests>=2.31", "openapi-spec-validator>=0.7", "ruff", "mypy",
                "hypothesis>=6", "supervisor>=4"],
    },
    entry_points={"console_scripts": ["mxserve = common.cli:main"]},
)
