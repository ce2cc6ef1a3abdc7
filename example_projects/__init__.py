"""Runnable example projects for lightning-reg on locally generated data (no downloads).

- :mod:`example_projects.mnist1d`: MNIST-1D (Greydanus 2020), a 1-D ResNet and an MLP.
- :mod:`example_projects.digits`: scikit-learn's bundled 8x8 digits with a torchvision ResNet.
- :mod:`example_projects.compare`: the one-command demo, baseline vs regularized on MNIST-1D.
"""
