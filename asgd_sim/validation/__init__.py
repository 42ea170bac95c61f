"""``asgd-sim validate``: the closed forms of docs/THEORY.md (`theory`), the checks that compare
them with the simulator (`checks_timing`, `checks_numerics`, `checks_gradients`, with the helpers
of `checks_common`), the framework that runs and judges checks (`framework`, `format`), the
ordered list of checks (`catalog`), the report (`report`) and the command (`command`).

Imports go one way: framework <- format, checks_* <- catalog; framework, format <- report;
catalog, framework, format, report <- command. Nothing imports the command but the CLI."""
