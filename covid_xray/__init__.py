"""covid-xray: explainable chest X-ray classification (Normal / Viral Pneumonia / COVID-19)."""

from covid_xray.config import CLASS_NAMES, IMAGE_SIZE, MODELS

__all__ = ["CLASS_NAMES", "IMAGE_SIZE", "MODELS"]
__version__ = "0.1.0"
