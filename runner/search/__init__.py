"""Searching instead of sweeping (``hydra/sweeper=search``): recipes cheapest first, skipped when
they cannot beat the best file found, parameters searched with Optuna, resumable. The sweeper
(``hydra_plugins/tfq_runner/search.py``) gives this package its launcher; everything here is
plain functions and one loop a test can drive with a fake launcher."""
