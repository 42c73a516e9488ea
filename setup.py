from setuptools import find_packages, setup

setup(
    name="nanotorch",
    version="0.1.0",
    description="A deep-learning mini-framework in NumPy with hand-written backprop and Numba kernels",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["nanotorch", "nanotorch.*", "mnist", "benchmarks"]),
    python_requires=">=3.10",
    install_requires=["numpy", "numba", "matplotlib>=3.6", "requests", "tqdm", "threadpoolctl"],
    extras_require={"test": ["pytest"]},
)
