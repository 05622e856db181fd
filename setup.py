from setuptools import find_packages, setup

setup(
    name="dmac-lightning",
    version="0.1.0",
    description="Divergence-regularized multi-agent actor-critic (DMAC) for five MARL families, on PyTorch Lightning",
    python_requires=">=3.10",
    packages=find_packages(include=["dmac_lightning", "dmac_lightning.*", "datamodules", "datamodules.*", "callbacks", "callbacks.*"]),
    install_requires=[
        "torch>=2.4",
        "torchrl==0.14.1",
        "tensordict==0.14.3",
        "pytorch-lightning==2.6.6",
        "tensorboard==2.21.0",
        "jsonargparse[signatures]>=4.39,<5",
        "numpy",
        "scipy",
        # dmac fit --seeds: each seed's run a greenlet, handing over at collects (dmac_lightning/lockstep.py)
        "greenlet>=3",
        # dmac-plots' statistics (IQM, stratified bootstrap CIs, probability of improvement, performance profiles)
        "rliable>=1.2",
        # rliable's bootstrap is arch's, and arch 7 fails against pandas 3 (pandas.util deprecate_kwarg changed)
        "pandas<3",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-timeout", "hypothesis", "matplotlib", "wandb>=0.19"],
        "smax": ["jaxmarl==0.2.0"],
        "smac": ["pysc2", "protobuf>=4"],
        "plots": ["matplotlib"],
        "wandb": ["wandb>=0.19"],
        "slurm": ["submitit>=1.5"],
    },
    entry_points={
        "console_scripts": [
            "dmac=dmac_lightning.cli:main",
            "dmac-sweep=dmac_lightning.experiments.sweep:main",
            "dmac-plots=dmac_lightning.experiments.plots:main",
            "dmac-table=dmac_lightning.experiments.table:main",
            "dmac-theory=dmac_lightning.theory:main",
        ]
    },
)
