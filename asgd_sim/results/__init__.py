"""The results layer: what a run produces (`Result`), its summary, plots and Chrome/Perfetto
timeline, the run folder written from it, and `load_run` / `load_sweep` that read folders back.
Functions of the trace and the scenario only; no engine is imported here."""
