"""What-if studies over many runs: sweeps, comparisons, reports, and calibration and fidelity
against real runs."""
