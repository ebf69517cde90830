"""Every prediction-type conversion in one place (docs/math.md, "How each prediction type becomes `D`").

The model space is ``x_t = a x0 + b eps``. ``to_x0`` turns a model output into the denoised
estimate; ``from_x0`` is its exact inverse (used by integrations and by the round-trip tests).
Velocity needs the path derivatives ``da, db`` (``u = da x0 + db eps``).
"""

from __future__ import annotations

from typing import Literal

import torch

Tensor = torch.Tensor
Prediction = Literal["eps", "x0", "v", "velocity", "score"]
PREDICTIONS: tuple[str, ...] = ("eps", "x0", "v", "velocity", "score")


def check_prediction(prediction: str) -> Prediction:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction type {prediction!r}; choose one of {', '.join(PREDICTIONS)}")
    return prediction


def to_x0(prediction: Prediction, out: Tensor, xt: Tensor, a: Tensor, b: Tensor,
          da: Tensor | None = None, db: Tensor | None = None) -> Tensor:
    """Convert a model output to ``x0_hat``. ``a, b, da, db`` broadcast against ``xt``.

    - eps: ``x0 = (xt - b eps) / a``
    - x0: the output itself
    - v (``v = a eps - b x0``, VP only, ``a^2 + b^2 = 1``): ``x0 = a xt - b v``
    - velocity (``u = da x0 + db eps``): ``x0 = (b u - db xt) / (b da - a db)``; for the linear
      path ``(1-t) x0 + t eps`` this is ``xt - t u``
    - score (of ``x_t``): ``x0 = (xt + b^2 score) / a``
    """
    if prediction == "x0":
        return out
    if prediction == "eps":
        return (xt - b * out) / a
    if prediction == "v":
        return a * xt - b * out
    if prediction == "velocity":
        if da is None or db is None:
            raise ValueError("velocity prediction needs the path derivatives da/dt and db/dt")
        return (b * out - db * xt) / (b * da - a * db)
    if prediction == "score":
        return (xt + b**2 * out) / a
    raise ValueError(f"unknown prediction type {prediction!r}; choose one of {', '.join(PREDICTIONS)}")


def from_x0(prediction: Prediction, x0: Tensor, xt: Tensor, a: Tensor, b: Tensor,
            da: Tensor | None = None, db: Tensor | None = None) -> Tensor:
    """The model output of type ``prediction`` that corresponds to ``x0`` at state ``xt``."""
    if prediction == "x0":
        return x0
    eps = (xt - a * x0) / b
    if prediction == "eps":
        return eps
    if prediction == "v":
        return a * eps - b * x0
    if prediction == "velocity":
        if da is None or db is None:
            raise ValueError("velocity prediction needs the path derivatives da/dt and db/dt")
        return da * x0 + db * eps
    if prediction == "score":
        return -eps / b
    raise ValueError(f"unknown prediction type {prediction!r}; choose one of {', '.join(PREDICTIONS)}")
