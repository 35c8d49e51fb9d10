"""Binance USD-M futures: payload parsers, the REST client and the kline stream connection
(small modules; the bar source that groups them into steps is built on top)."""
