"""The YAML rule language (pure: facts in, Decision out). Filled in by the rule engine issue."""
