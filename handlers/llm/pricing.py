"""Token prices per model, used to put a USD cost on every completion.

Built-in prices are list prices in USD per million tokens and go stale; override them
in code (``PriceTable(overrides={...})``) or with ``AGENTSTREAM_PRICES`` naming a JSON
file such as ``{"gpt-4o": {"input": 2.5, "output": 10.0}}``. A model with no price costs
0 and is reported with ``cost_known=False`` rather than guessed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from handlers.llm.messages import Usage

__all__ = [
    "DEFAULT_PRICES",
    "PRICES_ENV",
    "Cost",
    "Price",
    "PriceTable",
    "PricingError",
]

PRICES_ENV = "AGENTSTREAM_PRICES"


class PricingError(ValueError):
    """A price override could not be read or is malformed."""


class Price(BaseModel):
    """USD per one million input and output tokens for one model."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    input_per_mtok: float = Field(ge=0, validation_alias=AliasChoices("input_per_mtok", "input"))
    output_per_mtok: float = Field(ge=0, validation_alias=AliasChoices("output_per_mtok", "output"))

    def cost(self, usage: Usage) -> float:
        """USD charged for ``usage`` at this price."""
        return (
            usage.input_tokens * self.input_per_mtok + usage.output_tokens * self.output_per_mtok
        ) / 1_000_000


class Cost(BaseModel):
    """The cost of some usage, and whether a price for the model was known at all."""

    model_config = ConfigDict(frozen=True)

    usd: float
    known: bool


def _p(input_per_mtok: float, output_per_mtok: float) -> Price:
    return Price(input_per_mtok=input_per_mtok, output_per_mtok=output_per_mtok)


# List prices (standard tier, uncached input) as published by the providers in 2025.
DEFAULT_PRICES: Mapping[str, Price] = {
    # OpenAI
    "gpt-5": _p(1.25, 10.0),
    "gpt-5-mini": _p(0.25, 2.0),
    "gpt-5-nano": _p(0.05, 0.40),
    "gpt-4.1": _p(2.0, 8.0),
    "gpt-4.1-mini": _p(0.40, 1.60),
    "gpt-4.1-nano": _p(0.10, 0.40),
    "gpt-4o": _p(2.50, 10.0),
    "gpt-4o-mini": _p(0.15, 0.60),
    "gpt-4-turbo": _p(10.0, 30.0),
    "gpt-3.5-turbo": _p(0.50, 1.50),
    "o1": _p(15.0, 60.0),
    "o3": _p(2.0, 8.0),
    "o3-mini": _p(1.10, 4.40),
    "o4-mini": _p(1.10, 4.40),
    # Anthropic
    "claude-opus-4-5": _p(5.0, 25.0),
    "claude-opus-4-1": _p(15.0, 75.0),
    "claude-opus-4": _p(15.0, 75.0),
    "claude-sonnet-4-5": _p(3.0, 15.0),
    "claude-sonnet-4": _p(3.0, 15.0),
    "claude-haiku-4-5": _p(1.0, 5.0),
    "claude-3-7-sonnet": _p(3.0, 15.0),
    "claude-3-5-sonnet": _p(3.0, 15.0),
    "claude-3-5-haiku": _p(0.80, 4.0),
    "claude-3-opus": _p(15.0, 75.0),
    "claude-3-haiku": _p(0.25, 1.25),
}


class PriceTable:
    """Looks up a model's price: exact name first, then the longest known prefix.

    Prefix matching lets dated snapshots (``gpt-4o-2024-08-06``,
    ``claude-sonnet-4-20250514``) use their family's price; a prefix only matches at a
    ``-`` boundary, so ``gpt-4o`` never prices ``gpt-4o1``. ``overrides`` win over
    ``prices``; by default ``prices`` is :data:`DEFAULT_PRICES` and overrides come from
    the file named by ``AGENTSTREAM_PRICES``.
    """

    def __init__(
        self,
        prices: Mapping[str, Price] | None = None,
        overrides: Mapping[str, Price | Mapping[str, float]] | None = None,
    ) -> None:
        table = dict(DEFAULT_PRICES if prices is None else prices)
        if overrides is None:
            overrides = _load_env_overrides()
        for model, price in overrides.items():
            table[model] = _as_price(model, price)
        self._prices = table

    def lookup(self, model: str) -> Price | None:
        """The price for ``model``, or ``None`` when unknown."""
        if model in self._prices:
            return self._prices[model]
        best: str | None = None
        for known in self._prices:
            if model.startswith(known + "-") and (best is None or len(known) > len(best)):
                best = known
        return None if best is None else self._prices[best]

    def cost(self, model: str, usage: Usage) -> Cost:
        """USD cost of ``usage`` on ``model``; 0 with ``known=False`` if unpriced."""
        price = self.lookup(model)
        if price is None:
            return Cost(usd=0.0, known=False)
        return Cost(usd=price.cost(usage), known=True)


def _as_price(model: str, value: Price | Mapping[str, float]) -> Price:
    if isinstance(value, Price):
        return value
    try:
        return Price.model_validate(value)
    except ValidationError as exc:
        raise PricingError(
            f"price for {model!r} must look like {{'input': <usd/1M>, 'output': <usd/1M>}}: {exc}"
        ) from exc


def _load_env_overrides() -> Mapping[str, Mapping[str, float]]:
    path = os.environ.get(PRICES_ENV, "").strip()
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise PricingError(f"{PRICES_ENV}: cannot read price file {path!r}: {exc}") from exc
    if not isinstance(data, dict):
        raise PricingError(f"{PRICES_ENV}: {path!r} must hold a JSON object of model -> price")
    return data
