"""Packaging for contivd, the container network agent."""

from setuptools import find_packages, setup

setup(
    name="contivd",
    version="0.1.0",
    description="Container network agent for Docker and Kubernetes hosts",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(exclude=["tests", "tests.*"]) + ["twisted.plugins"],
    package_data={"twisted": ["plugins/contivd_plugin.py"]},
    include_package_data=True,
    install_requires=[
        "twisted>=23.8",
        "txaio",
        "klein",
        "treq",
        "attrs",
        "python-etcd==0.4.5",
        "urllib3",
        "ovs",
        "os-ken",
        "pyroute2",
        "dnslib",
        "prometheus_client",
    ],
    extras_require={
        "dev": ["ruff", "mypy", "mypy-zope"],
    },
    entry_points={
        "console_scripts": [
            "contivctl = contivd.ctl.main:main",
            "contivd-harness = contivd.harness.cli:main",
        ],
    },
    zip_safe=False,
)
