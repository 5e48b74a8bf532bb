"""Domain classifier: which domain (medical, finance, legal, general, ...) a text belongs to.

    from lightseek.data.domains import DomainClassifier
    clf = DomainClassifier.load("runs/domains/model")   # a folder written by `save`
    clf.predict(["What are the symptoms of diabetes?"])  # [("medical", 0.93)]

Modules: config (DomainConfig, BuildConfig), classifier (DomainClassifier, read_labelled),
encoder (optional local Hugging Face encoder features), metrics (P/R/F1, confusion matrix,
plot), sources and build (`lightseek domains build` data from ../shared/data), commands (CLI).
Importing this package is light; scikit-learn is imported when a classifier is built or loaded.
"""

from lightseek.data.domains.classifier import DomainClassifier, read_labelled
from lightseek.data.domains.config import BuildConfig, DomainConfig

__all__ = ["BuildConfig", "DomainClassifier", "DomainConfig", "read_labelled"]
