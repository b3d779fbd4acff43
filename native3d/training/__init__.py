"""LightningModules, callbacks and the checks that keep training runs honest."""
