"""In-context linear regression: data, explicit algorithms, the e(k) curve and its report section."""

from constrained.tasks.icl_regression.task import IclRegression

__all__ = ["IclRegression"]
