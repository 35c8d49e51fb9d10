"""The one cost model: fees and slippage, used by execution, sizing and reports alike.

Defaults are Binance USD-M futures' base tier (taker 0.05 %, maker 0.02 %). Market orders
pay the taker fee and cross the spread: a buy fills `slippage_bps` above the reference
price, a sell the same below.
"""

from __future__ import annotations

from dataclasses import dataclass

from qtraderd.core.config import CostsConfig


@dataclass(frozen=True, slots=True)
class CostModel:
    taker_fee: float  # fraction of notional
    maker_fee: float
    slippage: float  # fraction of price

    @classmethod
    def from_config(cls, c: CostsConfig) -> CostModel:
        return cls(c.taker_fee_pct / 100.0, c.maker_fee_pct / 100.0, c.slippage_bps / 10_000.0)

    def fill_price(self, ref_price: float, side: int) -> float:
        """Price a market order of `side` (+1 buy / -1 sell) actually gets."""
        return ref_price * (1.0 + side * self.slippage)

    def fee(self, notional: float, liquidity: str = "taker") -> float:
        rate = self.taker_fee if liquidity == "taker" else self.maker_fee
        return abs(notional) * rate

    def round_trip(self) -> float:
        """Cost of entering and leaving with market orders, as a fraction of notional."""
        return 2.0 * (self.taker_fee + self.slippage)

    def breakeven_win_rate(self, tp: float, sl: float) -> float:
        """Win rate at which TP/SL barriers pay for themselves after costs.

        `tp` and `sl` are fractions. With tp=0.016, sl=0.008 and default costs (0.05 %
        taker fee and 2 bps slippage each way) this is about 39.2 % (37.5 % without
        slippage).
        """
        c = self.round_trip()
        return (sl + c) / (tp + sl)

    def expected_edge(self, p_win: float, tp: float, sl: float) -> float:
        """Expected net return per unit notional, counting every non-win as a full stop.

        Conservative on purpose: time-barrier exits usually lose less than the stop.
        """
        return p_win * tp - (1.0 - p_win) * sl - self.round_trip()
