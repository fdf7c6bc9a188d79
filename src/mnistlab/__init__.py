"""mnistlab: reproducible transfer-learning and spatial-transformer studies on MNIST."""

__version__ = "0.1.0"
