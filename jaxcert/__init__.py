"""jaxcert: certified training and Gaussian Loss Smoothing in JAX."""

__version__ = "0.1.0"
