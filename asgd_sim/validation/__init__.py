"""``asgd-sim validate``: the closed forms of docs/THEORY.md (`theory`), the checks that compare
them with the simulator, the framework that runs and judges the checks, and their report."""
