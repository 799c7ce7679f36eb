"""fedlayer: layer-wise averaging and layer-wise loss barriers in federated learning on Flower."""

__version__ = "0.1.0"
