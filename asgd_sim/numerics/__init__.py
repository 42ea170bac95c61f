"""The numerics layer: real JAX gradients at the stale parameters each worker read (the engine
that folds a trace into parameters, its wave planner, parameter history and gradient cache), the
server update rules, the learning problems and their data, and the parameter layout shared with
the real server. Importing this package imports no JAX; its modules do."""
